"""Checkpoints: our own format, written atomically and read with ``weights_only`` loading.

A checkpoint is a plain dict of tensors and primitives (so ``torch.load(weights_only=True)``
reads it without executing pickled code):

    format, version, engine_version, model (ModelConfig dict), label_names, feat_dim, emb_dim,
    normalization {mean, std}, dataset {name, root, size, num_samples}, train (TrainConfig dict),
    epoch (epochs completed), state_dict, optimizer, history [per-epoch dicts], metrics

Label names travel with the model: data sets are mapped onto them by name, never by position.
"""

from __future__ import annotations

import io
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from engine.errors import UserError

FORMAT = "showmanylabels-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def read(path: str | Path) -> dict[str, Any]:
    """Read and check one of our checkpoints."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    try:
        ck = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files: the user's input
        raise UserError(f"{path}: cannot read checkpoint ({e})") from None
    if not isinstance(ck, dict) or ck.get("format") != FORMAT:
        raise UserError(f"{path}: not a showmanylabels checkpoint (no format field {FORMAT!r})")
    if ck.get("version") != VERSION:
        raise UserError(f"{path}: checkpoint version {ck.get('version')} not supported (expected {VERSION})")
    return ck


class _ArrayOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and plain containers only: pickles from the internet run no code."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("collections", "OrderedDict"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a data pickle")


def load_array_pickle(path: str | Path) -> Any:
    """Load a pickle holding numpy arrays (ML-GCN's ``*_glove_word2vec.pkl``, ``*_adj.pkl``) safely."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError:
        raise UserError(f"{path}: file not found") from None
    try:
        return _ArrayOnlyUnpickler(io.BytesIO(data), encoding="latin1").load()
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: not a pickle of numpy arrays ({e})") from None


def load_embedding(path: str | Path, num_labels: int) -> np.ndarray:
    """Label embeddings (C, E) from ``.npy`` or an array pickle."""
    path = Path(path)
    arr = np.load(path) if path.suffix == ".npy" and path.is_file() else load_array_pickle(path)
    arr = np.asarray(arr, dtype=np.float32)
    if arr.ndim != 2 or arr.shape[0] != num_labels:
        raise UserError(f"{path}: embedding shape {arr.shape}; expected ({num_labels}, E)")
    return arr
