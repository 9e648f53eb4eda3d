"""CLI subcommands: ``convssl.commands.<name>`` defines ``add_arguments`` and ``run``."""
