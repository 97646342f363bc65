"""What the published multi-label models (ML-Decoder, Query2Label) share: reading their authors'
checkpoint files as saved, choosing an architecture by name, fitting a state dict in one line.

Their checkpoints are read with the safe weights-only loader (engine.models.checkpoints): a file
that needs code to unpickle is refused unless ``trust_pickle`` (``--trust-checkpoint``). The
authors' TResNet backbones need ``inplace_abn`` (a CUDA extension that does not build everywhere);
timm's pure-torch TResNet computes the same function and ``timm.models.tresnet.checkpoint_filter_fn``
maps the authors' key names onto it (InPlaceABN ``conv.0`` / ``conv.1`` -> ``conv`` / ``bn``, and
the InPlaceABN weight w -> |w| + 1e-5, as inplace_abn applies it).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine.errors import UserError
from engine.models import checkpoints
from engine.util import file_digest

SHOWN_KEYS = 3  # missing / unexpected keys named in a mismatch message


def pick(kind: str, name: str, choices: Sequence[str]) -> str:
    """``name`` if it is one of ``choices``; else one line naming the close matches (exit 2)."""
    if name in choices:
        return name
    close = difflib.get_close_matches(str(name), choices, n=3, cutoff=0.4)
    hint = f"did you mean {' or '.join(close)}? " if close else ""
    raise UserError(f"{kind} {name!r}: unknown architecture; {hint}valid: {', '.join(choices)}", key=kind)


def read_state(checkpoint: str | Path | None, what: str, *, trust_pickle: bool = False,
               containers: Sequence[str] = ("model", "state_dict")) -> tuple[dict, dict[str, torch.Tensor]]:
    """(the file's dict, its state dict): the first of ``containers`` that the file holds, else the
    file itself; a DataParallel ``module.`` prefix stripped (the authors save both ways)."""
    if not checkpoint:
        raise UserError(f"{what} needs a checkpoint: the authors' weights file")
    path = Path(checkpoint)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    obj = checkpoints.load_file(path, trust_pickle)
    if not isinstance(obj, Mapping):
        raise UserError(f"{path}: expected a dict (a state dict, or one holding {' or '.join(containers)}), "
                        f"got {type(obj).__name__}")
    sd = next((obj[c] for c in containers if isinstance(obj.get(c), Mapping)), obj)
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise UserError(f"{path}: holds no tensors under {', '.join(containers)} or at the top level")
    strip = all(k.startswith("module.") for k in tensors)
    return dict(obj), {(k[len("module."):] if strip else k): v for k, v in tensors.items()}


def need(sd: Mapping[str, torch.Tensor], key: str, path: str | Path, what: str) -> torch.Tensor:
    """A tensor the architecture's shape is read from; its absence is the one-line mismatch."""
    if key not in sd:
        raise UserError(f"{path}: does not fit {what}: missing key {key}; the file's first keys: "
                        f"{', '.join(list(sd)[:SHOWN_KEYS]) or 'none'}")
    return sd[key]


def fit(net: nn.Module, sd: Mapping[str, torch.Tensor], path: str | Path, what: str) -> None:
    """Load ``sd`` into ``net`` strictly; a mismatch is one line with the first missing, unexpected and
    differently shaped keys."""
    own = net.state_dict()
    missing = [k for k in own if k not in sd]
    unexpected = [k for k in sd if k not in own]
    shapes = [k for k in own if k in sd and tuple(own[k].shape) != tuple(sd[k].shape)]
    if missing or unexpected or shapes:
        def first(keys):
            return ", ".join(keys[:SHOWN_KEYS]) + (f" (+{len(keys) - SHOWN_KEYS} more)" if len(keys) > SHOWN_KEYS
                                                   else "") if keys else "none"
        shaped = f"; keys of another shape {first(shapes)}" if shapes else ""
        raise UserError(f"{path}: does not fit {what}: missing keys {first(missing)}; unexpected keys "
                        f"{first(unexpected)}{shaped}")
    net.load_state_dict(dict(sd), strict=True)


def tresnet_body(layers: Sequence[int], width_factor: float, v2: bool) -> nn.Sequential:
    """timm's pure-torch TResNet body (space-to-depth, stem, four stages), without its head."""
    from timm.models.tresnet import TResNet  # timm is heavy: only these model kinds import it

    return TResNet(layers=list(layers), width_factor=width_factor, v2=v2, num_classes=0).body


def tresnet_keys(sd: Mapping[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """``sd`` with the TResNet keys under ``prefix`` (e.g. ``body.``) in timm's layout: the authors'
    InPlaceABN names mapped by timm's ``checkpoint_filter_fn`` (a dict already in timm's layout
    passes unchanged); every other key as it is."""
    from timm.models.tresnet import checkpoint_filter_fn

    inner = {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
    # The filter recognises timm's layout by 'body.conv1.conv.weight' and maps the rest by name.
    mapped = checkpoint_filter_fn({f"body.{k}": v for k, v in inner.items()}, None)
    out = {k: v for k, v in sd.items() if not k.startswith(prefix)}
    out.update({prefix + k[len("body."):]: v for k, v in mapped.items()})
    return out


def label_names(given: list[str] | None, stored: Any, count: int, path: str | Path, what: str) -> list[str]:
    """The label names: given (--label-names), else the checkpoint's ``idx_to_class`` (a dict index ->
    name, or a list), else an error; their number must be the head's."""
    names = given
    if names is None and isinstance(stored, Mapping) and stored:
        try:
            names = [str(stored[k]) for k in sorted(stored, key=int)]
        except (TypeError, ValueError):
            names = [str(v) for v in stored.values()]
    elif names is None and isinstance(stored, (list, tuple)) and stored:
        names = [str(n) for n in stored]
    if names is None:
        raise UserError(f"{path}: no label names in the checkpoint: give label_names (a file or a list; "
                        f"--label-names)")
    if len(names) != count:
        raise UserError(f"{path}: {what} has {count} labels but {len(names)} label names were given")
    return list(names)


def parts(kind: str, name: str, checkpoint: str | Path) -> dict[str, Any]:
    """What the model's digest covers besides its label names, output kind and input size."""
    return {kind: name, "weights": file_digest(checkpoint)}
