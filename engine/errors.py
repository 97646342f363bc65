"""One exception type for bad user input.

The CLI turns :class:`UserError` into a one-line message and exit code 2; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, field or value, and what was expected."""

    exit_code = 2


class NoWorkersLeft(UserError):
    """A sweep lost every worker that could take its remaining shards (exit code 3: resume later)."""

    exit_code = 3


def expect(cond: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise UserError(message)
