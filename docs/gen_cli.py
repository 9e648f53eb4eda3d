"""The CLI reference page, generated from ``convssl.cli.build_parser()`` at build time.

Every command, subcommand and flag comes from the argparse parsers themselves; a flag
without help text is an error (``MissingHelp``), so an undocumented flag fails the build.
"""

from __future__ import annotations

import argparse


class MissingHelp(ValueError):
    """A command-line flag has no help text."""


def cell(text) -> str:
    """``text`` made safe for one Markdown table cell."""
    return str(text).replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace("\n", " ")


def code(text) -> str:
    """``text`` as an inline code span (pipes escaped for tables)."""
    text = str(text).replace("|", "\\|")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


def _help(parser: argparse.ArgumentParser, action: argparse.Action, where: str) -> str:
    if not action.help or not str(action.help).strip():
        flag = "/".join(action.option_strings) or action.dest
        raise MissingHelp(f"{where} {flag}: the flag has no help text; give its add_argument a help=")
    return parser._get_formatter()._expand_help(action)  # argparse's own %(default)s expansion


def _value(action: argparse.Action) -> str:
    if action.nargs == 0:
        return ""
    if action.choices:
        return " \\| ".join(code(c) for c in action.choices)
    metavar = action.metavar or (action.dest.upper() if action.option_strings else action.dest)
    if isinstance(metavar, tuple):
        metavar = " ".join(metavar)
    if action.nargs in ("+", "*"):
        metavar += " ..."
    elif action.nargs == "?":
        metavar = f"[{metavar}]"
    return code(metavar)


def _default(action: argparse.Action) -> str:
    if action.nargs == 0 or action.default in (None, argparse.SUPPRESS, [], ()):
        return ""
    return code(action.default)


def _command(parser: argparse.ArgumentParser, name: str, level: int) -> list[str]:
    lines = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        lines += [cell(parser.description).replace("\\|", "|"), ""]
    usage = parser.format_usage().strip().removeprefix("usage: ")
    lines += ["```text", usage, "```", ""]
    rows, subcommands = [], []
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        if isinstance(action, argparse._SubParsersAction):
            subcommands += list(action.choices.items())
            continue
        flag = ", ".join(code(o) for o in action.option_strings) or code(action.dest)
        rows.append(f"| {flag} | {_value(action)} | {_default(action)} | {cell(_help(parser, action, name))} |")
    if rows:
        lines += ["| argument | value | default | what it does |", "|---|---|---|---|", *rows, ""]
    for sub_name, sub in subcommands:
        lines += _command(sub, f"{name} {sub_name}", level + 1)
    return lines


def cli_reference() -> str:
    """The whole page: one section per command, one table row per flag."""
    from convssl.cli import build_parser

    parser = build_parser()
    lines = ["# Command line", "",
             "Generated from the argparse parsers of `convssl` at build time: every command and flag "
             "below is what `convssl COMMAND --help` prints. User mistakes print one line saying what "
             "to do and exit with status 2 (see [Troubleshooting](../troubleshooting.md)).", "",
             "| command | what it does |", "|---|---|"]
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    helps = {choice.dest: choice.help for choice in sub._choices_actions}
    for name in sub.choices:
        lines.append(f"| [`{name}`](#{name}) | {cell(helps.get(name, ''))} |")
    lines.append("")
    for name, command in sub.choices.items():
        lines += _command(command, name, 2)
    return "\n".join(lines)
