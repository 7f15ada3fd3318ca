"""The one exception type for problems a user can fix, and the one place it becomes what the user sees."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input (a key, a file, a source, a model id): printed as one line, exit code 2.

    Raised before expensive work starts wherever the problem can be seen up front.
    """


def first_line(error: BaseException, limit: int = 300) -> str:
    """An exception's first non-empty line (at most `limit` characters), or its type's name when its
    message is empty: the reason a one-line UserError gives for a library's multi-line error."""
    line = next((line.strip() for line in str(error).splitlines() if line.strip()), type(error).__name__)
    return line if len(line) <= limit else line[:limit] + "..."


@contextmanager
def exit_on_user_error(prog: str) -> Iterator[None]:
    """Around a command: a UserError is printed as `prog: message` on stderr and exits with code 2
    (DVC then names the failed stage above it); any other exception keeps its traceback."""
    try:
        yield
    except UserError as e:
        print(f"{prog}: {e}", file=sys.stderr)
        sys.exit(2)
