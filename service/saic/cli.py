"""The `saic` command.  Each subcommand lives with the module that owns it and registers
itself here through a `register(subparsers)` function, so this file stays a table."""

from __future__ import annotations

import argparse
import importlib
import sys

# (module, attribute) pairs; each register() adds one or more subcommands and sets `func`.
SUBCOMMANDS = [
    ("saic.codec.cli", "register"),  # compress, decompress
    ("saic.eval.cli", "register"),  # eval
    ("saic.server.cli", "register"),  # serve, client
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="saic", description="Semantic-assisted learned image compression: codec, evaluation and service."
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module, attr in SUBCOMMANDS:
        try:
            mod = importlib.import_module(module)
        except ModuleNotFoundError as exc:  # a subcommand module not written yet
            if exc.name != module:
                raise
            continue
        getattr(mod, attr)(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    return int(args.func(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
