"""The result store's on-disk format (Zarr v3): readable with plain ``zarr`` or xarray, no engine code.

Layout::

    /{model}/{dataset}/                    attrs: metrics (Table 1), checkpoint, label_names, data_digest, ...
    /{model}/{dataset}/candidates [M]      test indices the model predicts exactly right
    /{model}/{dataset}/candidates_{input}_{shown} [M]   the same, the model fed as a released cell feeds it
    /{model}/{dataset}/{run}/              attrs: store_format, fingerprint, attack, preset, params, target,
                                           config, seed, exp_labels, avg_labels, n_requested, n, chunk_size, ...
        sample_index [N] int64             data set index of each attacked sample
        labels_true [N,l] int8             ground truth, 0/1
        label_count_final [N] int16        labels shown by the final iterate (the study's)
        label_count_best [N] int16         most labels shown by any iterate
        pred [N,l] int8, y_star [N,l] int8
        norms [N,4] float32                L0, L1, L2, Linf of x_adv - x
        iters [N] int32
        success, success_best, eligible, failed [N] int8
        queries [N] int32                  model forwards of a black-box attack per sample (-1: not counted)
        reason [N] str                     why a sample failed ("" if it did not)
        x_adv_delta [N,3,H,W] float16      optional (--save-adv): x_adv - x
        done [n_chunks] bool               chunk c holds rows c*chunk_size ... (set last)
        provenance [n_chunks] str          JSON: versions, device, commit, host, times
        label [l] str, norm [4] str        coordinates: label names, norm names

A run explains itself to readers with no engine code: every array has ``dimension_names``
(sample, label, norm, chunk, ...) and a ``description``; unfinished rows hold fill values no
result can take (-1, NaN), declared as ``_FillValue`` so that xarray reads them as missing
(booleans are int8 0/1 for this reason; the reader gives them back as booleans).

``run`` is the attack name for the study's setting (preset paper, target show-many) and
``attack.preset.target`` otherwise (``+early-exit`` when samples leave at success). Every result
array is chunked one sample-chunk per shard; a shard writes its rows, then its ``done`` flag.
zarr's LocalStore writes each chunk file through a temporary file and a rename, so a killed
writer never leaves a torn chunk and a chunk is never marked done before its rows are complete.

Integrity: every chunk is zstd-compressed with its checksum, and written even when it holds only
the fill value (``write_empty_chunks``), so that a chunk marked done must exist. The reader checks
that every done chunk's files are present (a listing) and that they decode (the checksum); either
failure is a one-line error naming the run, array and chunk, never a table computed from fill values.

The format is versioned: every run group records ``store_format``; a group written in any other
format than :data:`FORMAT` is refused wherever it is opened, with one line saying so.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from zarr.codecs import ZstdCodec

from engine.errors import UserError

FORMAT = 4  # the run groups' store_format: the only one this engine reads or writes
# Every array of a run: zstd with its frame checksum; all chunks written (see the module docstring).
CODECS = {"compressors": [ZstdCodec(level=0, checksum=True)], "config": {"write_empty_chunks": True}}

RESULT_FIELDS = {
    # name: (dtype, trailing shape key); booleans are stored as int8 (see the module docstring)
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
    "queries": ("int32", None),
}
BOOLEAN = {name for name, (dt, _) in RESULT_FIELDS.items() if dt == "bool"} | {"labels_true"}

# What each array means, its dimensions and its fill value, for readers with no engine code
# (xarray: ``open_zarr(store, group=run)``). Unfinished rows hold values no result can take: -1 for
# counts and flags, NaN for norms; ``_FillValue`` tells xarray to read them as missing.
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
    "queries": ("model forwards a black-box attack ran for the sample, one per image evaluated "
                "(-1: an attack that does not count them)", "forwards"),
    "x_adv_delta": ("x_adv - x, float16", "pixel intensity in [0, 1]"),
    "done": ("chunk c holds rows c*chunk_size ... and is complete (set last)", None),
    "provenance": ("JSON: how chunk c was made (versions, device, commit, host, times, data digest)", None),
    "label": ("label names", None),
    "norm": ("names of the norms columns", None),
}
# Dimensions of the arrays that are not results (results: see dims, from RESULT_FIELDS).
DIMS = {"sample_index": ("sample",), "labels_true": ("sample", "label"), "reason": ("sample",),
        "done": ("chunk",), "provenance": ("chunk",), "x_adv_delta": ("sample", "channel", "height", "width"),
        "label": ("label",), "norm": ("norm",)}

PARTIAL = ".partial-"  # a run group being made: built under key + PARTIAL + a token, then renamed


def dims(name: str) -> tuple[str, ...]:
    """The dimension names of array ``name``."""
    if name not in RESULT_FIELDS:
        return DIMS[name]
    trail = RESULT_FIELDS[name][1]
    return ("sample",) if trail is None else ("sample", "label" if trail == "l" else "norm")


def meta(name: str) -> dict[str, Any]:
    """create_array keywords that describe array ``name``."""
    what, units = DESCRIBE[name]
    attrs: dict[str, Any] = {"description": what, **({"units": units} if units else {})}
    if name in RESULT_FIELDS or name == "reason":
        attrs["coordinates"] = "sample_index done"
    if name == "norms":
        attrs["columns"] = list(NORMS)
    return {"dimension_names": dims(name), "attributes": attrs}


def result_shape(name: str, n: int, num_labels: int) -> tuple[int, ...]:
    """The shape of result array ``name`` for ``n`` samples of ``num_labels`` labels."""
    trail = RESULT_FIELDS[name][1]
    return (n,) if trail is None else (n, num_labels if trail == "l" else trail)


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


def check_name(name: str, what: str) -> str:
    """A group name of ours (model key, run key): one path component, so that it can neither hide a
    run from the report (``a/b``) nor reach outside the store (``..``)."""
    if not isinstance(name, str) or not name or "/" in name or "\\" in name or name in (".", ".."):
        raise UserError(f"{what} must be a non-empty name without '/' (and not . or ..), got {name!r}")
    return name


def is_url(path: str | Path) -> bool:
    """A store given as a URL (``s3://``, ``gs://``, ``file://`` ...) goes through zarr's FsspecStore."""
    return "://" in str(path)


def json_safe(obj: Any) -> Any:
    """``obj`` as it reads back from JSON attributes (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(obj, default=str))


def where(group) -> str:
    """A group's place for messages: the store's folder and the group's path (or the store's URL)."""
    root = getattr(group.store, "root", None)
    return f"{root}/{group.path}" if root is not None else str(group.store_path)


def check_format(run) -> None:
    """Refuse a run group written in another store format than this engine's (one line)."""
    found = dict(run.attrs).get("store_format")
    if found != FORMAT:
        was = "an older store format (no store_format attribute)" if found is None else f"store format {found}"
        raise UserError(f"{where(run)}: written in {was}; this engine reads format {FORMAT} only: "
                        f"re-run into a new --out")
