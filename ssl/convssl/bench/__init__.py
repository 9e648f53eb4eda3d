"""Benchmarks users can run: ``convssl bench data`` (loader throughput) and
``convssl bench step`` (a task's training step against its supervised ceiling).

One module per benchmark, each with ``add_arguments(parser)`` and ``run(args) -> int``.
"""
