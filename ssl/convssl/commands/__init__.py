"""CLI subcommands: each module has ``add_arguments(parser)`` and ``run(args) -> int``."""


def add_trust_argument(parser) -> None:
    """``--trust-encoder SPEC``, for every command that rebuilds an encoder from a checkpoint."""
    parser.add_argument("--trust-encoder", metavar="SPEC", action="append", default=[],
                        help="rebuild a checkpoint whose encoder is this package.module:callable spec (user code "
                             "that the checkpoint names; refused otherwise). Repeatable")
