"""Every import in the package points down the layers of ``DESIGN.md`` ("Layers").

The imports are read from the source with ``ast`` (module-level and function-level
imports alike, ``TYPE_CHECKING`` blocks included), so a lazy import inside a function is
an arrow like any other. A *unit* is a sub-package or top-level module of ``convssl``
(``train``, ``recipe``, ...; the package root ``convssl/__init__.py`` is the public API,
the top). Each unit has a layer; an import from a unit to a unit of a higher layer fails,
and so does any cycle between units (within one layer too).
"""

from __future__ import annotations

import ast
import functools
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "ssl" / "convssl"

# Highest first; a unit may import units of its own layer (without a cycle) and below.
LAYERS = [
    {"convssl", "__main__", "cli", "commands"},
    {"exports", "bench", "finetune", "eval"},
    {"train", "recipe"},
    {"tasks"},
    {"views", "sparse", "losses", "heads", "data", "momentum", "batch_shuffle"},
    {"encoders", "checkpoint", "config", "train_config", "short_budget"},
    {"errors", "atomic", "dist", "workers", "version", "writable", "run_lock", "input_memory"},
]
LAYER_OF = {unit: len(LAYERS) - i for i, layer in enumerate(LAYERS) for unit in layer}

# Arrows up or circles that another part of the redesign is still removing; the test
# requires each to exist, so whoever removes one also removes it here.
PENDING: set[tuple[str, str]] = set()


def _module_name(path: Path, package: Path = PACKAGE) -> str:
    parts = list(path.relative_to(package.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


def _unit(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "convssl"


def _imported(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The convssl modules ``module`` imports (``from convssl import dist`` is ``convssl.dist``)."""
    package = module if path.name == "__init__.py" else module.rsplit(".", 1)[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:
                names.add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source)
    found = set()
    for name in names:
        while name not in modules and "." in name:
            name = name.rsplit(".", 1)[0]
        if name in modules and name != module:
            found.add(name)
    return found


@functools.lru_cache(maxsize=1)
def _unit_edges() -> dict[tuple[str, str], list[str]]:
    """``(from unit, to unit) -> ["module -> module", ...]`` between different units."""
    modules = _modules()
    edges: dict[tuple[str, str], list[str]] = {}
    for module, path in sorted(modules.items()):
        for target in sorted(_imported(module, path, modules)):
            if _unit(module) != _unit(target):
                edges.setdefault((_unit(module), _unit(target)), []).append(f"{module} -> {target}")
    return edges


def _cycles(edges) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return groups


def test_every_unit_has_a_layer():
    missing = sorted({_unit(m) for m in _modules()} - set(LAYER_OF))
    assert not missing, (f"{missing} not in tests/test_layers.py LAYERS: add each to its layer "
                         "(and to DESIGN.md's 'Layers' line)")


def test_every_layered_unit_exists():
    """The map names the package as it is: a unit that was moved or removed leaves it."""
    gone = sorted(set(LAYER_OF) - {_unit(m) for m in _modules()})
    assert not gone, f"{gone} are in tests/test_layers.py LAYERS but not in the package: remove them"


def test_no_arrow_points_up():
    edges = _unit_edges()
    up = {(a, b): how for (a, b), how in edges.items()
          if a in LAYER_OF and b in LAYER_OF and LAYER_OF[a] < LAYER_OF[b] and (a, b) not in PENDING}
    assert not up, "imports from a lower layer to a higher one:\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(how)}" for (a, b), how in sorted(up.items()))


def test_no_cycle_between_units():
    edges = {edge: how for edge, how in _unit_edges().items() if edge not in PENDING}
    inside = [(a, b, how) for group in _cycles(edges) for (a, b), how in sorted(edges.items())
              if a in group and b in group]
    assert not inside, "import cycles between units, their arrows:\n" + "\n".join(
        f"  {a} -> {b}: {', '.join(how)}" for a, b, how in inside)


def test_pending_arrows_still_exist():
    """A ``PENDING`` arrow that is gone must leave the list, so it cannot come back unseen."""
    gone = PENDING - set(_unit_edges())
    assert not gone, f"{sorted(gone)} no longer exist: remove them from PENDING in tests/test_layers.py"


def test_the_checker_sees_lazy_and_relative_imports(tmp_path):
    """The reader finds a function-level import and a relative one (a check that can fail)."""
    pkg = tmp_path / "convssl"
    (pkg / "train").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "errors.py").write_text("")
    (pkg / "train" / "__init__.py").write_text("")
    (pkg / "train" / "a.py").write_text("def f():\n    from convssl import errors\n")
    (pkg / "train" / "b.py").write_text("from . import a\nfrom ..errors import X\n")
    modules = {_module_name(p, pkg): p for p in pkg.rglob("*.py")}
    assert _imported("convssl.train.a", pkg / "train" / "a.py", modules) == {"convssl.errors"}
    assert _imported("convssl.train.b", pkg / "train" / "b.py", modules) == {"convssl.train.a", "convssl.errors"}
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d")}) == [["a", "b", "c"]]

