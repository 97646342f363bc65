"""Make tests/data/published_heads.pt: the authors' ML-Decoder and Query2Label heads, run once.

    python tests/fixtures_src/make_heads_fixture.py ML_DECODER_DIR QUERY2LABELS_DIR [OUT]

ML_DECODER_DIR: a checkout of github.com/Alibaba-MIIL/ML_Decoder (the file used:
src_files/ml_decoder/ml_decoder.py); QUERY2LABELS_DIR: one of github.com/SlongLiu/query2labels
(lib/models/query2label.py, transformer.py, position_encoding.py). Their files are imported as
they are; what they import but the heads do not use (Q2L's backbones, which need timm / yacs /
inplace_abn) is stubbed. Each head is built with reduced widths, random weights (seed 0, every
parameter drawn from N(0, 0.3) so that no LayerNorm or bias is trivial), and run in eval mode on
fixed random features; the fixture keeps the configuration, the state dict as their code names
it, the features and the logits. tests/test_published_models.py loads the state dicts into
engine.models.mldecoder / engine.models.q2l and compares the logits.

One change is needed to run ML-Decoder's head under torch >= 2.0: nn.TransformerDecoder.forward
now reads ``layers[0].self_attn`` (absent from their TransformerDecoderLayerOptimal) and passes
``tgt_is_causal``; their decoder is run with torch 1.x's TransformerDecoder.forward instead (each
layer in turn, then the optional norm), which is what their code ran under.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from pathlib import Path

import torch

SEED = 0


def _module(name: str, path: Path) -> types.ModuleType:
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[name] = mod
    spec.loader.exec_module(mod)
    return mod


def _randomize(net: torch.nn.Module) -> None:
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(0, 0.3)


def _torch1_decoder_forward(decoder):
    def forward(tgt, memory, tgt_mask=None, memory_mask=None, tgt_key_padding_mask=None,
                memory_key_padding_mask=None):
        out = tgt
        for mod in decoder.layers:
            out = mod(out, memory, tgt_mask=tgt_mask, memory_mask=memory_mask,
                      tgt_key_padding_mask=tgt_key_padding_mask, memory_key_padding_mask=memory_key_padding_mask)
        return decoder.norm(out) if decoder.norm is not None else out
    return forward


def mldecoder_case(root: Path) -> dict:
    mod = _module("ml_decoder_authors", root / "src_files" / "ml_decoder" / "ml_decoder.py")
    cfg = {"num_classes": 10, "num_of_groups": 4, "decoder_embedding": 16, "initial_num_features": 24}
    torch.manual_seed(SEED)
    head = mod.MLDecoder(num_classes=cfg["num_classes"], num_of_groups=cfg["num_of_groups"],
                         decoder_embedding=cfg["decoder_embedding"],
                         initial_num_features=cfg["initial_num_features"], zsl=0)
    _randomize(head)
    head.eval()
    head.decoder.forward = _torch1_decoder_forward(head.decoder)
    x = torch.randn(2, cfg["initial_num_features"], 3, 3)
    with torch.no_grad():
        y = head(x)
    return {"config": cfg, "state_dict": head.state_dict(), "input": x, "output": y}


def q2l_case(root: Path) -> dict:
    lib = root / "lib"
    # query2label.py imports these for build_q2l / load_backbone only: stand-ins.
    for name in ("models", "utils"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["models.backbone"] = types.SimpleNamespace(build_backbone=None)
    sys.modules["utils.misc"] = types.SimpleNamespace(clean_state_dict=None)
    transformer = _module("models.transformer", lib / "models" / "transformer.py")
    position = _module("q2l_position_encoding", lib / "models" / "position_encoding.py")
    q2l = _module("q2l_authors", lib / "models" / "query2label.py")
    cfg = {"num_class": 6, "hidden_dim": 32, "nheads": 4, "enc_layers": 1, "dec_layers": 2,
           "dim_feedforward": 64, "channels": 40, "feature_hw": 2}

    class Joined(torch.nn.Sequential):
        """Their backbone.Joiner's contract ([features], [positions]) on given features; index 1 is
        their PositionEmbeddingSine, so its buffer is named backbone.1.pe as in their checkpoints."""

        def __init__(self):
            hw = cfg["feature_hw"]
            super().__init__(torch.nn.Identity(), position.PositionEmbeddingSine(cfg["hidden_dim"] // 2,
                                                                                 normalize=True, maxH=hw, maxW=hw))
            self.num_channels = cfg["channels"]

        def forward(self, x):
            return [x], [self[1](x).to(x.dtype)]

    torch.manual_seed(SEED)
    # keep the first decoder layer's self-attention (--keep_first_self_attn_dec), drop the second's
    # (the default): both kinds of layer are compared.
    tr = transformer.Transformer(d_model=cfg["hidden_dim"], nhead=cfg["nheads"], num_encoder_layers=cfg["enc_layers"],
                                 num_decoder_layers=cfg["dec_layers"], dim_feedforward=cfg["dim_feedforward"],
                                 dropout=0.1, normalize_before=False, return_intermediate_dec=False,
                                 rm_self_attn_dec=True, rm_first_self_attn=False)
    model = q2l.Qeruy2Label(backbone=Joined(), transfomer=tr, num_class=cfg["num_class"])  # (sic)
    _randomize(model)
    model.eval()
    x = torch.randn(2, cfg["channels"], cfg["feature_hw"], cfg["feature_hw"])
    with torch.no_grad():
        y = model(x)
    return {"config": cfg, "state_dict": model.state_dict(), "input": x, "output": y}


def main(argv: list[str]) -> None:
    if len(argv) not in (2, 3):
        raise SystemExit(__doc__.split("\n\n")[1])
    out = Path(argv[2]) if len(argv) == 3 else Path(__file__).resolve().parents[1] / "data" / "published_heads.pt"
    fixture = {"mldecoder": mldecoder_case(Path(argv[0])), "q2l": q2l_case(Path(argv[1]))}
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(fixture, out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main(sys.argv[1:])
