"""One exception type for bad user input.

The CLI turns :class:`UserError` into a one-line message and exit code 2; everything else is a bug
and keeps its traceback.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager


class UserError(Exception):
    """Bad input from the user: a path, field or value, and what was expected.

    ``key``: the offending field as data (None when no single field is to blame), so that a caller
    can point at it (a sweep file's line) without parsing the message. It is the field's name in the
    object being built; :func:`keyed` prefixes the name of the field that holds that object
    (``params.eps``: field ``eps`` of the attack config in a run's ``params``)."""

    exit_code = 2

    def __init__(self, message: str = "", *, key: str | None = None):
        super().__init__(message)
        self.key = key


class NoWorkersLeft(UserError):
    """A sweep lost every worker that could take its remaining shards (exit code 3: resume later)."""

    exit_code = 3


@contextmanager
def keyed(key: str) -> Iterator[None]:
    """A :class:`UserError` raised inside is about field ``key``: it becomes the error's key, or the
    first part of it when the error names a field of its own (``params`` + ``eps`` = ``params.eps``)."""
    try:
        yield
    except UserError as e:
        e.key = key if e.key is None else f"{key}.{e.key}"
        raise

