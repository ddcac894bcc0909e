"""`lvlm-var`: the one command; each subcommand lives with the package that implements it.

A command module provides `register(cli)` (adding its parsers through `Commands`, each with
`func=`) and `USER_ERRORS` (exception types that are the user's to fix: printed as one line, exit 2).
Command modules import nothing heavy at module level, so `lvlm-var --help` is instant and the
runtime's commands work on a machine without torch.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

# In --help order. A command exists here once its issue has built it.
COMMAND_MODULES = (
    "vst.commands",  # data, train vst, eval vst, vst glossary
    "lvlm.commands",  # finetune, eval lvlm
    "export.commands",  # export bundle|trt, check
    "streams.cli",  # streams
    "edge_runtime.commands",  # run, ingest, llm-worker, monitor, config, keys, demo
    "benchmarks.commands",  # bench
)


class Commands:
    """What command modules register into: plain commands, and groups that several packages share
    (`train vst`, later `eval lvlm` ...)."""

    def __init__(self, sub):
        self._sub = sub
        self._groups: dict[str, argparse._SubParsersAction] = {}

    def add(self, name: str, help: str) -> argparse.ArgumentParser:
        return self._sub.add_parser(name, help=help, description=help)

    def group(self, name: str, help: str) -> argparse._SubParsersAction:
        if name not in self._groups:
            parser = self.add(name, help)
            self._groups[name] = parser.add_subparsers(dest=f"{name}_command", metavar="TARGET", required=True)
        return self._groups[name]


def build_parser() -> tuple[argparse.ArgumentParser, tuple[type[BaseException], ...]]:
    parser = argparse.ArgumentParser(
        prog="lvlm-var",
        description="Real-time, interpretable video action recognition for edge cameras.",
    )
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output (-vv: debug)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    errors: list[type[BaseException]] = []
    commands = Commands(sub)
    for name in COMMAND_MODULES:
        module = importlib.import_module(name)
        module.register(commands)
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
