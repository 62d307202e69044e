"""`harmoview` command line: a thin layer over the Python API.

Each command lives in its own module (`info`, `train` + `cache`, `generate`, `cases` + `evaluate`) and
registers itself with `set_defaults(func=...)`; flags shared by several commands are in `common`. Errors
take one path: a user error (a missing file, a bad value, a missing model) is printed by `main` as
`harmoview <command>: error: <message>` and exits 1 (an OS error, such as a read-only or full disk, names its
path); usage errors are argparse's (exit 2), a bad number in a numeric flag included.
"""

from __future__ import annotations

import argparse
import sys

from datakit.faces import ModelNotFoundError
from harmoview.cli.evaluate import add_evaluate_parsers
from harmoview.cli.generate import add_generate_parser
from harmoview.cli.info import add_info_parser
from harmoview.cli.train import add_cache_parser, add_train_parser

USER_ERRORS = (OSError, ValueError, KeyError, ModelNotFoundError)
"""Errors that are the user's to fix: printed without a traceback (CaseFileError is a ValueError). OSError
covers a missing file and the OS's refusals: a read-only or full disk, no permission, a file for a folder."""


def build_parser() -> argparse.ArgumentParser:
    """The `harmoview` parser with every subcommand."""
    parser = argparse.ArgumentParser(prog="harmoview", description="HarmoView identity-consistent video DiT")
    sub = parser.add_subparsers(dest="command", required=True)
    add_info_parser(sub)
    add_train_parser(sub)
    add_cache_parser(sub)
    add_evaluate_parsers(sub)
    add_generate_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the `harmoview` console script (and of `python -m harmoview.cli`)."""
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except USER_ERRORS as exc:
        print(f"harmoview {args.command}: error: {_message(exc)}", file=sys.stderr)
        return 1


def _message(exc: BaseException) -> str:
    """One line for a user error: an OS error as its reason and path(s), a KeyError unquoted, the rest as written."""
    if isinstance(exc, KeyError) and exc.args:
        return str(exc.args[0])  # str(KeyError) quotes its message
    if isinstance(exc, OSError) and exc.errno is not None and exc.strerror:
        paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
        return f"{exc.strerror}: {' -> '.join(paths)}" if paths else exc.strerror
    return str(exc)
