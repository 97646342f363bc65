"""The protocol's first step, once per (checkpoint, data set): load model and data, and find the
test samples the model predicts exactly right.

One pass over the test split gives both Table 1's metrics and those candidates; both are cached in
the store's model group, with the digests of the checkpoint and of the data they came from, so that
a later run on other weights or other data is refused rather than mixed in.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from engine import data
from engine.data.base import ImageListDataset
from engine.errors import UserError
from engine.models import sources
from engine.models.metrics import table1
from engine.results import FORMAT, model_group


@dataclass
class Plan:
    model: nn.Module
    dataset: ImageListDataset
    model_key: str
    dataset_key: str
    candidates: np.ndarray
    metrics: dict[str, Any]
    checkpoint: str
    digest: str
    root: Any  # the store's root group
    data_digest: str  # of the data the model group was made from (data_digest)

    @property
    def family(self) -> str:
        """The model family (mlgcn, mlliw): with the data set's name, the released code's cell."""
        return self.metrics.get("model", "")


# Loader options that do not change which samples and labels a split has; every other one (VOC's
# difficult, the split seed, NUS-WIDE's csv_name ...) is part of a model group's identity. Two
# annotation formats of one split give the same samples (engine.data tests that).
NOT_DATA_OPTIONS = ("source", "allow_missing", "cache")


def plan(checkpoint: str | Path, store: Any, *, dataset: str | None = None, root: str | Path | None = None,
         split: str | None = None, device: str = "cpu", model_key: str | None = None,
         embedding: str | Path | None = None, label_names: list[str] | None = None, trust_pickle: bool = False,
         allow_missing: bool = False, verify_data: bool = True, own_model: dict | None = None,
         check: Callable[[ImageListDataset], None] | None = None, **load_kw) -> Plan:
    """Load model and data; find (or reuse from the store) the exactly-right test samples.

    ``store`` is the store's root group, or a function that opens it: called once the checkpoint
    and the data have loaded, so that bad inputs leave no store behind. ``verify_data``: check the
    data against the digest the model group was made from (:func:`data_digest`; sweeps do it once,
    in the plan job, not in every actor that takes a shard). ``own_model``: your own model instead of
    one of our checkpoints (``checkpoint`` is then its weights file, if any; engine.models.sources).
    """
    m = sources.load(checkpoint, own_model, embedding=embedding, label_names=label_names, trust_pickle=trust_pickle)
    ds = m.dataset_for(dataset, root, split, allow_missing=allow_missing, **load_kw)
    model = m.model.to(device)
    mkey = model_key or m.key
    if check is not None:
        check(ds)  # what only the data's labels can tell fails before the store is opened
    root_group = store() if callable(store) else store
    dkey = dataset_key(ds)
    group = model_group(root_group, mkey, dkey)
    options = {k: v for k, v in sorted(load_kw.items()) if k not in NOT_DATA_OPTIONS and v is not None}
    _check_made_from(group, f"{mkey}/{dkey}", m.digest, ds.split, options)
    if "candidates" in group and "metrics" in group.attrs:
        cand, metrics, digest = _cached(group, f"{mkey}/{dkey}", ds, verify_data)
    else:
        cand, metrics, digest = _scan_into(group, m, model, ds, device, options)
    return Plan(model, ds, mkey, dkey, cand, metrics, m.what, m.digest, root_group, digest)


def _check_made_from(group, name: str, digest: str, split: str, options: dict[str, Any]) -> None:
    """Refuse a model group made from another checkpoint, split or data options (a group made by
    the Python API's write_run records none of them: any will do)."""
    attrs = dict(group.attrs)
    if attrs.get("checkpoint_digest") not in (None, digest) or attrs.get("split") not in (None, split) or \
            attrs.get("data_options", options) != options:
        raise UserError(
            f"{name} in the store was made from another checkpoint, split or data options "
            f"(digest {attrs.get('checkpoint_digest')}, split {attrs.get('split')}, options "
            f"{attrs.get('data_options', {})}); use another --out or --model-key"
        )


def _cached(group, name: str, ds: ImageListDataset, verify_data: bool) -> tuple[np.ndarray, dict, str]:
    """Candidates, metrics and data digest from the model group (``verify_data``: the data read now
    must be the data it was made from)."""
    cand = np.asarray(group["candidates"][:])
    attrs = dict(group.attrs)
    stored = attrs.get("data_digest")
    if stored is None:
        raise UserError(f"{name}: written in an older store format (a model group with no data digest); this "
                        f"engine reads format {FORMAT} only: re-run into a new --out")
    if verify_data:
        have = data_digest(ds, cand)
        if have != stored:
            raise UserError(f"{ds.root}: the {ds.name} {ds.split} data here differ from those {name} in the store "
                            f"was made from (data digest {have}, stored {stored}); point --root at the original "
                            f"data, or write to another --out")
    return cand, attrs["metrics"], stored


def _scan_into(group, m, model: nn.Module, ds: ImageListDataset, device: str,
               options: dict[str, Any]) -> tuple[np.ndarray, dict, str]:
    """One pass over the test split: Table 1's metrics and the candidates, recorded in the model group."""
    logits, cand = _scan(model, ds, device)
    m.check_outputs(logits)
    metrics = table1(logits, torch.from_numpy(ds.labels))
    metrics.update({"model": m.family, "dataset": ds.name, "split": ds.split})
    group.create_array("candidates", shape=(len(cand),), chunks=(max(len(cand), 1),), dtype="int64",
                       dimension_names=("candidate",), overwrite=True)[:] = cand
    digest = data_digest(ds, cand)
    group.attrs.update({"metrics": metrics, "checkpoint": m.what, "checkpoint_digest": m.digest,
                        "split": ds.split, "family": m.family, "backbone": m.backbone,
                        "label_names": ds.label_names, "num_test_samples": len(ds), "data_options": options,
                        "data_digest": digest, **m.attrs()})
    return cand, metrics, digest


def data_digest(ds: ImageListDataset, candidates: np.ndarray) -> str:
    """A digest of the data a model group's runs read: the split's sample list (paths relative to
    the data root, so an identical copy elsewhere matches) and labels, and the bytes of every
    exactly-right sample's file (the only images any run attacks)."""
    h = hashlib.sha256()
    h.update(json.dumps([ds.name, ds.split, ds.label_names]).encode())
    h.update(np.ascontiguousarray(ds.labels).tobytes())
    for p in ds.paths:
        try:
            h.update(str(p.relative_to(ds.root)).encode() + b"\0")
        except ValueError:
            h.update(p.name.encode() + b"\0")
    for i in np.asarray(candidates).tolist():
        h.update(Path(ds.paths[int(i)]).read_bytes())
    return h.hexdigest()[:16]


def dataset_key(ds: ImageListDataset) -> str:
    """The model group's name for this split: the data set's name for its test split, ``name@split``
    for any other, so that runs of one model on two splits (the text's test split, the released
    code's val files) live side by side in one store."""
    return ds.name if ds.split == data.info(ds.name).test_split else f"{ds.name}@{ds.split}"


@torch.no_grad()
def _scan(model: nn.Module, ds: ImageListDataset, device: str, batch_size: int = 128):
    model.eval()
    outs = []
    for s in range(0, len(ds), batch_size):
        x = torch.stack([ds.image(i) for i in range(s, min(s + batch_size, len(ds)))]).to(device)
        outs.append(model(x).cpu())
    logits = torch.cat(outs)
    y = torch.from_numpy(ds.labels).bool()
    ok = ((logits >= 0) == y).all(1) & y.any(1)
    return logits, np.nonzero(ok.numpy())[0]
