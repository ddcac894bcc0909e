"""`lvlm-var`: the one command; each subcommand lives with the package that implements it.

A command module provides `register(subparsers)` (adding its parser with `func=`) and
`USER_ERRORS` (exception types that are the user's to fix: printed as one line, exit 2).
Command modules import nothing heavy at module level, so `lvlm-var --help` is instant and the
runtime's commands work on a machine without torch.
"""
from __future__ import annotations

import argparse
import importlib
import logging
import sys

# (module, one line) in --help order. A command exists here once its issue has built it.
COMMAND_MODULES = (
    "vst.commands",  # data
    "streams.cli",  # streams
)


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    parser = argparse.ArgumentParser(
        prog="lvlm-var",
        description="Real-time, interpretable video action recognition for edge cameras.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    errors: list[type[BaseException]] = []
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(sub)
        errors.extend(module.USER_ERRORS)
    return parser, tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser, user_errors = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * args.verbose
    logging.basicConfig(level=max(level, logging.DEBUG), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except user_errors as exc:
        print(f"lvlm-var {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"lvlm-var {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
