"""Recipe keys as Markdown tables, generated from the config dataclasses at build time.

For every field of a section's dataclass: its key, type, default, the range its
``__post_init__`` checks (read from the source: ``at_least``/``between`` calls and the
messages of the ``ValueError``s it raises) and its help (the entry for that key in the
class docstring, ``key: what it does``).
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
import typing
from pathlib import Path

from gen_cli import cell, code

ROOT = Path(__file__).resolve().parents[1]
_ENTRY = re.compile(r"^([A-Za-z_][\w\[\]]*(?:\s*(?:,|/|->|and)\s*[A-Za-z_][\w\[\]]*)*):\s+(.*)$")


def type_name(tp) -> str:
    """A field's annotation as a recipe writer reads it."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Literal:
        return " \\| ".join(f'"{a}"' if isinstance(a, str) else str(a) for a in args)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType")):
        return " or ".join("null" if a is type(None) else type_name(a) for a in args)
    if origin in (tuple, list):
        if origin is tuple and args and args[-1] is not Ellipsis:
            return "[" + ", ".join(type_name(a) for a in args) + "]"
        return f"list of {type_name(args[0]) if args else 'any'}"
    if origin is dict or tp is dict:
        return "mapping"
    if isinstance(tp, type) and hasattr(tp, "from_section"):
        return "task section"
    if dataclasses.is_dataclass(tp):
        return "section"
    return getattr(tp, "__name__", str(tp))


def default_text(field: dataclasses.Field) -> str:
    """The default as YAML would spell it, or ``required``."""
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "required"
    return _yaml(value)


def _yaml(value) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_yaml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_yaml(v)}" for k, v in value.items()) + "}"
    if hasattr(value, "to_section"):
        return _yaml(value.to_section())
    if dataclasses.is_dataclass(value):
        from convssl.config import to_dict

        return _yaml(to_dict(value))
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def field_help(cls) -> dict[str, str]:
    """Help per field from the class docstring's ``key: text`` entries (continuation lines
    indented); an entry naming several keys (``a / b:``, ``a, b:``) serves each."""
    doc = inspect.getdoc(cls) or ""
    names = {f.name for f in dataclasses.fields(cls)}
    helps: dict[str, str] = {}
    current: list[str] = []
    text: list[str] = []

    def flush():
        for name in current:
            helps.setdefault(name, " ".join(text).strip())

    for line in doc.splitlines():
        match = _ENTRY.match(line)
        keys = [k for k in re.findall(r"[A-Za-z_]\w*", match.group(1)) if k in names] if match else []
        if keys:
            flush()
            current, text = keys, [match.group(2)]
        elif current and line.startswith((" ", "\t")) and line.strip():
            text.append(line.strip())
        else:
            flush()
            current, text = [], []
    flush()
    return helps


def range_checks(cls) -> dict[str, list[str]]:
    """The checks ``cls.__post_init__`` makes, per field, read from its source."""
    post_init = cls.__dict__.get("__post_init__")
    if post_init is None:
        return {}
    tree = ast.parse(textwrap.dedent(inspect.getsource(post_init)))
    names = [f.name for f in dataclasses.fields(cls)]
    checks: dict[str, list[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("at_least", "between"):
            field = _self_attr(node.args[1]) if len(node.args) > 1 else None
            if field is None:
                continue
            kw = {k.arg: k.value for k in node.keywords}
            low = ast.unparse(node.args[2])
            if node.func.id == "at_least":
                strict = "strict" in kw and ast.unparse(kw["strict"]) == "True"
                text = f"{'>' if strict else '>='} {low}"
            else:
                open_high = "high_open" in kw and ast.unparse(kw["high_open"]) == "True"
                text = f"in [{low}, {ast.unparse(node.args[3])}{')' if open_high else ']'}"
            checks.setdefault(field, []).append(text)
        elif isinstance(node, ast.Raise) and isinstance(node.exc, ast.Call) and node.exc.args:
            message = _literal_text(node.exc.args[0]).split(", got")[0].strip()
            mentioned = [n for n in names if re.search(rf"\b{re.escape(n)}\b", message)]
            if message and mentioned:  # "width must be ..." reads "must be ..." in the key's row
                checks.setdefault(mentioned[0], []).append(re.sub(rf"^{mentioned[0]}\s+(?=must)", "", message))
    return checks


def _self_attr(node) -> str | None:
    return node.attr if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
        and node.value.id == "self" else None


def _literal_text(node) -> str:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    return ""


def config_rows(cls, prefix: str) -> list[str]:
    """Table rows for every key of ``cls`` under ``prefix``, nested sections flattened."""
    hints = typing.get_type_hints(cls)
    helps, checks = field_help(cls), range_checks(cls)
    rows, nested = [], []
    for field in dataclasses.fields(cls):
        if not field.init:
            continue
        key = f"{prefix}.{field.name}" if prefix else field.name
        tp = hints[field.name]
        rows.append(f"| {code(key)} | {type_name(tp)} | {code(default_text(field))} | "
                    f"{cell('; '.join(checks.get(field.name, [])))} | {cell(helps.get(field.name, ''))} |")
        if dataclasses.is_dataclass(tp) and not hasattr(tp, "from_section"):
            nested.append((tp, key))
    for tp, key in nested:
        rows += config_rows(tp, key)
    return rows


def config_table(cls, prefix: str) -> str:
    header = ["| key | type | default | checked | what it does |", "|---|---|---|---|---|"]
    return "\n".join(header + config_rows(cls, prefix))


def task_classes() -> dict[str, type]:
    """Every built-in task name -> its class (contract-checked), in the registry's order."""
    from convssl.tasks.registry import TASKS, task_class

    return {name: task_class(name) for name in TASKS}


def _leading_comment(text: str) -> str:
    """The comment block a recipe starts with, as one line."""
    comment = []
    for line in text.splitlines():
        if not line.startswith("#"):
            break
        comment.append(line.lstrip("#").strip())
    return " ".join(comment)


def recipes_using(task: str) -> list[tuple[str, str]]:
    """(file name, its leading comment) for each bundled recipe whose ``task.name`` is ``task``
    (a ``multi`` recipe counts for each of its sub-tasks)."""
    import yaml

    found = []
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        text = path.read_text()
        section = (yaml.safe_load(text) or {}).get("task") or {}
        names = {section.get("name")} | {t.get("name") for t in section.get("tasks", ()) if isinstance(t, dict)}
        if task in names:
            found.append((path.name, _leading_comment(text)))
    return found


def task_keys(name: str) -> str:
    """The ``task:`` keys of task ``name`` as a table."""
    cls = task_classes()[name]
    return (f"`task.name: {name}` ({code(cls.__module__ + '.' + cls.__qualname__)}); its keys, from "
            f"`{cls.__qualname__}.Config`:\n\n" + config_table(cls.Config, "task"))


def task_recipes(name: str) -> str:
    rows = ["| recipe | what it follows |", "|---|---|"]
    rows += [f"| `recipes/{file}` | {cell(comment)} |" for file, comment in recipes_using(name)]
    return "\n".join(rows) if len(rows) > 2 else "No bundled recipe uses it yet."


def bundled_recipes() -> str:
    """One row per recipe in ``recipes/``: its task(s), encoder, input and batch, and the
    leading comment that says which paper settings it follows."""
    import yaml

    rows = ["| recipe | task | encoder | data | what it follows |", "|---|---|---|---|---|"]
    for path in sorted((ROOT / "recipes").glob("*.yaml")):
        text = path.read_text()
        raw = yaml.safe_load(text) or {}
        task, encoder, data = raw.get("task") or {}, raw.get("encoder") or {}, raw.get("data") or {}
        names = task.get("name", "")
        if task.get("tasks"):
            names += " (" + " + ".join(f"{t.get('name')} x{t.get('weight', 1.0)}" for t in task["tasks"]) + ")"
        spec = encoder.get("spec", "") + (", small input" if encoder.get("small_input") else "")
        shape = ", ".join(part for part in (f"{data['size']} px" if "size" in data else "",
                                            f"batch {data['batch_size']}" if "batch_size" in data else "") if part)
        rows.append(f"| `{path.name}` | {cell(names)} | {cell(spec)} | {cell(shape)} | {cell(_leading_comment(text))} |")
    return "\n".join(rows)


def recipe_reference() -> str:
    """The whole recipe reference page: one section per recipe section."""
    from convssl.recipe import Recipe

    hints = typing.get_type_hints(Recipe)
    lines = ["# Recipe keys", "",
             "Generated from the config dataclasses at build time. A recipe is a YAML file with the "
             "sections below; any key can be overridden on the command line (`--set optim.lr_per_256=0.2`) "
             "or in Python (`convssl.load_recipe(path, {\"optim.lr_per_256\": 0.2})`). Unknown keys, wrong "
             "types and values outside the range in *checked* fail before anything runs, naming the key.", ""]
    for field in dataclasses.fields(Recipe):
        tp = hints[field.name]
        lines += [f"## `{field.name}`", ""]
        if dataclasses.is_dataclass(tp) and not hasattr(tp, "from_section"):
            doc = (inspect.getdoc(tp) or "").split("\n\n")[0]
            lines += [doc, "", config_table(tp, field.name), ""]
        else:
            lines += ["`task.name` picks the pretext task; the section's other keys are that task's own:", "",
                      "| task.name | task | its keys |", "|---|---|---|"]
            for name, cls in task_classes().items():
                summary = (inspect.getdoc(cls) or "").splitlines()[0] if inspect.getdoc(cls) else ""
                lines.append(f"| `{name}` | {cell(summary)} | [methods/{name}](../methods/{name}.md#keys) |")
            lines += ["", "A task of your own: `task.name: package.module:Class`, or a name registered in the "
                      "`convssl.tasks` entry-point group ([Writing your own task](../guides/own-task.md)).", ""]
    lines += ["## Bundled recipes", "",
              "Every recipe in `recipes/` (a recipe that is not a pretraining one, such as the fine-tuning "
              "settings, has no task), with the comment at its top that cites the paper settings it follows:", "",
              bundled_recipes(), ""]
    return "\n".join(lines)
