"""The error boundary of the command-line entry points.

    @cli_main
    def main(argv=None): ...

Expected errors (an `MMGenError`, or an OS error on a path the user gave) print one line
`error: <message>` to stderr and exit with code 2, before or during the work. Any other exception is a bug
in the code and keeps its traceback.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

from mmgen.errors import MMGenError

F = TypeVar("F", bound=Callable)

EXIT_BAD_INPUT = 2  # the exit code argparse also uses for a bad command line

# OS errors that come from a path the user named (a missing file, a folder where a file belongs, no access).
PATH_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, FileExistsError)


def error_line(exc: BaseException) -> str:
    """The one line printed for an expected error."""
    if isinstance(exc, MMGenError):
        return f"error: {exc}"
    if isinstance(exc, OSError) and exc.filename is not None:
        return f"error: {exc.strerror}: {exc.filename} (check the path)"
    return f"error: {exc}"


def cli_main(fn: F) -> F:
    """Run `fn`; turn expected errors into one line on stderr and exit code 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except (MMGenError, *PATH_ERRORS) as exc:
            print(error_line(exc), file=sys.stderr, flush=True)
            raise SystemExit(EXIT_BAD_INPUT) from None

    return wrapper  # type: ignore[return-value]
