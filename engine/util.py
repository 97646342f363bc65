"""Small helpers shared across the engine."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any


def umask_mode(directory: bool = False) -> int:
    """The mode open() or mkdir() would give under this process's umask (0644 / 0755 under the usual
    022). tempfile makes files 0600 and folders 0700, which colleagues on a shared filesystem
    cannot read: what we write through a temporary is given this mode before it is renamed."""
    try:  # Linux >= 4.7 reports it; reading it leaves the process umask alone (os.umask() sets it)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                mask = int(line.split()[1], 8)
                break
        else:
            raise OSError
    except (OSError, ValueError):
        mask = os.umask(0o022)
        os.umask(mask)
    return (0o777 if directory else 0o666) & ~mask


def write_text_atomic(path: Path, text: str) -> None:
    """Write via a temporary sibling and rename, so readers never see a half-written file; the file
    gets the mode the user's umask gives."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def file_digest(path: str | Path) -> str:
    """The first 16 hex digits of a file's SHA-256: what identifies a model file in the store."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def markdown_row(cells: Iterable[Any]) -> str:
    """One line of a markdown table; an empty cell is written ``| |``."""
    return "|" + "".join(f" {c} |" if str(c) else " |" for c in cells)


def markdown_table(header: Sequence[str], rows: Iterable[Iterable[Any]]) -> list[str]:
    """The lines of a markdown table: the header, its rule, one line per row (cells as ``str``)."""
    return [markdown_row(header), "|" + "---|" * len(header), *(markdown_row(r) for r in rows)]
