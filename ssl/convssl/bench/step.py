"""``convssl bench step``: placeholder until the benchmark lands."""

from __future__ import annotations

from convssl.errors import ConvsslError


def add_arguments(parser) -> None:
    pass


def run(args) -> int:
    raise ConvsslError("convssl bench step is not built yet")
