"""Errors that name the line: where in a sweep file's text a table or key is (tomllib gives no line
numbers), and a checker that reports a config's error at the line of the key it names.

The values' rules live in the config classes (engine.config); their errors carry the offending
field as data (``UserError.key``), which is looked up here: no message is parsed.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from engine.config import Config
from engine.errors import UserError

# Where a key may have been written: (the table's data, the table's name, its index among tables of
# that name or None), searched in order.
Place = tuple[dict[str, Any], str, int | None]


class Locator:
    """Line numbers for keys of a TOML text: search the raw text, good enough."""

    HEADER = re.compile(r"^\s*(\[\[?)\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")

    def __init__(self, text: str):
        self.lines = text.splitlines()
        self.headers: list[tuple[int, str]] = []  # (0-based line, table name)
        for i, ln in enumerate(self.lines):
            m = self.HEADER.match(ln)
            if m:
                self.headers.append((i, m.group(2).strip().strip("\"'")))

    def section(self, table: str | None, index: int | None = None) -> tuple[int, int]:
        """(first, end) 0-based line range of the index-th occurrence of ``table`` (None: the top)."""
        if table is None:
            return 0, self.headers[0][0] if self.headers else len(self.lines)
        hits = [k for k, (_, name) in enumerate(self.headers) if name == table]
        if not hits:
            return 0, len(self.lines)
        k = hits[min(index or 0, len(hits) - 1)]
        end = self.headers[k + 1][0] if k + 1 < len(self.headers) else len(self.lines)
        return self.headers[k][0], end

    def table_line(self, table: str, index: int | None = None) -> int | None:
        hits = [i for i, name in self.headers if name == table]
        if not hits:
            return None
        return hits[min(index or 0, len(hits) - 1)] + 1

    def key_line(self, key: str, table: str | None = None, index: int | None = None) -> int | None:
        lo, hi = self.section(table, index)
        pat = re.compile(rf"(^|[{{,\s])[\"']?{re.escape(key)}[\"']?\s*=")
        for i in range(lo, hi):
            code = self.lines[i].split("#", 1)[0]
            if pat.search(code):
                return i + 1
        return self.table_line(table, index) if table else None


class Checker:
    """Turns errors into ``file:line: message``, the line found from the error's key."""

    def __init__(self, path: str, text: str):
        self.path, self.loc = path, Locator(text)

    def fail(self, msg: str, line: int | None) -> None:
        raise UserError(f"{self.path}:{line}: {msg}" if line else f"{self.path}: {msg}")

    def line_of(self, key: str | None, places: list[Place], rename: dict[str, str] | None = None) -> int | None:
        """The line of field ``key`` (``params.eps``: key eps inside field params) in the first place
        that sets it; ``rename`` maps a field to the table key that sets it (``attack`` -> ``name``)."""
        if key is None:
            return None
        parts = key.split(".")
        head = (rename or {}).get(parts[0], parts[0])
        last = parts[-1] if len(parts) > 1 else head
        for data, table, index in places:
            if head in data:
                return self.loc.key_line(last, table, index)
        return None

    @contextmanager
    def reporting(self, where: str, places: list[Place], line: int | None,
                  rename: dict[str, str] | None = None) -> Iterator[None]:
        """A UserError inside is reported as ``file:line: where: message`` at its key's line, else at ``line``."""
        try:
            yield
        except UserError as e:
            self.fail(f"{where}: {e}", self.line_of(e.key, places, rename) or line)

    def build(self, cls: type[Config], values: dict, where: str, places: list[Place], line: int | None,
              rename: dict[str, str] | None = None):
        """``cls.from_dict(values)``, its errors reported at the line of the key they name."""
        with self.reporting(where, places, line, rename):
            return cls.from_dict(values)
