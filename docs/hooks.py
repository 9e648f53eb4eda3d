"""MkDocs hooks: the reference pages are generated from the code at every build.

- ``reference/cli.md`` from the argparse parsers (``gen_cli``; a flag without help fails),
- ``reference/recipe.md`` from the config dataclasses (``gen_config``),
- ``methods/<task>.md`` for every built-in task: a hand-written page's
  ``<!-- convssl:keys -->`` and ``<!-- convssl:recipes -->`` markers are replaced by the
  task's Config table and the bundled recipes that use it; a task without a hand-written
  page gets one from its docstrings, so a new task appears in the site by itself,
- the ``<!-- convssl:errors -->`` marker of the troubleshooting page (``gen_errors``).

Nothing generated is committed, so nothing can drift from the code.
"""

from __future__ import annotations

import inspect
import sys
from pathlib import Path

from mkdocs.structure.files import File

DOCS = Path(__file__).resolve().parent
sys.path[:0] = [str(DOCS), str(DOCS.parent / "ssl")]

import gen_cli  # noqa: E402
import gen_config  # noqa: E402
import gen_errors  # noqa: E402

KEYS, RECIPES, ERRORS = "<!-- convssl:keys -->", "<!-- convssl:recipes -->", "<!-- convssl:errors -->"
METHODS_TITLE = "Methods"


def _method_titles() -> dict[str, str]:
    """Task name -> nav title: the hand-written page's first heading, else the class summary."""
    titles = {}
    for name, cls in gen_config.task_classes().items():
        page = DOCS / "methods" / f"{name}.md"
        heading = next((line[2:].strip() for line in page.read_text().splitlines() if line.startswith("# ")),
                       None) if page.exists() else None
        titles[name] = heading or cls.__name__
    return titles


def on_config(config):
    """The Methods section of the nav lists every built-in task."""
    for item in config.nav or []:
        if isinstance(item, dict) and METHODS_TITLE in item:
            item[METHODS_TITLE] = [{title: f"methods/{name}.md"} for name, title in _method_titles().items()]
    return config


def _generated_method(name: str) -> str:
    cls = gen_config.task_classes()[name]
    module_doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
    summary = (inspect.getdoc(cls) or name).splitlines()[0]
    return "\n".join([f"# {cls.__name__}", "", f"*{summary}*", "",
                      "This page is generated from the task's docstrings (no hand-written page yet).", "",
                      _as_markdown(module_doc), "", "## Keys", "", KEYS, "", "## Recipes", "", RECIPES, ""])


def _as_markdown(docstring: str) -> str:
    """A module docstring as Markdown: a list that follows a line directly gets the blank
    line Markdown needs before it; ``code`` spans already read as code."""
    lines: list[str] = []
    for line in docstring.splitlines():
        if line.startswith("- ") and lines and lines[-1].strip() and not lines[-1].lstrip().startswith("- ") \
                and not lines[-1].startswith("  "):
            lines.append("")
        lines.append(line)
    return "\n".join(lines)


def on_files(files, config):
    generated = {"reference/cli.md": gen_cli.cli_reference(), "reference/recipe.md": gen_config.recipe_reference()}
    for name in gen_config.task_classes():
        uri = f"methods/{name}.md"
        if files.get_file_from_path(uri) is None:
            generated[uri] = _generated_method(name)
    for uri, content in generated.items():
        files.append(File.generated(config, uri, content=content))
    return files


def on_page_markdown(markdown, page, config, files):
    uri = page.file.src_uri
    if uri.startswith("methods/") and (KEYS in markdown or RECIPES in markdown):
        name = Path(uri).stem
        markdown = markdown.replace(KEYS, gen_config.task_keys(name)).replace(RECIPES, gen_config.task_recipes(name))
    elif uri.startswith("methods/") and name_is_task(uri):
        raise ValueError(f"docs/{uri}: a method page needs the {KEYS} marker under a '## Keys' heading")
    if ERRORS in markdown:
        markdown = markdown.replace(ERRORS, gen_errors.error_catalogue())
    return markdown


def name_is_task(uri: str) -> bool:
    return Path(uri).stem in gen_config.task_classes()
