"""The Zarr (v3) result store: readable with plain ``zarr``, no engine code needed.

Layout::

    /{model}/{dataset}/                    attrs: metrics (Table 1), checkpoint, label_names, ...
    /{model}/{dataset}/candidates [M]      test indices the model predicts exactly right
    /{model}/{dataset}/{run}/              attrs: attack, preset, params, target, config, seed,
                                           exp_labels, avg_labels, n_requested, n, chunk_size, ...
        sample_index [N] int64             data set index of each attacked sample
        labels_true [N,l] int8             (bool before format 3)
        label_count_final [N] int16        labels shown by the final iterate (the study's)
        label_count_best [N] int16         most labels shown by any iterate
        pred [N,l] int8, y_star [N,l] int8
        norms [N,4] float32                L0, L1, L2, Linf of x_adv - x
        iters [N] int32
        success, success_best, eligible, failed [N] int8
        reason [N] str                     why a sample failed ("" if it did not)
        x_adv_delta [N,3,H,W] float16      optional (--save-adv): x_adv - x
        done [n_chunks] bool               chunk c holds rows c*chunk_size ... (set last)
        provenance [n_chunks] str          JSON: versions, device, commit, host, times (format 3)
        label [l] str, norm [4] str        coordinates: label names, norm names (format 3)

Format 3 makes a run explain itself to readers with no engine code: every array has
``dimension_names`` (sample, label, norm, chunk, ...) and a ``description``; unfinished rows hold
fill values no result can take (-1, NaN), declared as ``_FillValue`` so that xarray reads them as
missing (booleans are int8 0/1 for this reason; :func:`read` gives them back as booleans).

``run`` is the attack name for the study's setting (preset paper, target show-many) and
``attack.preset.target`` otherwise (``+early-exit`` when samples leave at success). Every result
array is chunked one sample-chunk per shard; a shard writes its rows, then its ``done`` flag.
zarr's LocalStore writes each chunk file through a temporary file and a rename, so a killed
writer never leaves a torn chunk and a chunk is never marked done before its rows are complete.

Integrity (runs with ``store_format`` >= 2): every chunk is zstd-compressed with its checksum, and
written even when it holds only the fill value (``write_empty_chunks``), so that a chunk marked done
must exist. :func:`done_chunks` (``--status``, resume, report) checks that every done chunk's files
are present (a listing), :func:`read` that they decode (the checksum); either failure is a one-line
error naming the run, array and chunk, never a table computed from fill values. Runs written before
(no ``store_format``) are read as they are.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import ZstdCodec

from engine.errors import UserError
from engine.runtime.lock import pid_alive

FORMAT = 3  # run groups: 2 = checksummed chunks, every chunk written; 3 = self-describing (below)
# Every array of a run: zstd with its frame checksum; all chunks written (see the module docstring).
CODECS = {"compressors": [ZstdCodec(level=0, checksum=True)], "config": {"write_empty_chunks": True}}

# Format 3: what each array means, its dimensions and its fill value, for readers with no engine
# code (xarray: ``open_zarr(store, group=run)``). Unfinished rows hold values no result can take:
# -1 for counts and flags (booleans are stored as int8 0/1 so that they can be missing too), NaN for
# norms; ``_FillValue`` tells xarray to read them as missing.
NORMS = ("l0", "l1", "l2", "linf")
DESCRIBE = {
    "sample_index": ("index of the attacked sample in the data set's test split", None),
    "labels_true": ("ground-truth labels (1 = present)", None),
    "label_count_final": ("labels shown (logit >= 0) by the attack's final iterate (the study's count)", "labels"),
    "label_count_best": ("most labels shown by any iterate", "labels"),
    "pred": ("labels shown by the final iterate (1 = shown)", None),
    "y_star": ("the target label vector y* (1 = to be shown)", None),
    "norms": ("norms of x_adv - x: columns l0, l1, l2, linf (coordinate norm)", "pixel intensity in [0, 1]"),
    "iters": ("iterations run for the sample", "iterations"),
    "success": ("target reached by the final iterate (targets other than show-many)", None),
    "success_best": ("target reached by any iterate", None),
    "eligible": ("the sample counts for the run's success rates", None),
    "failed": ("the attack failed on the sample (reason says why)", None),
    "reason": ("why the sample failed; empty if it did not", None),
    "x_adv_delta": ("x_adv - x, float16", "pixel intensity in [0, 1]"),
    "done": ("chunk c holds rows c*chunk_size ... and is complete (set last)", None),
    "provenance": ("JSON: how chunk c was made (versions, device, commit, host, times, data digest)", None),
    "label": ("label names", None),
    "norm": ("names of the norms columns", None),
}
# Dimensions of the arrays that are not results (results: see _dims, from RESULT_FIELDS).
DIMS = {"sample_index": ("sample",), "labels_true": ("sample", "label"), "reason": ("sample",),
        "done": ("chunk",), "provenance": ("chunk",), "x_adv_delta": ("sample", "channel", "height", "width"),
        "label": ("label",), "norm": ("norm",)}


def _meta(name: str) -> dict[str, Any]:
    """create_array keywords that describe array ``name`` (format 3)."""
    what, units = DESCRIBE[name]
    attrs: dict[str, Any] = {"description": what, **({"units": units} if units else {})}
    if name in RESULT_FIELDS or name == "reason":
        attrs["coordinates"] = "sample_index done"
    if name == "norms":
        attrs["columns"] = list(NORMS)
    return {"dimension_names": _dims(name), "attributes": attrs}


def _dims(name: str) -> tuple[str, ...]:
    if name not in RESULT_FIELDS:
        return DIMS[name]
    trail = RESULT_FIELDS[name][1]
    return ("sample",) if trail is None else ("sample", "label" if trail == "l" else "norm")


RESULT_FIELDS = {
    # name: (dtype, trailing shape key)
    "label_count_final": ("int16", None),
    "label_count_best": ("int16", None),
    "pred": ("bool", "l"),
    "y_star": ("bool", "l"),
    "norms": ("float32", 4),
    "iters": ("int32", None),
    "success": ("bool", None),
    "success_best": ("bool", None),
    "eligible": ("bool", None),
    "failed": ("bool", None),
}


def run_key(attack: str, preset: str = "paper", target: str = "show-many", early_exit: bool = False,
            target_label: Any = None, params: dict[str, Any] | None = None) -> str:
    """The run's group name: ``ATTACK``, ``ATTACK.released.show-many``, ... and, where parameters were set
    on top of the preset, ``@`` and those parameters: ``ATTACK@eps=0.03,iterations=40``."""
    key = attack if (preset == "paper" and target == "show-many") else f"{attack}.{preset}.{target}"
    if target_label is not None:
        key += f"-{target_label}"
    key += "+early-exit" if early_exit else ""
    return key + (f"@{param_label(params, ',')}" if params else "")


def param_label(params: dict[str, Any], sep: str = ", ") -> str:
    """``eps=0.03, iterations=40``: sorted by name; floats in their shortest round-trip form (repr),
    booleans as TOML writes them, so that a name reads back as the values it was made from."""
    def fmt(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        return repr(v) if isinstance(v, float) else str(v)
    return sep.join(f"{k}={fmt(params[k])}" for k in sorted(params))


def is_url(path: str | Path) -> bool:
    """A store given as a URL (``s3://``, ``gs://``, ``file://`` ...) goes through zarr's FsspecStore."""
    return "://" in str(path)


def open_store(path: str | Path, mode: str = "a") -> zarr.Group:
    if is_url(path):
        # Object stores write every key in one PUT, so a chunk is never torn there either; the done
        # flag is still the last key a shard writes.
        try:
            return zarr.open_group(str(path), mode=mode, zarr_format=3)
        except Exception as e:  # noqa: BLE001
            raise UserError(f"{path}: cannot open as a Zarr store ({e})") from None
    path = Path(path)
    if mode == "r" and not path.exists():
        raise UserError(f"{path}: result store does not exist")
    if path.exists() and not (path / "zarr.json").exists():
        if path.is_dir() and not any(path.iterdir()) and mode != "r":
            pass
        else:
            raise UserError(f"{path}: exists but is not a Zarr v3 store (no zarr.json); choose another --out")
    try:
        return zarr.open_group(str(path), mode=mode, zarr_format=3)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot open as a Zarr store ({e})") from None


def _json_safe(obj: Any) -> Any:
    return json.loads(json.dumps(obj, default=str))


def check_name(name: str, what: str) -> str:
    """A group name of ours (model key, run key): one path component, so that it can neither hide a
    run from the report (``a/b``) nor reach outside the store (``..``)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"{what} must be a non-empty name without '/' (and not . or ..), got {name!r}")
    return name


def model_group(root: zarr.Group, model: str, dataset: str) -> zarr.Group:
    return root.require_group(f"{check_name(model, 'model key')}/{dataset}")


def result_shape(name: str, n: int, num_labels: int) -> tuple[int, ...]:
    """The shape of result array ``name`` for ``n`` samples of ``num_labels`` labels."""
    trail = RESULT_FIELDS[name][1]
    return (n,) if trail is None else (n, num_labels if trail == "l" else trail)


def _writable(run: zarr.Group, name: str) -> zarr.Array:
    """Array ``name`` of ``run`` for writing: the write config is not stored with an array, so
    every write asks for it (all chunks written, see the module docstring)."""
    return run[name].with_config(CODECS["config"])


PARTIAL = ".partial-"  # a run group being made: built under key + PARTIAL + a token, then renamed


def create_run(group: zarr.Group, key: str, *, n: int, num_labels: int, image_shape: tuple[int, ...] | None,
               chunk_size: int, attrs: dict[str, Any], sample_index: np.ndarray, labels_true: np.ndarray,
               fingerprint: dict[str, Any]) -> zarr.Group:
    """Create run ``key`` in ``group``, or reopen it if it was created by the same run.

    A group made with a different fingerprint (checkpoint, attack config, samples, data) is refused:
    results of two different runs are never mixed. On a local store the group is built under a
    name of its own and renamed into place when complete, so no writer ever sees (or deletes)
    another writer's half-made group; of two writers creating the same run, the first rename wins
    and the other reopens it.
    """
    fp = _json_safe(fingerprint)
    root = getattr(group.store, "root", None)
    if key in group and "fingerprint" not in group[key].attrs:
        if root is None:
            raise UserError(f"{group.store_path}/{key}: a run group without a fingerprint (half-made: another "
                            f"writer may be creating it now); if none is, delete that group and run again")
        # On a local store a group only appears under its name complete (see above): this one was
        # left by a writer from before atomic creation that was killed half-way, so it is made again.
        _remove(group, key)
    if key not in group:
        if root is None:  # object stores cannot rename: build in place, the fingerprint last
            _fill_run(group.create_group(key), n=n, num_labels=num_labels, image_shape=image_shape,
                      chunk_size=chunk_size, attrs=attrs, sample_index=sample_index, labels_true=labels_true,
                      fp=fp)
            return group[key]
        _clear_partials(group, key)
        tmp = f"{key}{PARTIAL}{uuid.uuid4().hex[:12]}"
        _fill_run(group.create_group(tmp, attributes={"partial_of": {"host": socket.gethostname(),
                                                                     "pid": os.getpid()}}),
                  n=n, num_labels=num_labels, image_shape=image_shape, chunk_size=chunk_size, attrs=attrs,
                  sample_index=sample_index, labels_true=labels_true, fp=fp)
        base = Path(root) / group.path
        try:
            os.rename(base / tmp, base / key)
        except OSError:  # another writer's rename came first: reopen theirs below
            _remove(group, tmp)
        else:
            del group[key].attrs["partial_of"]
    run = group[key]
    old = run.attrs.get("fingerprint")
    # Keys added to fingerprints later (ADDED) are compared only where the stored run has them.
    old_cmp = dict(old or {})
    new_cmp = {k: v for k, v in fp.items() if k not in ADDED or k in old_cmp}
    if old_cmp != new_cmp:
        diff = sorted(k for k in set(old_cmp) | set(new_cmp) if old_cmp.get(k) != new_cmp.get(k))
        raise UserError(
            f"{group.store_path}/{key}: the store already holds a different run here (differs in: "
            f"{', '.join(diff) or 'everything'}); write to another --out, or delete that group to start afresh"
        )
    return run


ADDED = ("data_digest",)  # fingerprint keys newer than format-1 stores


def _fill_run(run: zarr.Group, *, n, num_labels, image_shape, chunk_size, attrs, sample_index, labels_true,
              fp) -> None:
    n_chunks = max(1, -(-n // chunk_size))
    c = chunk_size
    run.create_array("sample_index", shape=(n,), chunks=(c,), dtype="int64", **CODECS,
                     **_meta("sample_index"))[:] = sample_index
    run.create_array("labels_true", shape=(n, num_labels), chunks=(c, num_labels), dtype="int8",
                     **CODECS, **_meta("labels_true"))[:] = labels_true
    for name, (dt, _) in RESULT_FIELDS.items():
        shape = result_shape(name, n, num_labels)
        kw = _meta(name)
        fill: Any = float("nan") if dt.startswith("float") else -1
        if dt == "bool":
            dt = "int8"
        if not dt.startswith("float"):
            kw["attributes"]["_FillValue"] = -1  # xarray reads these as missing
        run.create_array(name, shape=shape, chunks=(c,) + shape[1:], dtype=dt, fill_value=fill, **CODECS, **kw)
    run.create_array("reason", shape=(n,), chunks=(c,), dtype=str, **CODECS, **_meta("reason"))
    if image_shape is not None:
        run.create_array("x_adv_delta", shape=(n, *image_shape), chunks=(c, *image_shape), dtype="float16",
                         fill_value=float("nan"), **CODECS, **_meta("x_adv_delta"))
    run.create_array("done", shape=(n_chunks,), chunks=(1,), dtype="bool", fill_value=False, **CODECS,
                     **_meta("done"))
    run.create_array("provenance", shape=(n_chunks,), chunks=(1,), dtype=str, **CODECS, **_meta("provenance"))
    names = list(attrs.get("label_names") or range(num_labels))
    run.create_array("label", shape=(num_labels,), dtype=str, **CODECS, **_meta("label"))[:] = \
        np.array([str(x) for x in names], dtype=str)
    run.create_array("norm", shape=(len(NORMS),), dtype=str, **CODECS, **_meta("norm"))[:] = np.array(NORMS)
    run.attrs.update(_json_safe({**attrs, "fingerprint": fp, "chunk_size": chunk_size, "n": n,
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


def write_chunk(run: zarr.Group, chunk: int, rows: dict[str, np.ndarray], reasons: list[str],
                x_adv_delta: np.ndarray | None = None, provenance: str | None = None) -> None:
    """Write one shard's rows (and how they were made), then mark it done (the flag goes last)."""
    c = int(run.attrs["chunk_size"])
    lo = chunk * c
    hi = lo + len(reasons)
    for name, value in rows.items():
        arr = _writable(run, name)
        arr[lo:hi] = np.asarray(value).astype(arr.dtype)  # booleans into format 3's int8
    _writable(run, "reason")[lo:hi] = np.array(reasons, dtype=str)
    if x_adv_delta is not None and "x_adv_delta" in run:
        _writable(run, "x_adv_delta")[lo:hi] = x_adv_delta.astype(np.float16)
    if provenance is not None and "provenance" in run:  # runs from before format 3 have none
        _writable(run, "provenance")[chunk] = provenance
    _writable(run, "done")[chunk] = True


def reopen_chunk(run: zarr.Group, chunk: int) -> None:
    """Clear chunk ``chunk``'s done flag, so that the next run of the same command redoes it."""
    _writable(run, "done")[chunk] = False


def done_flags(run: zarr.Group) -> np.ndarray:
    """The done flags as stored, unchecked (a worker asking whether to skip a shard)."""
    return np.asarray(read(run, "done"), dtype=bool)


def done_chunks(run: zarr.Group) -> np.ndarray:
    """The done flags, after checking that every done chunk's rows are present (``store_format`` 2)."""
    done = done_flags(run)
    if int(run.attrs.get("store_format", 1)) >= 2:
        want = set(np.nonzero(done)[0].tolist())
        for name in (*RESULT_FIELDS, "reason"):
            have = _present(run, name, len(result_shape(name, 0, 0)) if name in RESULT_FIELDS else 1)
            if have is not None and want - have:
                raise UserError(_damaged(run, name, min(want - have), "is missing"))
    return done


def _present(run: zarr.Group, name: str, ndim: int) -> set[int] | None:
    """Row-chunk indices whose chunk file exists (local stores: a listing; None where not listable)."""
    root = getattr(run.store, "root", None)
    if root is None:
        return None
    folder = Path(root) / run.path / name / "c"
    # Row chunk i of an n-d array (one chunk across the trailing axes) is the file c/i/0/.../0.
    tail = ["0"] * (ndim - 1)
    try:
        return {int(p.name) for p in folder.iterdir() if p.name.isdigit() and p.joinpath(*tail).is_file()}
    except FileNotFoundError:
        return set()


def _damaged(run: zarr.Group, name: str, chunk: int | None, what: str) -> str:
    where = f"chunk {chunk} of {name}" if chunk is not None else f"array {name}"
    root = getattr(run.store, "root", None)
    at = f"{root}/{run.path}" if root is not None else str(run.store_path)
    return (f"{at}: {where} {what} although the run marks it done: the store is damaged; restore it from a "
            f"copy, or delete the run group {run.path} to compute it afresh")


def read(run: zarr.Group, name: str) -> np.ndarray:
    """A whole array of a run, its chunks' checksums verified (a damaged chunk is a one-line error).
    Boolean results come back boolean whatever the format stored them as (format 3: int8, -1 for
    unfinished rows, read as False)."""
    try:
        arr = np.asarray(run[name][:])
        if arr.dtype == np.int8 and (RESULT_FIELDS.get(name, ("",))[0] == "bool" or name == "labels_true"):
            return arr == 1
        return arr
    except KeyError:
        raise UserError(_damaged(run, name, None, "is missing")) from None
    except Exception as e:  # noqa: BLE001 - codec errors (checksum, truncated frame) have no common type
        raise UserError(_damaged(run, name, None, f"cannot be decoded ({str(e).splitlines()[0][:80]})")) from None


def done_rows(run: zarr.Group, done: np.ndarray | None = None) -> np.ndarray:
    """Boolean mask over the N rows: those inside finished chunks (``done``: flags already read)."""
    c, n = int(run.attrs["chunk_size"]), int(run.attrs["n"])
    return np.repeat(done_chunks(run) if done is None else done, c)[:n]


def iter_runs(root: zarr.Group):
    """(model, dataset, run key, run group) for every run in the store."""
    for model, mg in sorted(root.groups()):
        for dataset, dg in sorted(mg.groups()):
            for key, run in sorted(dg.groups()):
                if "done" in run and PARTIAL not in key:
                    yield model, dataset, key, run
