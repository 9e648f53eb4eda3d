"""The catalogue of user-facing errors, generated from the package source at build time.

Every ``raise`` of a ``convssl.errors`` class with a literal message (placeholders shown
as ``…``), grouped by error class, each with the module that raises it. The messages are
written to say what to do; this page makes them searchable in one place.
"""

from __future__ import annotations

import ast
import inspect
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "ssl" / "convssl"


def _modules():
    """(dotted module name, parsed source) of every file of the package."""
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts).removesuffix(".__init__")
        yield module, ast.parse(path.read_text(), str(path))


def error_classes() -> dict[str, str]:
    """Name -> docstring of the ``ConvsslError`` family: ``convssl.errors`` and every class
    in the package that derives from one of them (read from the source), base first."""
    import convssl.errors as errors

    found = {name: inspect.getdoc(obj) or "" for name, obj in vars(errors).items()
             if isinstance(obj, type) and issubclass(obj, errors.ConvsslError)}
    trees = list(_modules())
    grew = True
    while grew:
        grew = False
        for module, tree in trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.ClassDef) and node.name not in found and any(
                        isinstance(b, ast.Name) and b.id in found for b in node.bases):
                    found[node.name] = f"{ast.get_docstring(node) or ''} (``{module}.{node.name}``)".strip()
                    grew = True
    return dict(sorted(found.items(), key=lambda item: (item[0] != "ConvsslError", item[0])))


def _message(node) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
        return _message(node.left) + _message(node.right)
    return ""


def raised_messages() -> dict[str, list[tuple[str, str]]]:
    """Error class name -> sorted unique (message, module) pairs raised in the package."""
    classes = error_classes()
    found: dict[str, set[tuple[str, str]]] = {name: set() for name in classes}
    for module, tree in _modules():
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call)):
                continue
            func = node.exc.func
            name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
            if name in found and node.exc.args:
                message = " ".join(_message(node.exc.args[0]).split())
                if message.strip("… "):
                    found[name].add((message, module))
    return {name: sorted(pairs) for name, pairs in found.items()}


def error_catalogue() -> str:
    """The generated part of the troubleshooting page."""
    classes = error_classes()
    messages = raised_messages()
    total = sum(len(m) for m in messages.values())
    lines = ["## Every message, by kind", "",
             f"Generated from the source at build time: the {total} messages convssl raises for a user "
             "mistake, `…` standing for the value filled in (a path, a key, a number). Search this page "
             "for the words of the line you got.", ""]
    for name, doc in classes.items():
        lines += [f"### {name}", "", doc, ""]
        for message, module in messages.get(name, []):
            text = message.replace("`", "'")
            lines.append(f"- `{text}` <small>({module})</small>")
        lines.append("")
    return "\n".join(lines)
