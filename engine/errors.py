"""One exception type for bad user input.

The CLI turns :class:`UserError` into a one-line message and exit code 2; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: a path, field or value, and what was expected."""


def expect(cond: bool, message: str) -> None:
    """Raise :class:`UserError` with ``message`` unless ``cond`` holds."""
    if not cond:
        raise UserError(message)
