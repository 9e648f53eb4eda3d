"""The ``convssl`` command line: one subcommand per module in ``convssl.commands``.

User mistakes (``ConvsslError``) print one clear message and exit 2, no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys

from convssl.errors import ConvsslError

COMMANDS = {
    "shards": "write webdataset tar shards from an image folder or a dataset",
    "pretrain": "pretrain an encoder with a pretext task recipe (one process or torchrun)",
    "probe": "linear-probe and kNN-evaluate a frozen encoder on labeled shards",
    "export": "export a pretrained backbone for torchvision / timm / plain PyTorch",
    "info": "show an encoder's stages, channels, reductions and parameter count",
    "quickstart": "pretrain on the embedded sample, probe, and compare with random init",
    "bench": "measure speed: loader throughput (data) or a training step (step)",
    "finetune": "fine-tune a pretrained encoder with a fresh head on a (few-)label subset, vs random init",
    "embed": "draw a 2-D map (UMAP, t-SNE or PCA) of an encoder's features coloured by label",
    "compare": "one Markdown table and PNG plots over several run directories",
}


def build_parser() -> argparse.ArgumentParser:
    from convssl.version import __version__

    parser = argparse.ArgumentParser(
        prog="convssl",
        description="Self-supervised pretraining for convolutional networks.",
    )
    parser.add_argument("--version", action="version", version=f"convssl {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(f"convssl.commands.{name}")
        module.add_arguments(p)
        p.set_defaults(_module=module, _name=name)
    return parser


def _show_library_messages(command: str) -> None:
    """convssl's own log messages (the sparse backends' choice table and per-layer
    fallbacks) to stderr as ``convssl <command>: ...``: INFO on the first process,
    warnings only on the other ranks of a torchrun job. The library itself never
    configures logging; this is the application's entry point."""
    logger = logging.getLogger("convssl")
    if any(getattr(h, "_convssl_cli", False) for h in logger.handlers):
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"convssl {command}: %(message)s"))
    handler._convssl_cli = True
    logger.addHandler(handler)
    logger.setLevel(logging.INFO if os.environ.get("RANK", "0") == "0" else logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    _show_library_messages(args._name)
    reported: list[ConvsslError] = []
    try:
        try:
            return int(args._module.run(args) or 0)
        except ConvsslError as exc:
            _report(args._name, exc, reported)
            return 2
    except KeyboardInterrupt as interrupt:
        # A Ctrl-C that lands while a ConvsslError is on its way out (typically the
        # "interrupted at step N; checkpoint saved" of a stop that was already under way)
        # must not replace that message: the checkpoint is written, the user needs the hint.
        pending = _convssl_error_in_chain(interrupt)
        if pending is not None:
            _report(args._name, pending, reported)
            return 2
        print(f"convssl {args._name}: interrupted", file=sys.stderr)
        return 130
    finally:
        if argv is None:  # this process is the command, and all it has left to do is exit
            _ignore_stop_signals()
        _kill_leftover_workers()


def _ignore_stop_signals() -> None:
    """Ctrl-C or SIGTERM while the interpreter shuts down (torch's and multiprocessing's exit
    handlers) printed 'Exception ignored in atexit callback ... KeyboardInterrupt' after the
    command's own last line, e.g. a third impatient Ctrl-C after 'interrupted at step N;
    checkpoint saved'. The work is done by then: such signals are ignored (kill -9 still
    works). Only for the real command line, never a caller's process (``main(argv)``)."""
    import signal

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)


def _convssl_error_in_chain(exc: BaseException) -> ConvsslError | None:
    """The ConvsslError a Ctrl-C interrupted on its way out, if any: directly, or through
    exceptions raised and handled while it propagated (a worker shutdown's own errors)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, ConvsslError):
            return exc
        exc = exc.__context__
    return None


def _report(name: str, exc: ConvsslError, reported: list[ConvsslError]) -> None:
    if exc not in reported:
        reported.append(exc)
        print(f"convssl {name}: error: {exc}", file=sys.stderr)


def _kill_leftover_workers() -> None:
    """Last resort against a hang at exit: loader workers ignore SIGTERM, which is what
    multiprocessing's exit handler sends daemonic children before waiting for them. Every
    command stops its workers itself (``convssl.workers``); any still alive here are
    leftovers of an error path, and a user's job must end, not wait for them forever."""
    import multiprocessing

    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()
            child.join(timeout=5)


if __name__ == "__main__":
    sys.exit(main())
