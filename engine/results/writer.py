"""Writing the result store: open it, create a run group atomically, write a shard's rows.

The layout is :mod:`engine.results.format`'s; a run's attributes and fingerprint come from
:mod:`engine.results.attrs`.
"""

from __future__ import annotations

import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from engine.errors import UserError
from engine.results.format import (
    CODECS,
    FORMAT,
    NORMS,
    PARTIAL,
    RESULT_FIELDS,
    check_format,
    check_name,
    is_url,
    json_safe,
    meta,
    result_shape,
)
from engine.results.lock import pid_alive


def open_store(path: str | Path, mode: str = "a") -> zarr.Group:
    """The store's root group (``mode`` "r": it must exist); anything else at ``path`` is refused."""
    if is_url(path):
        # Object stores write every key in one PUT, so a chunk is never torn there either; the done
        # flag is still the last key a shard writes.
        return _open(path, mode)
    path = Path(path)
    if mode == "r" and not path.exists():
        raise UserError(f"{path}: result store does not exist")
    empty_dir = path.is_dir() and not any(path.iterdir())
    if path.exists() and not (path / "zarr.json").exists() and not (empty_dir and mode != "r"):
        raise UserError(f"{path}: exists but is not a Zarr v3 store (no zarr.json); choose another --out")
    return _open(path, mode)


def _open(path: str | Path, mode: str) -> zarr.Group:
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot open as a Zarr store ({e})") from None


def model_group(root: zarr.Group, model: str, dataset: str) -> zarr.Group:
    return root.require_group(f"{check_name(model, 'model key')}/{dataset}")


def create_run(group: zarr.Group, key: str, *, n: int, num_labels: int, image_shape: tuple[int, ...] | None,
               chunk_size: int, attrs: dict[str, Any], sample_index: np.ndarray, labels_true: np.ndarray,
               fingerprint: dict[str, Any]) -> zarr.Group:
    """Create run ``key`` in ``group``, or reopen it if it was created by the same run.

    A group made with a different fingerprint (checkpoint, attack config, samples, data) is refused:
    results of two different runs are never mixed; so is one written in another store format. On a
    local store the group is built under a name of its own and renamed into place when complete, so
    no writer ever sees (or deletes) another writer's half-made group; of two writers creating the
    same run, the first rename wins and the other reopens it.
    """
    fp = json_safe(fingerprint)
    if key not in group:
        layout = {"n": n, "num_labels": num_labels, "image_shape": image_shape, "chunk_size": chunk_size,
                  "attrs": attrs, "sample_index": sample_index, "labels_true": labels_true, "fp": fp}
        _make_run(group, key, layout)
    run = group[key]
    _check_same_run(group, key, run, fp)
    return run


def _make_run(group: zarr.Group, key: str, layout: dict[str, Any]) -> None:
    """Make run group ``key``: on a local store complete under a name of its own, then renamed."""
    root = getattr(group.store, "root", None)
    if root is None:  # object stores cannot rename: build in place, the fingerprint last
        _fill_run(group.create_group(key), **layout)
        return
    _clear_partials(group, key)
    tmp = f"{key}{PARTIAL}{uuid.uuid4().hex[:12]}"
    maker = {"partial_of": {"host": socket.gethostname(), "pid": os.getpid()}}
    _fill_run(group.create_group(tmp, attributes=maker), **layout)
    base = Path(root) / group.path
    try:
        os.rename(base / tmp, base / key)
    except OSError:  # another writer's rename came first: the caller reopens theirs
        _remove(group, tmp)
    else:
        del group[key].attrs["partial_of"]


def _check_same_run(group: zarr.Group, key: str, run: zarr.Group, fp: dict[str, Any]) -> None:
    """Refuse to reopen a run group of another format, or of another run (its fingerprint)."""
    if "fingerprint" not in run.attrs and getattr(group.store, "root", None) is None:
        raise UserError(f"{group.store_path}/{key}: a run group without a fingerprint (half-made: another "
                        f"writer may be creating it now); if none is, delete that group and run again")
    check_format(run)
    old = dict(run.attrs["fingerprint"])
    if old != fp:
        diff = sorted(k for k in set(old) | set(fp) if old.get(k) != fp.get(k))
        raise UserError(
            f"{group.store_path}/{key}: the store already holds a different run here (differs in: "
            f"{', '.join(diff) or 'everything'}); write to another --out, or delete that group to start afresh"
        )


def _fill_run(run: zarr.Group, *, n, num_labels, image_shape, chunk_size, attrs, sample_index, labels_true,
              fp) -> None:
    """Every array of the layout, then the attributes (the fingerprint last: a group with one is complete)."""
    n_chunks = max(1, -(-n // chunk_size))
    c = chunk_size
    run.create_array("sample_index", shape=(n,), chunks=(c,), dtype="int64", **CODECS,
                     **meta("sample_index"))[:] = sample_index
    run.create_array("labels_true", shape=(n, num_labels), chunks=(c, num_labels), dtype="int8",
                     **CODECS, **meta("labels_true"))[:] = labels_true
    for name, (dt, _) in RESULT_FIELDS.items():
        shape = result_shape(name, n, num_labels)
        kw = meta(name)
        floating = dt.startswith("float")
        if not floating:
            kw["attributes"]["_FillValue"] = -1  # xarray reads these as missing
        run.create_array(name, shape=shape, chunks=(c,) + shape[1:], dtype="int8" if dt == "bool" else dt,
                         fill_value=float("nan") if floating else -1, **CODECS, **kw)
    run.create_array("reason", shape=(n,), chunks=(c,), dtype=str, **CODECS, **meta("reason"))
    if image_shape is not None:
        run.create_array("x_adv_delta", shape=(n, *image_shape), chunks=(c, *image_shape), dtype="float16",
                         fill_value=float("nan"), **CODECS, **meta("x_adv_delta"))
    run.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False, **CODECS,
                     **meta("done"))
    run.create_array("provenance", shape=(n_chunks,), chunks=(1,), dtype=str, **CODECS, **meta("provenance"))
    names = list(attrs.get("label_names") or range(num_labels))
    run.create_array("label", shape=(num_labels,), dtype=str, **CODECS, **meta("label"))[:] = \
        np.array([str(x) for x in names], dtype=str)
    run.create_array("norm", shape=(len(NORMS),), dtype=str, **CODECS, **meta("norm"))[:] = np.array(NORMS)
    run.attrs.update(json_safe({**attrs, "fingerprint": fp, "chunk_size": chunk_size, "n": n,
                                "store_format": FORMAT}))


def _remove(group: zarr.Group, name: str) -> None:
    root = getattr(group.store, "root", None)
    if root is not None:
        shutil.rmtree(Path(root) / group.path / name, ignore_errors=True)
    else:
        del group[name]


def _clear_partials(group: zarr.Group, key: str) -> None:
    """Remove half-made groups of ``key`` whose maker, on this host, is gone (a killed creation)."""
    for name in [m for m in group.group_keys() if m.startswith(key + PARTIAL)]:
        who = dict(group[name].attrs).get("partial_of", {})
        if who.get("host") == socket.gethostname() and isinstance(who.get("pid"), int) and not pid_alive(who["pid"]):
            _remove(group, name)


def _writable(run: zarr.Group, name: str) -> zarr.Array:
    """Array ``name`` of ``run`` for writing: the write config is not stored with an array, so
    every write asks for it (all chunks written, see engine.results.format)."""
    return run[name].with_config(CODECS["config"])


def write_chunk(run: zarr.Group, chunk: int, rows: dict[str, np.ndarray], reasons: list[str],
                x_adv_delta: np.ndarray | None = None, provenance: str | None = None) -> None:
    """Write one shard's rows (and how they were made), then mark it done (the flag goes last)."""
    c = int(run.attrs["chunk_size"])
    lo = chunk * c
    hi = lo + len(reasons)
    for name, value in rows.items():
        arr = _writable(run, name)
        arr[lo:hi] = np.asarray(value).astype(arr.dtype)  # booleans into int8
    _writable(run, "reason")[lo:hi] = np.array(reasons, dtype=str)
    if x_adv_delta is not None and "x_adv_delta" in run:
        _writable(run, "x_adv_delta")[lo:hi] = x_adv_delta.astype(np.float16)
    if provenance is not None:
        _writable(run, "provenance")[chunk] = provenance
    _writable(run, "done")[chunk] = True


def reopen_chunk(run: zarr.Group, chunk: int) -> None:
    """Clear chunk ``chunk``'s done flag, so that the next run of the same command redoes it."""
    _writable(run, "done")[chunk] = False
