"""Backbones: feature extractors mapping normalised images to a feature map [B, C, h, w].

The study's: torchvision ``resnet101`` (ML-GCN) and ``inception_v3`` (ML-LIW). Small ones that
train on two CPU cores: ``resnet18`` and ``tiny`` (four conv blocks). Nothing is downloaded:
ImageNet weights come from a local state dict file (``backbone_weights``).

``backbone_weights`` may also be one of our checkpoints: its ``features.*`` are loaded (the demo
uses this in place of ImageNet weights, which it cannot have).

ResNets are kept as ``nn.Sequential(conv1, bn1, relu, maxpool, layer1..4)`` so that parameter
names match the ML-GCN repository's ``features.0 ... features.7`` and its released checkpoints
load as they are.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

from engine import config
from engine.errors import UserError


def _tiny() -> tuple[nn.Module, int, nn.Module | None]:
    def block(cin: int, cout: int, pool: bool) -> list[nn.Module]:
        layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        return layers + ([nn.MaxPool2d(2)] if pool else [])

    # Widths chosen on the demo: 32..256 cost 1.6x more per attack iteration for the same ML-GCN
    # quality (micro-F1 0.976), 16..128 left the frozen-feature ML-LIW head at 0.81.
    widths = (24, 48, 96, 192)
    layers: list[nn.Module] = []
    cin = 3
    for i, w in enumerate(widths):
        layers += block(cin, w, pool=i < len(widths) - 1)
        cin = w
    return nn.Sequential(*layers), widths[-1], None


def _resnet(name: str) -> Callable[[], tuple[nn.Module, int, nn.Module]]:
    def build() -> tuple[nn.Module, int, nn.Module]:
        net = getattr(torchvision.models, name)(weights=None)
        seq = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3, net.layer4)
        return seq, net.fc.in_features, net

    return build


def _inception() -> tuple[nn.Module, int, nn.Module]:
    net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=True)
    names = [n for n, _ in net.named_children() if n not in ("avgpool", "dropout", "fc", "AuxLogits")]
    return nn.Sequential(*(getattr(net, n) for n in names)), net.fc.in_features, net


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise UserError(f"{path}: backbone weights file not found (nothing is downloaded; give a local state dict)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure is the user's file
        raise UserError(f"{path}: cannot read backbone weights ({e}); expected a torch state dict") from None
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise UserError(f"{path}: expected a state dict (a mapping of parameter names to tensors)")
    return state


def _load_weights(seq: nn.Module, net: nn.Module | None, path: Path) -> None:
    """Load ImageNet (torchvision) weights into ``net``, or ``features.*`` of one of our
    checkpoints (a backbone trained here, e.g. the demo's stand-in for ImageNet) into ``seq``."""
    state = _read_state(path)
    if any(k.startswith("features.") for k in state):
        target = seq
        state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")}
    elif net is not None:
        target = net
        state = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
    else:
        target = seq
    own = {k for k in target.state_dict() if not k.startswith(("fc.", "AuxLogits."))}
    missing = sorted(own - set(state))
    if missing:
        raise UserError(f"{path}: not a matching state dict for this backbone: {len(missing)} keys missing, "
                        f"e.g. {missing[:3]}")
    shapes = [k for k in own if state[k].shape != target.state_dict()[k].shape]
    if shapes:
        raise UserError(f"{path}: parameter shapes differ from this backbone's, e.g. {shapes[:3]}")
    target.load_state_dict(state, strict=False)


BACKBONES: dict[str, Callable[[], tuple[nn.Module, int, nn.Module | None]]] = {
    "tiny": _tiny,
    "resnet18": _resnet("resnet18"),
    "resnet50": _resnet("resnet50"),
    "resnet101": _resnet("resnet101"),
    "inception_v3": _inception,
}
# ModelConfig validates names against engine.config.BACKBONES without importing this module.
assert tuple(BACKBONES) == config.BACKBONES, "engine.config.BACKBONES and the builders here disagree"

# The smallest input each backbone accepts (Inception-v3's stem needs 75 px).
MIN_INPUT = {"tiny": 16, "resnet18": 32, "resnet50": 32, "resnet101": 32, "inception_v3": 75}


def build(name: str, weights: str | Path | None = None) -> tuple[nn.Module, int]:
    """Return (feature extractor, number of output channels)."""
    if name not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; valid: {', '.join(BACKBONES)}")
    seq, channels, net = BACKBONES[name]()
    if weights is not None:
        _load_weights(seq, net, Path(weights))
    return seq, channels
