"""Command-line interface: ``python -m wbc VERB ...``.

Each verb lives in ``wbc/commands/<verb>.py`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` to a ``main(args) -> int``. Command modules import heavy
libraries (TensorFlow) inside ``main`` only, so ``--help`` stays fast.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from wbc import __version__
from wbc.errors import WbcError

VERBS = ["demo", "manifest", "download", "preprocess", "split", "train", "evaluate", "predict"]
TENSORFLOW_VERBS = {"train", "evaluate", "predict"}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with one sub-parser per verb."""
    parser = argparse.ArgumentParser(
        prog="python -m wbc",
        description="White-blood-cell classification: data, preprocessing, training, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"wbc {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    sub.required = True
    for verb in VERBS:
        try:
            module = importlib.import_module(f"wbc.commands.{verb}")
        except ModuleNotFoundError as exc:  # a verb not built yet
            if exc.name != f"wbc.commands.{verb}":
                raise
            continue
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` and run the verb; user errors print ``error: ...`` and return 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.verb in TENSORFLOW_VERBS:
            from wbc.runtime import import_tensorflow

            import_tensorflow()
        return int(args.func(args) or 0)
    except WbcError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like: not an error
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print("interrupted: completed work is kept; re-run the same command to resume.", file=sys.stderr)
        return 130
