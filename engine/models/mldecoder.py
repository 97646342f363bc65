"""ML-Decoder (Ridnik et al., "ML-Decoder: Scalable and Versatile Classification Head", WACV 2023;
github.com/Alibaba-MIIL/ML_Decoder) on the authors' TResNet backbones, read from their checkpoints.

The head (src_files/ml_decoder/ml_decoder.py, ``MLDecoder`` with ``zsl=0``): the backbone's
spatial features, projected by ``embed_standart`` and a ReLU, are the memory of a transformer
decoder whose G queries (``query_embed``, fixed) go through layers without self-attention
(``TransformerDecoderLayerOptimal``: the queries are added to themselves, then LayerNorm, cross-
attention, a ReLU feed-forward, each with a residual and a LayerNorm, 8 heads). "Group decoding":
query g gives ``duplicate_factor`` logits through its own linear map (``duplicate_pooling[g]``),
the first L of the G x factor kept, plus ``duplicate_pooling_bias``. Module and parameter names
mirror the authors', so their state dict loads as saved.

Backbones, as the authors' src_files/models/tresnet/tresnet.py defines them (timm's TResNet, see
engine.models.published): tresnet_m = layers 3-4-11-3 with basic blocks first; tresnet_l =
3-4-23-3 and tresnet_xl = 3-8-34-5, bottlenecks throughout (timm's ``v2``); width 64, 2048
features. The authors feed raw [0, 1] pixels (infer.py: ``/ 255``, no normalisation): none here.
Checkpoint: ``{'model': state_dict, 'idx_to_class': {...}}`` (infer.py), label names from
``idx_to_class``.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from engine.errors import UserError
from engine.models import published

# name -> (layers, width_factor, bottlenecks first), from the authors' TResnetM / TResnetL / TResnetXL
BACKBONES = {
    "tresnet_m": ((3, 4, 11, 3), 1.0, False),
    "tresnet_l": ((3, 4, 23, 3), 1.0, True),
    "tresnet_xl": ((3, 8, 34, 5), 1.0, True),
}
HEADS = 8  # the authors' nn.MultiheadAttention(d_model, nhead=8): fixed in their code, not in the file


class DecoderLayer(nn.Module):
    """The authors' TransformerDecoderLayerOptimal at inference (dropout off)."""

    def __init__(self, d_model: int, dim_feedforward: int, nhead: int = HEADS):
        super().__init__()
        self.norm1 = nn.LayerNorm(d_model)
        self.multihead_attn = nn.MultiheadAttention(d_model, nhead)
        self.linear1 = nn.Linear(d_model, dim_feedforward)
        self.linear2 = nn.Linear(dim_feedforward, d_model)
        self.norm2 = nn.LayerNorm(d_model)
        self.norm3 = nn.LayerNorm(d_model)

    def forward(self, tgt: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        # 'tgt = tgt + dropout1(tgt)': the layer has no self-attention; the query is added to itself.
        tgt = self.norm1(tgt + tgt)
        tgt = self.norm2(tgt + self.multihead_attn(tgt, memory, memory, need_weights=False)[0])
        return self.norm3(tgt + self.linear2(F.relu(self.linear1(tgt))))


class MLDecoderHead(nn.Module):
    """(B, C, H, W) features -> (B, L) logits; parameters under ``decoder.`` as the authors name them."""

    def __init__(self, num_classes: int, groups: int, embedding: int, features: int, factor: int,
                 dim_feedforward: int = 2048, layers: int = 1):
        super().__init__()
        if groups * factor < num_classes:
            raise UserError(f"ML-Decoder head: {groups} groups x {factor} logits cannot give {num_classes} labels")
        self.num_classes = num_classes
        self.decoder = nn.Module()  # a namespace, as in the authors' code (they hang it all on nn.TransformerDecoder)
        self.decoder.layers = nn.ModuleList(DecoderLayer(embedding, dim_feedforward) for _ in range(layers))
        self.decoder.embed_standart = nn.Linear(features, embedding)
        self.decoder.query_embed = nn.Embedding(groups, embedding)
        self.decoder.duplicate_pooling = nn.Parameter(torch.zeros(groups, embedding, factor))
        self.decoder.duplicate_pooling_bias = nn.Parameter(torch.zeros(num_classes))

    @classmethod
    def from_state(cls, sd: dict[str, torch.Tensor], path: str | Path, what: str, prefix: str = "") -> MLDecoderHead:
        """The head that fits a state dict (its keys under ``prefix``): every width from its shapes."""
        full, sd = sd, {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}
        if "wordvec_proj.weight" in sd:
            raise UserError(f"{path}: a zero-shot ML-Decoder (zsl = 1) checkpoint: its queries are word "
                            f"vectors given at run time; only the classification head (zsl = 0) is supported")
        def need(key):
            return published.need(full, prefix + key, path, what)

        pool = need("decoder.duplicate_pooling")
        if pool.dim() != 3:
            raise UserError(f"{path}: does not fit {what}: decoder.duplicate_pooling has shape {tuple(pool.shape)}, "
                            f"expected (groups, embedding, factor)")
        bias, embed = need("decoder.duplicate_pooling_bias"), need("decoder.embed_standart.weight")
        ff = need("decoder.layers.0.linear1.weight")
        layers = len({k.split(".")[2] for k in sd if k.startswith("decoder.layers.")})
        groups, embedding, factor = pool.shape
        return cls(bias.numel(), groups, embedding, embed.shape[1], factor, ff.shape[0], layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d = self.decoder
        memory = F.relu(d.embed_standart(x.flatten(2).transpose(1, 2))).transpose(0, 1)  # (HW, B, E)
        tgt = d.query_embed.weight.unsqueeze(1).expand(-1, x.shape[0], -1)  # (G, B, E)
        for layer in d.layers:
            tgt = layer(tgt, memory)
        # GroupFC: out[b, g] = h[b, g] @ duplicate_pooling[g], flattened group by group.
        out = torch.einsum("gbe,gef->bgf", tgt, d.duplicate_pooling).flatten(1)
        return out[:, :self.num_classes] + d.duplicate_pooling_bias


class MLDecoderNet(nn.Module):
    """TResNet body -> ML-Decoder head; keys ``body.*`` (timm's layout) and ``head.decoder.*``."""

    def __init__(self, body: nn.Module, head: MLDecoderHead):
        super().__init__()
        self.body = body
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


def load(name: str, checkpoint: str | Path | None, names: list[str] | None, *, trust_pickle: bool = False):
    """(module, label names, digest parts): ML-Decoder on TResNet ``name`` with the authors' weights."""
    name = published.pick("mldecoder", name, tuple(BACKBONES))
    what = f"ML-Decoder on {name}"
    obj, sd = published.read_state(checkpoint, f"mldecoder {name}", trust_pickle=trust_pickle)
    head = MLDecoderHead.from_state(sd, checkpoint, what, prefix="head.")
    layers, width, v2 = BACKBONES[name]
    net = MLDecoderNet(published.tresnet_body(layers, width, v2), head)
    published.fit(net, published.tresnet_keys(sd, "body."), checkpoint, what)
    names = published.label_names(names, obj.get("idx_to_class"), head.num_classes, checkpoint, what)
    return net.eval(), names, published.parts("mldecoder", name, checkpoint)
