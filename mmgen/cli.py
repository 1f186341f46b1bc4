"""The error boundary of the command-line entry points.

    @cli_main
    def main(argv=None): ...

Expected errors (an `MMGenError`: a path the user gave that is missing is a `FileInputError` where it is
opened) print one line `error: <message>` to stderr and exit with code 2, before or during the work. Any
other exception, an OSError too, is a bug in the code (or a fault of the machine) and keeps its traceback.
With MMGEN_DEBUG=1 in the environment the expected errors keep their traceback as well. The helpers below
check command-line values before any work starts.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

from mmgen.config.schema import Range
from mmgen.errors import ConfigError, FileInputError, MMGenError

F = TypeVar("F", bound=Callable)

EXIT_BAD_INPUT = 2  # the exit code argparse also uses for a bad command line


def cli_main(fn: F) -> F:
    """Run `fn`; turn expected errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except MMGenError as exc:
            if os.environ.get("MMGEN_DEBUG") == "1":
                raise
            print(f"error: {exc}", file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]


def check_option(flag: str, value: float, allowed: Range) -> None:
    """A numeric command-line option must lie in `allowed`."""
    if value not in allowed:
        raise ConfigError(f"{flag} {value} is out of range (allowed: {allowed})")


def output_folder(path: str | Path, flag: str) -> Path:
    """An output folder the command may create or write into: not an existing file."""
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise FileInputError(f"{flag} {p} is an existing file; give a folder (new or existing) for the output")
    return p


def read_text_file(path: str | Path, flag: str) -> str:
    """The UTF-8 text of a file named on the command line."""
    p = Path(path)
    if not p.is_file():
        raise FileInputError(f"{flag} {p}: {'is a folder' if p.is_dir() else 'no such file'}; give a text file")
    try:
        return p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FileInputError(
            f"{flag} {p} is not a text file (byte {e.start} is not UTF-8); give a UTF-8 text file"
        ) from e
