"""The ``l2p`` command: one verb per step of the L2P workflow, each a thin layer over a library function."""

import argparse
import sys
from typing import List, Optional

# Each verb adds its sub-parser in a `_add_<verb>` function and sets `func` to its `_run_<verb>` handler.
# Heavy imports (torch, diffsynth) happen inside the handlers so `l2p --help` stays fast.


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="l2p",
        description="L2P pixel-space Z-Image for DiffSynth-Studio: generate, convert, train, merge, inspect, demo.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    return parser


def main(argv: Optional[List[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except (ValueError, FileNotFoundError, FileExistsError, PermissionError) as error:
        print(f"l2p {args.command}: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
