"""Query2Label (Liu et al., "Query2Label: A Simple Transformer Way to Multi-Label Classification",
2021; github.com/SlongLiu/query2labels) on ResNet-101 or TResNet-L, read from the authors' checkpoints.

lib/models/query2label.py and transformer.py (DETR's transformer, post-norm): the backbone's last
feature map (through ``input_proj``, a 1x1 conv, when the checkpoint has one) plus a fixed sine
position embedding (``backbone.1.pe``, stored in the checkpoint, sized for one input resolution:
img_size / 32 on each side) goes through the encoder layers (self-attention on features + pos); L
label queries (``query_embed``) start from zeros and go through decoder layers (self-attention
only where the checkpoint keeps it, ``--keep_*_self_attn_dec``; cross-attention with query pos on
the query and pos on the key), the decoder's final LayerNorm, then ``GroupWiseLinear``: logit_k =
<W_k, h_k> + b_k. ReLU feed-forwards; 4 attention heads (every released configuration:
``--nheads 4``; the file does not record it). Pre-norm checkpoints (``--pre_norm``) are refused.

Backbones (lib/models/backbone.py): torchvision ``resnet101`` with frozen BatchNorm up to layer4
(keys ``backbone.0.body.conv1...``), or ``tresnetl`` (the ASL TResNet-L: layers 4-5-18-3, width 1.2,
2432 features; keys ``backbone.0.body.body.*`` in the authors' InPlaceABN layout, read through
timm's TResNet as engine.models.published says). Input: the authors' test transform is Resize to
img_size, ToTensor, then ImageNet mean/std (lib/dataset/get_dataset.py; ``--orid_norm`` would
skip it), put in front here. Checkpoint: ``{'state_dict': ..., 'epoch', 'arch', 'best_mAP',
'optimizer'}`` (main_mlc.py), perhaps with a ``module.`` prefix; no label names: give them.
"""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from engine.models import published
from engine.models.conventions import IMAGENET_MEAN, IMAGENET_STD, Normalize

BACKBONES = ("resnet101", "tresnet_l")
HEADS = 4
STRIDE = 32  # the backbones' downsampling: the position embedding is img_size / 32 on a side
BODY = "backbone.0.body."


class EncoderLayer(nn.Module):
    """DETR's TransformerEncoderLayer.forward_post at inference."""

    def __init__(self, d: int, ff: int, nhead: int = HEADS):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, src: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        q = src + pos
        src = self.norm1(src + self.self_attn(q, q, src, need_weights=False)[0])
        return self.norm2(src + self.linear2(F.relu(self.linear1(src))))


class DecoderLayer(nn.Module):
    """Query2Label's TransformerDecoderLayer.forward_post at inference; ``self_attn`` and ``norm1``
    exist only where the checkpoint kept them (Q2L removes them by default)."""

    def __init__(self, d: int, ff: int, self_attn: bool, nhead: int = HEADS):
        super().__init__()
        self.self_attn = nn.MultiheadAttention(d, nhead) if self_attn else None
        self.norm1 = nn.LayerNorm(d) if self_attn else None
        self.multihead_attn = nn.MultiheadAttention(d, nhead)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)
        self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d)

    def forward(self, tgt, memory, pos, query_pos):
        if self.self_attn is not None:
            q = tgt + query_pos
            tgt = self.norm1(tgt + self.self_attn(q, q, tgt, need_weights=False)[0])
        att = self.multihead_attn(tgt + query_pos, memory + pos, memory, need_weights=False)[0]
        tgt = self.norm2(tgt + att)
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class Features(nn.Module):
    """``backbone.0``: the backbone's body (its last feature map)."""

    def __init__(self, body: nn.Module):
        super().__init__()
        self.body = body

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class Positions(nn.Module):
    """``backbone.1``: the sine position embedding, as the checkpoint stores it (1, d, h, w)."""

    def __init__(self, shape: tuple[int, ...]):
        super().__init__()
        self.register_buffer("pe", torch.zeros(shape))


class GroupWiseLinear(nn.Module):
    """One linear classifier per label query: W (1, L, d), b (1, L)."""

    def __init__(self, labels: int, d: int):
        super().__init__()
        self.W = nn.Parameter(torch.zeros(1, labels, d))
        self.b = nn.Parameter(torch.zeros(1, labels))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return (self.W * h).sum(-1) + self.b


class Query2Label(nn.Module):
    """Features -> (input_proj) -> transformer -> per-label logits; parameter names as the authors'."""

    def __init__(self, body: nn.Module, channels: int, labels: int, d: int, ff: int, pe_shape: tuple[int, ...],
                 encoders: int, self_attn: list[bool], proj: bool):
        super().__init__()
        self.backbone = nn.ModuleList([Features(body), Positions(pe_shape)])
        self.transformer = nn.Module()
        self.transformer.encoder = nn.Module()
        self.transformer.encoder.layers = nn.ModuleList(EncoderLayer(d, ff) for _ in range(encoders))
        self.transformer.decoder = nn.Module()
        self.transformer.decoder.layers = nn.ModuleList(DecoderLayer(d, ff, s) for s in self_attn)
        self.transformer.decoder.norm = nn.LayerNorm(d)
        self.input_proj = nn.Conv2d(channels, d, kernel_size=1) if proj else nn.Identity()
        self.query_embed = nn.Embedding(labels, d)
        self.fc = GroupWiseLinear(labels, d)
        self.input_size = pe_shape[-1] * STRIDE

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        src = self.input_proj(self.backbone[0](x))
        b, _, h, w = src.shape
        pe = self.backbone[1].pe
        if tuple(pe.shape[-2:]) != (h, w):
            raise UserError(f"Query2Label: its position embedding is for {pe.shape[-2]} x {pe.shape[-1]} features "
                            f"({self.input_size} px input), got {h} x {w}: use input size {self.input_size}")
        src = src.flatten(2).permute(2, 0, 1)  # (hw, B, d)
        pos = pe.to(src.dtype).flatten(2).permute(2, 0, 1).expand(-1, b, -1)
        query = self.query_embed.weight.unsqueeze(1).expand(-1, b, -1)  # (L, B, d)
        memory = src
        for layer in self.transformer.encoder.layers:
            memory = layer(memory, pos)
        tgt = torch.zeros_like(query)
        for layer in self.transformer.decoder.layers:
            tgt = layer(tgt, memory, pos, query)
        return self.fc(self.transformer.decoder.norm(tgt).transpose(0, 1))


def _resnet101() -> nn.Module:
    import torchvision  # heavy; only this backbone needs it
    from torchvision.ops.misc import FrozenBatchNorm2d

    net = torchvision.models.resnet101(weights=None, norm_layer=FrozenBatchNorm2d)
    # torchvision's IntermediateLayerGetter up to layer4: every child before avgpool, names kept.
    return nn.Sequential(OrderedDict((n, m) for n, m in net.named_children() if n not in ("avgpool", "fc")))


def body(name: str) -> tuple[nn.Module, int]:
    """(the backbone's body, named as under ``backbone.0.body``; its feature channels)."""
    if name == "resnet101":
        return _resnet101(), 2048
    # the ASL TResNet-L (lib/models/tresnet/tresnet_sync.py TResnetL), kept whole under its own 'body'
    return nn.Sequential(OrderedDict(body=published.tresnet_body((4, 5, 18, 3), 1.2, False))), 2432


def from_state(sd: dict[str, torch.Tensor], backbone: nn.Module, channels: int, path: str | Path,
               what: str) -> Query2Label:
    """The Query2Label model that fits a state dict: every width and depth from its shapes."""
    def need(key):
        return published.need(sd, key, path, what)

    if "transformer.encoder.norm.weight" in sd:
        raise UserError(f"{path}: a pre-norm Query2Label checkpoint (--pre_norm): only post-norm (the default) "
                        f"is supported")

    def count(prefix):
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    labels, d = need("query_embed.weight").shape
    ff = need("transformer.decoder.layers.0.linear1.weight").shape[0]
    decoders = count("transformer.decoder.layers.")
    keep = [f"transformer.decoder.layers.{i}.self_attn.in_proj_weight" in sd for i in range(decoders)]
    return Query2Label(backbone, channels, labels, d, ff, tuple(need("backbone.1.pe").shape),
                       count("transformer.encoder.layers."), keep, "input_proj.weight" in sd)


def load(name: str, checkpoint: str | Path | None, names: list[str] | None, *, trust_pickle: bool = False):
    """(module, label names, digest parts): Query2Label on ``name`` with the authors' weights, with
    ImageNet normalisation in front."""
    name = published.pick("q2l", name, BACKBONES)
    what = f"Query2Label on {name}"
    _, sd = published.read_state(checkpoint, f"q2l {name}", trust_pickle=trust_pickle,
                                 containers=("state_dict", "model"))
    net = from_state(sd, *body(name), checkpoint, what)
    if name == "tresnet_l":
        sd = published.tresnet_keys(sd, BODY + "body.")
    published.fit(net, sd, checkpoint, what)
    names = published.label_names(names, None, net.fc.b.shape[1], checkpoint, what)
    model = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), net).eval()
    model.input_size = net.input_size
    return model, names, published.parts("q2l", name, checkpoint)
