"""A model as a run feeds it (engine.protocol.Feed): raw [0, 1] pixels past its own normalisation,
and its labels shown as the study's code shows them (float32 sigmoid >= 0.5).

Both are made so that every part of the engine keeps its one rule, a label shown where its logit
is >= 0: the fed model returns logits that are snapped to 0 exactly where the code's rule and
ours disagree (a logit below 0 whose float32 sigmoid still rounds to 0.5), with the gradient of
the logit itself. The sigmoid of the snapped logit is 0.5, as the code's was, so losses on
probabilities do not change either.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from engine.errors import UserError
from engine.models.conventions import Normalize


def code_logits(z: torch.Tensor) -> torch.Tensor:
    """``z`` with every logit whose float32 sigmoid is >= 0.5 (the code's shown label) made >= 0:
    those below 0 become exactly 0; values elsewhere and the gradient everywhere are unchanged."""
    snap = (z < 0) & (torch.sigmoid(z.float()) >= 0.5)
    return z + torch.where(snap, -z, torch.zeros_like(z)).detach()


class CodeShown(nn.Module):
    """``model`` with its labels shown as the study's code shows them (:func:`code_logits`)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        if hasattr(model, "label_names"):
            self.label_names = model.label_names

    def freeze(self) -> None:
        if hasattr(self.model, "freeze"):
            self.model.freeze()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return code_logits(self.model(x))


def without_normalize(model: nn.Module) -> nn.Module:
    """``model`` fed raw [0, 1] pixels: a shallow copy whose ``normalize`` is the identity. The
    copy shares every parameter and buffer with ``model``; only its table of submodules is its own."""
    if not isinstance(getattr(model, "normalize", None), Normalize):
        raise UserError(f"input = raw needs a model that normalises its input itself (a `normalize` module); "
                        f"{type(model).__name__} has none", key="input")
    raw = copy.copy(model)
    raw._modules = dict(model._modules)
    raw._modules["normalize"] = nn.Identity()
    return raw


def fed(model: nn.Module, input: str = "model", shown: str = "logit") -> nn.Module:
    """``model`` as a run with this feed sees it; ``model`` itself under the defaults. One object per
    (model, feed), kept on the model (compiled iterations are cached by the model's identity)."""
    if input == "model" and shown == "logit":
        return model
    cache = model.__dict__.setdefault("_fed", {})
    if (input, shown) not in cache:
        m = without_normalize(model) if input == "raw" else model
        cache[(input, shown)] = CodeShown(m) if shown == "sigmoid" else m
    return cache[(input, shown)]
