"""Checkpoints: our own format, written atomically and read with ``weights_only`` loading.

A checkpoint is a plain dict of tensors and primitives (so ``torch.load(weights_only=True)``
reads it without executing pickled code):

    format, version, engine_version, model (ModelConfig dict), label_names, feat_dim, emb_dim,
    normalization {mean, std}, dataset {name, root, size, num_samples}, train (TrainConfig dict),
    epoch (epochs completed), state_dict, optimizer, history [per-epoch dicts], metrics

Label names travel with the model: data sets are mapped onto them by name, never by position.

ML-GCN's released checkpoints (``voc_checkpoint.pth.tar``, ``coco_checkpoint.pth.tar``: a dict
``{'epoch', 'arch', 'state_dict', 'best_score'}`` whose state dict has ``A``, ``features.*``,
``gc1.weight``, ``gc2.weight``, perhaps under a DataParallel ``module.`` prefix) are recognised by
:func:`read` and converted in memory into this format, with no conversion step. What they lack comes
from elsewhere:

- the label embedding (the repository passes it to ``forward``; ours holds it as the buffer ``inp``):
  ML-GCN's ``*_glove_word2vec.pkl`` (float32, C x 300), given as ``embedding`` or else found next to
  the checkpoint under its usual name (:data:`EMBEDDING_FILES`: ``voc_glove_word2vec.pkl`` for 20
  labels, ``coco_glove_word2vec.pkl`` for 80, ``nuswide_glove_word2vec.pkl`` or the study's
  ``glove_word2vec.pkl`` for 81);
- the label names: VOC's 20 classes, COCO's 80 names in alphabetical order (ML-GCN's order) or
  NUS-WIDE's 81 tags, chosen by the label count unless ``label_names`` is given;
- the rest is fixed by the repository: ResNet-101 (told from the ``features.*`` keys), 448 px, ImageNet
  mean/std (applied in its transforms, inside our model), BatchNorm ``num_batches_tracked`` (absent
  from old-torch state dicts) set to 0. The training data set is unknown (``dataset.name`` None):
  callers must name the data set and its root.

Everything is read with ``torch.load(weights_only=True)``; numpy scalars (``best_score``) are
allow-listed by name. ``trust_pickle=True`` falls back to a full unpickle: only for files whose source
you trust, as it can run arbitrary code.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

import engine
from engine.config import ModelConfig
from engine.data.coco import LABEL_NAMES as COCO
from engine.data.nuswide import TAGS
from engine.data.voc import VOC_CLASSES
from engine.errors import UserError
from engine.models import backbones
from engine.models.conventions import IMAGENET_MEAN, IMAGENET_STD
from engine.util import umask_mode

log = logging.getLogger(__name__)

FORMAT = "showmanylabels-checkpoint"
VERSION = 1


def save_atomic(obj: Any, path: str | Path) -> None:
    """torch.save to a temporary file in the same folder, then rename: never a half-written file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        os.fchmod(fd, umask_mode())  # mkstemp's 0600 would hide it from colleagues
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _numpy_safe_globals() -> list[Any]:
    """The numpy names a weights-only load may meet in a checkpoint (``best_score`` as a numpy scalar).

    Files written under numpy 1.x name them ``numpy.core.multiarray.*``, numpy 2 ``numpy._core...``:
    allow both spellings. None of these runs code: they rebuild scalars and arrays of plain dtypes.
    """
    core = getattr(np, "_core", None) or np.core
    ma = core.multiarray
    out: list[Any] = [ma.scalar, ma._reconstruct, np.ndarray, np.dtype]
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out += [(ma.scalar, f"{mod}.scalar"), (ma._reconstruct, f"{mod}._reconstruct")]
    plain = (np.bool_, np.int8, np.int16, np.int32, np.int64, np.uint8, np.uint16, np.uint32, np.uint64,
             np.float16, np.float32, np.float64)
    out += [type(np.dtype(t)) for t in plain]
    return out


def _short(e: Exception) -> str:
    """torch's weights-only errors are paragraphs: keep the reason only."""
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
    else:
        text = "\n\n".join(p for p in text.split("\n\n") if not p.strip().startswith("Weights only load failed"))
    text = text.split("Check the documentation", 1)[0].split(" Please use", 1)[0]
    text = " ".join(text.split())
    return text[:300] or type(e).__name__


def _torch_load(path: Path, trust_pickle: bool) -> Any:
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - corrupt or foreign files: the user's input
        reason = _short(e)
    # Only a well-formed pickle naming globals outside the allow-list can be rescued by trusting it.
    foreign = any(s in reason.lower() for s in ("unsupported global", "can only build"))
    if not trust_pickle:
        hint = (" (it names Python objects beyond tensors and numbers); if you trust the file's source, "
                "trust_pickle=True (--trust-checkpoint) reads it with full unpickling, which can run code"
                if foreign else "; expected a torch checkpoint file")
        raise UserError(f"{path}: cannot read checkpoint with the safe weights-only loader ({reason}){hint}")
    log.warning("%s: weights-only load failed (%s); unpickling it fully, as asked (trust_pickle)", path, reason)
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as e:  # noqa: BLE001
        raise UserError(f"{path}: cannot read checkpoint ({_short(e)})") from None


load_file = _torch_load  # the same safe loader for the other model sources (zoo, published, fit)


def read(
    path: str | Path,
    embedding: str | Path | None = None,
    label_names: Sequence[str] | None = None,
    *,
    trust_pickle: bool = False,
) -> dict[str, Any]:
    """Read and check one of our checkpoints, or an ML-GCN release checkpoint converted in memory.

    ``embedding`` and ``label_names`` are for ML-GCN checkpoints (see the module docstring); with one
    of our checkpoints ``label_names``, if given, must equal the stored names, and ``embedding`` is
    ignored (ours store it).
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    ck = _torch_load(path, trust_pickle)
    if isinstance(ck, dict) and ck.get("format") == FORMAT:
        if ck.get("version") != VERSION:
            raise UserError(f"{path}: checkpoint version {ck.get('version')} not supported (expected {VERSION})")
        if label_names is not None and list(label_names) != list(ck["label_names"]):
            stored = list(ck["label_names"])
            raise UserError(f"{path}: the checkpoint's label names {stored[:3]}... ({len(stored)}) differ from "
                            f"the ones given {list(label_names)[:3]}... ({len(label_names)})")
        if embedding is not None:
            log.warning("%s: stores its own label embedding; the embedding %s given is not used", path, embedding)
        return ck
    sd = _release_state_dict(ck)
    if sd is None:
        raise UserError(
            f"{path}: not a showmanylabels checkpoint (no format field {FORMAT!r}) nor an ML-GCN checkpoint "
            f"(a dict whose state_dict holds A, gc1.weight, gc2.weight and features.*)"
        )
    return _from_release(ck, sd, path, embedding, label_names)


# ---------------------------------------------------------------- ML-GCN's released checkpoints
ML_GCN_KEYS = ("A", "gc1.weight", "gc2.weight")
ML_GCN_INPUT_SIZE = 448  # the repository trains and evaluates at 448 x 448
# Usual names of the label-embedding pickle next to a checkpoint, by label count (ML-GCN's data/voc and
# data/coco files; the study's repository names its NUS-WIDE one glove_word2vec.pkl).
EMBEDDING_FILES: dict[int, tuple[str, ...]] = {
    20: ("voc_glove_word2vec.pkl",),
    80: ("coco_glove_word2vec.pkl",),
    81: ("nuswide_glove_word2vec.pkl", "glove_word2vec.pkl"),
}


def default_label_names(num_labels: int, path: str | Path = "checkpoint") -> list[str]:
    """VOC's 20 classes, COCO's 80 names (alphabetical, ML-GCN's order) or NUS-WIDE's 81 tags, by count."""
    table = {len(VOC_CLASSES): VOC_CLASSES, len(COCO): COCO, len(TAGS): TAGS}
    if num_labels not in table:
        raise UserError(f"{path}: checkpoint has {num_labels} labels; label names are known only for 20 (VOC), "
                        f"80 (COCO) and 81 (NUS-WIDE): pass label_names")
    return list(table[num_labels])


def find_embedding(path: str | Path, num_labels: int) -> Path | None:
    """The label-embedding file next to checkpoint ``path`` under a usual name, if there is one."""
    folder = Path(path).parent
    for name in EMBEDDING_FILES.get(num_labels, ()):
        if (folder / name).is_file():
            return folder / name
    return None


def _release_state_dict(obj: Any) -> dict[str, Any] | None:
    """The state dict of an ML-GCN checkpoint (``module.`` prefixes removed), or None if it is not one."""
    if not isinstance(obj, dict):
        return None
    sd = obj.get("state_dict", obj)
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        return None
    # Saved from nn.DataParallel, every key starts with "module.".
    sd = {k.removeprefix("module."): v for k, v in sd.items()}
    if not set(ML_GCN_KEYS) <= set(sd):
        return None
    return sd


def _detect_backbone(path: Path, features: dict[str, torch.Tensor], feat_dim: int) -> str:
    """The backbone whose parameter names and shapes are exactly ``features``' (built on the meta device)."""
    want = {k: tuple(v.shape) for k, v in features.items() if not k.endswith("num_batches_tracked")}
    first_diff = ""
    for name in ("resnet101", *(b for b in backbones.BACKBONES if b != "resnet101")):
        with torch.device("meta"):  # shapes only: no memory, no init cost
            seq, channels = backbones.build(name)
        have = {k: tuple(v.shape) for k, v in seq.state_dict().items() if not k.endswith("num_batches_tracked")}
        if have == want and channels == feat_dim:
            return name
        if not first_diff:  # describe the mismatch against ResNet-101, ML-GCN's backbone
            missing = sorted(set(have) - set(want))
            extra = sorted(set(want) - set(have))
            shapes = sorted(k for k in set(have) & set(want) if have[k] != want[k])
            first_diff = (f"against resnet101: {len(missing)} keys missing (e.g. {missing[:2]}), {len(extra)} "
                          f"unexpected (e.g. {extra[:2]}), {len(shapes)} of other shapes (e.g. {shapes[:2]})")
    raise UserError(f"{path}: the features.* parameters match no known backbone ({first_diff})")


def _from_release(obj: dict, sd: dict[str, Any], path: Path, embedding: str | Path | None,
                  label_names: Sequence[str] | None) -> dict[str, Any]:
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise UserError(f"{path}: state_dict entries that are not tensors: {bad[:3]}")
    a, gc1, gc2 = sd["A"], sd["gc1.weight"], sd["gc2.weight"]
    if a.ndim != 2 or a.shape[0] != a.shape[1] or gc1.ndim != 2 or gc2.ndim != 2 or gc1.shape[1] != gc2.shape[0]:
        raise UserError(f"{path}: ML-GCN shapes do not fit together: A {tuple(a.shape)}, gc1.weight "
                        f"{tuple(gc1.shape)}, gc2.weight {tuple(gc2.shape)}")
    n, (emb_dim, hidden), feat_dim = a.shape[0], gc1.shape, gc2.shape[1]
    extra = sorted(k for k in sd if not (k in ML_GCN_KEYS or k == "inp" or k.startswith(("features.", "normalize."))))
    if extra:
        raise UserError(f"{path}: unexpected entries for an ML-GCN checkpoint: {extra[:5]}")
    features = {k[len("features."):]: v for k, v in sd.items() if k.startswith("features.")}
    backbone = _detect_backbone(path, features, feat_dim)

    names = list(label_names) if label_names is not None else default_label_names(n, path)
    if len(names) != n:
        raise UserError(f"{path}: checkpoint has {n} labels but {len(names)} label names were given")
    if len(set(names)) != n:
        raise UserError(f"{path}: label names must be distinct")

    emb_path = Path(embedding) if embedding is not None else find_embedding(path, n)
    if emb_path is not None:
        emb = torch.from_numpy(load_embedding(emb_path, n))
    elif "inp" in sd:  # a bare state dict of our own model carries its embedding
        emb = sd["inp"].float()
    else:
        usual = " or ".join(EMBEDDING_FILES.get(n, ("<name>_glove_word2vec.pkl",)))
        raise UserError(f"{path}: an ML-GCN checkpoint needs its label embedding (float32 {n} x {emb_dim}, e.g. "
                        f"ML-GCN's {usual}): pass it as embedding= (--embedding FILE) or put it next to the "
                        f"checkpoint as {usual}")
    if tuple(emb.shape) != (n, emb_dim):
        raise UserError(f"{emb_path or path}: embedding shape {tuple(emb.shape)}, but the checkpoint's gc1.weight "
                        f"expects ({n}, {emb_dim})")

    state: dict[str, torch.Tensor] = {}
    for k, v in features.items():
        state[f"features.{k}"] = v
        if k.endswith(".running_mean") and k.replace(".running_mean", ".num_batches_tracked") not in features:
            # Old torch wrote no BatchNorm counter; it only matters for momentum=None, which ResNets do not use.
            state[f"features.{k.replace('.running_mean', '.num_batches_tracked')}"] = torch.tensor(0)
    state.update({"A": a.float(), "gc1.weight": gc1, "gc2.weight": gc2, "inp": emb.contiguous()})
    state["normalize.mean"] = torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1)
    state["normalize.std"] = torch.tensor(IMAGENET_STD).view(1, -1, 1, 1)

    cfg = ModelConfig(family="mlgcn", backbone=backbone, input_size=ML_GCN_INPUT_SIZE, normalization="imagenet",
                      gcn_hidden=int(hidden), embedding=str(emb_path) if emb_path is not None else None)
    best = obj.get("best_score") if "state_dict" in obj else None
    try:
        best = float(best) if best is not None else None
    except (TypeError, ValueError):
        best = None
    return {
        "format": FORMAT,
        "version": VERSION,
        "engine_version": engine.__version__,
        "model": cfg.to_dict(),
        "label_names": names,
        "feat_dim": int(feat_dim),
        "emb_dim": int(emb_dim),
        "normalization": {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)},
        # Unknown: the release records no data set, so callers must name it (--dataset, --root).
        "dataset": {"name": None, "root": None, "size": ML_GCN_INPUT_SIZE, "split": None, "num_samples": None},
        "train": None,
        "epoch": int(obj["epoch"]) if isinstance(obj.get("epoch"), int) else None,
        "state_dict": state,
        "optimizer": None,
        "history": [],
        "source": {"format": "ml-gcn", "path": str(path), "arch": obj.get("arch") if "state_dict" in obj else None,
                   "best_score": best, "embedding": str(emb_path) if emb_path is not None else None},
    }


def read_adj_pickle(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """ML-GCN's ``*_adj.pkl`` = {'adj': C x C co-occurrence counts, 'nums': C label counts}, read safely."""
    path = Path(path)
    obj = load_array_pickle(path)
    if not isinstance(obj, dict) or "adj" not in obj or "nums" not in obj:
        raise UserError(f"{path}: expected a dict with 'adj' (C x C co-occurrence counts) and 'nums' (C counts)")
    try:
        adj = np.asarray(obj["adj"], dtype=np.float64)
        nums = np.asarray(obj["nums"], dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise UserError(f"{path}: 'adj' and 'nums' must be numeric arrays ({e})") from None
    if adj.ndim != 2 or adj.shape[0] != adj.shape[1] or nums.shape != (adj.shape[0],):
        raise UserError(f"{path}: 'adj' has shape {adj.shape} and 'nums' {nums.shape}; expected (C, C) and (C,)")
    if not (np.isfinite(adj).all() and np.isfinite(nums).all()) or (adj < 0).any() or (nums < 0).any():
        raise UserError(f"{path}: counts must be finite and non-negative")
    return adj, nums


def correlation_from_counts(adj: np.ndarray, nums: np.ndarray, t: float = 0.4, p: float = 0.25) -> np.ndarray:
    """The re-weighted correlation matrix from counts, as :func:`engine.models.mlgcn.correlation_matrix`.

    ``adj[i, j]`` = images with labels i and j, ``nums[i]`` = images with label i (ML-GCN's
    ``*_adj.pkl``). Same steps as the repository's ``gen_A``: P(j | i) = adj / nums (by row),
    binarised at ``t``, columns re-weighted to share ``p``, identity added. Two guards ``gen_A`` lacks,
    both no-ops on its pickles: the diagonal of ``adj`` is ignored (it is zero there), and a label with
    no positives gets no edges instead of a NaN row.
    """
    counts = np.array(adj, dtype=np.float64)
    nums = np.asarray(nums, dtype=np.float64)
    np.fill_diagonal(counts, 0)
    cond = counts / np.maximum(nums, 1)[:, None]
    a = (cond >= t).astype(np.float64)
    a = a * p / (a.sum(0, keepdims=True) + 1e-6)
    return (a + np.eye(len(nums))).astype(np.float32)


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
