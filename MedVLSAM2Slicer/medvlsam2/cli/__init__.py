"""``medvlsam2`` command line. Each sub-command lives in its own module exposing
``register(subparsers)``; heavy imports happen inside the command functions, so ``--help`` is instant."""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from ..errors import MedVLSAM2Error

# Module names under medvlsam2.cli, in the order shown by --help (absent ones are skipped).
COMMAND_MODULES = ("info", "segment", "ask", "report", "batch", "demo", "serve", "synth", "train", "evaluate", "weights")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="medvlsam2", description="MedVL-SAM2: 3D CT segmentation, VQA and reports")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"{__name__}.{name}":
                continue  # command not built in this installation
            raise
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except MedVLSAM2Error as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
