"""The one `npcadapt` command. It owns printing, progress bars and exit codes.

Subcommands live in this package, one module per group, each registered by a small
`add_*` function; each handler receives the parsed arguments and returns an exit code.
"""

from __future__ import annotations

import argparse
import logging
import sys

from ..errors import NpcAdaptError
from .archetype import add_archetype
from .bench import add_bench
from .demo import add_demo
from .inspect import add_export, add_inspect
from .run import add_serve, add_sim
from .train import add_train

__all__ = ["build_parser", "main"]


class _Parser(argparse.ArgumentParser):
    """argparse with usage errors on one line, like every other error of the command."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="npcadapt", description="NPCs that adapt to each player with per-player LoRA adapters.")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _SUBCOMMANDS:
        add(sub)
    return parser


_SUBCOMMANDS = [add_demo, add_archetype, add_train, add_sim, add_serve, add_inspect, add_export, add_bench]


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    try:
        return args.func(args)
    except (NpcAdaptError, OSError) as exc:  # what a user can fix: one line, no traceback
        print(f"npcadapt: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("npcadapt: interrupted", file=sys.stderr)
        return 130


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).splitlines()) or type(exc).__name__
