"""Today's classifiers as model sources: any timm architecture, and ASL's TResNets.

- ``timm = NAME``: ``timm.create_model(NAME, num_classes=L)`` (timm, huggingface/pytorch-image-models),
  its weights from ``checkpoint``: a state dict, or ``{"state_dict": ..., "label_names": [...],
  "input_size": S}`` (what ``sml train --timm`` writes). L is the row count of the checkpoint's
  classifier (the layer timm's ``pretrained_cfg["classifier"]`` names). The architecture's own
  ``pretrained_cfg`` mean and std are put in front, so that the model takes raw [0, 1] pixels as
  every model here does.
- ``asl = tresnet_m | tresnet_l | tresnet_xl``: the TResNets of Ridnik et al., "Asymmetric Loss For
  Multi-Label Classification" (ICCV 2021), as Alibaba-MIIL/ASL saves them: ``{"model": state dict,
  "num_classes": L, "idx_to_class": {i: name}}`` with the authors' key names (their
  ``src/models/tresnet/tresnet.py``, built on ``inplace_abn``, which does not build here), or a
  state dict in timm's tresnet layout. Both run on timm's pure-torch TResNet. ASL feeds raw
  [0, 1] pixels (its validation transform has no Normalize), so nothing goes in front; the input
  size comes from ``input_size`` (448 for the authors' COCO models, 224 for their VOC ones).

Checkpoints are read with the safe weights-only loader (engine.models.checkpoints); one that needs
code to unpickle is refused unless ``trust_pickle`` (``--trust-checkpoint``).
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.models import checkpoints, published
from engine.models.conventions import Normalize
from engine.util import file_digest

ASL_ARCHS = ("tresnet_m", "tresnet_l", "tresnet_xl")
# InPlaceABN (mapillary/inplace_abn) scales by |weight| + eps, eps = 1e-5; BatchNorm by weight.
ABN_EPS = 1e-5
_MODULE_PREFIX = "module."  # torch.nn.DataParallel's, in checkpoints saved from a wrapped model


def _timm():
    import timm  # heavy (seconds); only these sources need it

    return timm


def check_timm_name(name: str) -> None:
    """A timm architecture, or a one-line error listing the closest names timm knows."""
    timm = _timm()
    if timm.is_model(name):
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=5, cutoff=0.5)
    hint = f"; close matches: {', '.join(close)}" if close else "; see timm.list_models()"
    raise UserError(f"timm has no architecture {name!r}{hint}", key="timm")


def check_asl_name(name: str) -> None:
    if name not in ASL_ARCHS:
        close = difflib.get_close_matches(name, ASL_ARCHS, n=3, cutoff=0.3)
        raise UserError(f"asl {name!r}: expected one of {', '.join(ASL_ARCHS)}"
                        + (f" (close: {', '.join(close)})" if close else ""), key="asl")


def create(arch: str, num_labels: int) -> nn.Module:
    """timm's ``arch`` with ``num_labels`` outputs and random weights (nothing downloads)."""
    return _timm().create_model(arch, pretrained=False, num_classes=num_labels)


def _input_size(obj: Any, model: nn.Module) -> nn.Module:
    """The input size a checkpoint of `sml train` records, as the module's attribute (the sources'
    default when none is given)."""
    size = obj.get("input_size") if isinstance(obj, dict) else None
    if isinstance(size, int) and not isinstance(size, bool) and size > 0:
        model.input_size = size
    return model


def _read(checkpoint: str | Path, trust_pickle: bool) -> Any:
    return checkpoints.load_file(Path(checkpoint), trust_pickle)


def _tensors(sd: Any, checkpoint, expected: str) -> dict[str, torch.Tensor]:
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{checkpoint}: expected {expected}")
    if all(k.startswith(_MODULE_PREFIX) for k in sd):
        sd = {k[len(_MODULE_PREFIX):]: v for k, v in sd.items()}
    return sd


def _head_rows(sd: dict[str, torch.Tensor], classifier: str, checkpoint, arch: str) -> int:
    w = sd.get(f"{classifier}.weight")
    if w is None or w.dim() < 2:
        raise UserError(f"{checkpoint}: no classifier {classifier}.weight (the head of {arch}) in the state dict; "
                        f"first keys: {', '.join(list(sd)[:3])}")
    return int(w.shape[0])


def timm_net(arch: str, checkpoint, names: list[str] | None, trust_pickle: bool = False):
    """(module with timm's normalisation in front, label names, identity parts) for ``timm = arch``."""
    check_timm_name(arch)
    obj = _read(checkpoint, trust_pickle)
    sd = _tensors(obj.get("state_dict", obj) if isinstance(obj, dict) else obj, checkpoint,
                  "a state dict, or a dict with 'state_dict' (and 'label_names')")
    timm = _timm()
    cfg = timm.get_pretrained_cfg(arch)
    classifier = cfg.classifier if cfg is not None else "fc"
    classifier = classifier[0] if isinstance(classifier, (tuple, list)) else classifier
    rows = _head_rows(sd, classifier, checkpoint, f"timm {arch}")
    found = obj.get("label_names") if isinstance(obj, dict) and isinstance(obj.get("label_names"), list) else None
    names = published.label_names(names, found, rows, checkpoint, "its head")
    net = create(arch, rows)
    published.fit(net, sd, checkpoint, f"timm {arch} with {rows} labels")
    mean, std = tuple(net.pretrained_cfg["mean"]), tuple(net.pretrained_cfg["std"])
    model = net if (set(mean), set(std)) == ({0.0}, {1.0}) else nn.Sequential(Normalize(mean, std), net)
    return _input_size(obj, model), names, {"timm": arch, "mean": mean, "std": std, "weights": file_digest(checkpoint)}


# A conv + norm pair in the two layouts. The authors' conv2d_ABN is Sequential(Conv2d, InPlaceABN):
# ``.0`` / ``.1``; a stride-2 block wraps it with the anti-aliasing downsampler,
# Sequential(conv2d_ABN, AntiAliasDownsampleLayer): ``.0.0`` / ``.0.1`` (the blur filter is not a
# buffer: nothing of it is saved). timm's ConvNormAct names them ``.conv`` / ``.bn`` either way.
_ASL_PAIR = re.compile(r"\.(conv\d+|downsample\.\d+)\.(?:0\.)?([01])\.")
_TIMM_PAIR = re.compile(r"\.(conv\d+|downsample\.\d+)\.(conv|bn)\.")


def asl_to_timm(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The ASL authors' TResNet state dict in timm's tresnet layout (the mapping timm's
    ``tresnet.checkpoint_filter_fn`` applies to the same checkpoints). A state dict already in
    timm's layout comes back unchanged."""
    if "body.conv1.conv.weight" in sd:
        return dict(sd)
    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        k = _ASL_PAIR.sub(lambda m: f".{m[1]}.{'conv' if m[2] == '0' else 'bn'}.", key)
        if k.endswith(".bn.weight"):
            v = v.abs() + ABN_EPS  # the BatchNorm weight that scales as InPlaceABN's |w| + eps did
        out[k] = v
        if k.endswith(".bn.running_var"):  # InPlaceABN keeps no batch count; BatchNorm's is unused in eval
            out.setdefault(k[: -len("running_var")] + "num_batches_tracked", torch.tensor(0))
    return out


def timm_to_asl(sd: dict[str, torch.Tensor], net: nn.Module) -> dict[str, torch.Tensor]:
    """timm's tresnet state dict in the ASL authors' layout (the inverse of :func:`asl_to_timm` for
    BatchNorm weights above 1e-5): what their training script would have saved. ``net`` is the timm
    model, which tells which convolutions carry the anti-aliasing downsampler."""
    aa = {name for name, m in net.named_modules()
          if isinstance(getattr(m, "aa", None), nn.Module) and not isinstance(m.aa, nn.Identity)}

    def pair(m: re.Match) -> str:
        wrapped = "0." if m.string[: m.end(1)] in aa else ""
        return f".{m[1]}.{wrapped}{'0' if m[2] == 'conv' else '1'}."

    out: dict[str, torch.Tensor] = {}
    for key, v in sd.items():
        if key.endswith("num_batches_tracked"):
            continue  # InPlaceABN keeps no batch count
        k = _TIMM_PAIR.sub(pair, key)
        if _TIMM_PAIR.search(key) and key.endswith(".bn.weight"):
            v = v - ABN_EPS
        out[k] = v
    return out


def asl_net(arch: str, checkpoint, names: list[str] | None, trust_pickle: bool = False):
    """(timm TResNet holding the authors' weights, label names, identity parts) for ``asl = arch``."""
    check_asl_name(arch)
    obj = _read(checkpoint, trust_pickle)
    found = None
    if isinstance(obj, dict) and isinstance(obj.get("model"), dict):
        idx = obj.get("idx_to_class")
        if isinstance(idx, dict) and idx:
            # In the dict's own order, as the authors' infer.py lists them (list(idx_to_class.values())).
            found = [str(v) for v in idx.values()]
        sd = obj["model"]
    else:
        sd = obj.get("state_dict", obj) if isinstance(obj, dict) else obj
    sd = asl_to_timm(_tensors(sd, checkpoint, "the ASL authors' {'model': state dict, 'num_classes', "
                                              "'idx_to_class'}, or a TResNet state dict"))
    if any(k.startswith("head.fc.embedding_generator") for k in sd):
        raise UserError(f"{checkpoint}: a TResNet with the authors' bottleneck head (do_bottleneck_head) is not "
                        f"supported; expected a single linear head.fc")
    rows = _head_rows(sd, "head.fc", checkpoint, f"asl {arch}")
    given = obj.get("num_classes") if isinstance(obj, dict) else None
    if isinstance(given, int) and given != rows:
        raise UserError(f"{checkpoint}: num_classes {given} but its head has {rows} outputs")
    names = published.label_names(names, found, rows, checkpoint, "its head")
    net = create(arch, rows)
    published.fit(net, sd, checkpoint, f"asl {arch} with {rows} labels")
    return _input_size(obj, net), names, {"asl": arch, "weights": file_digest(checkpoint)}
