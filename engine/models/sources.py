"""Where a model comes from: one of our checkpoints (ML-GCN, ML-LIW), or your own model.

Your own model is one of

- a Python factory, ``factory = "my_pkg.models:build"``: ``build()`` -- or ``build(checkpoint)``
  when a checkpoint (its weights file, in any format the factory reads) is given -- returns either
  an ``nn.Module`` or a tuple ``(module, label_names)``;
- a TorchScript file, ``torchscript = "model.pt"`` (``torch.jit.save``);
- a torchvision classifier, ``torchvision = "resnet18"`` (any name ``torchvision.models.get_model``
  knows), built with ``num_classes`` = the number of labels, its weights from ``checkpoint``: a
  state dict, or ``{"state_dict": ..., "label_names": [...]}``. It was trained on ImageNet-normalised
  images, as torchvision's own weights are: that normalisation is put in front of it;
- a timm classifier, ``timm = "resnet10t"``, or one of ASL's TResNets, ``asl = "tresnet_l"``, with
  their checkpoints as saved: engine.models.zoo.
- a published multi-label model read from its authors' checkpoint as saved, with their input
  normalisation in front: ``mldecoder = "tresnet_l"`` (ML-Decoder, engine.models.mldecoder),
  ``q2l = "resnet101"`` (Query2Label, engine.models.q2l).

Contract: the module maps float32 images in [0, 1], shaped (B, 3, H, W), to one score per label,
(B, L) -- logits (label shown iff logit >= 0), or probabilities with ``output = "probabilities"``
(converted to logits: log(p / (1 - p)), p clamped to [1e-6, 1 - 1e-6]). Normalisation is the
model's own business; it must build on the CPU (the engine moves it to the device).
Label names: ``label_names`` (a list, or a file with one name per line), else the factory's tuple,
else the module's ``label_names`` attribute. Input size (images are warped to it): ``input_size``,
else the module's ``input_size`` attribute, else the data set's default.
Each model is checked once when it loads: one forward of a blank image must give L scores.

The model's digest (its identity in the store, in place of a checkpoint's file digest) covers
what its results depend on: the factory spec and the bytes of the factory's module file (not of
what that module imports), the TorchScript file or the torchvision name, the weights file, the
label names, the output kind and the input size.
"""

from __future__ import annotations

import hashlib
import importlib
import json
import logging
import re
import socket
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import data as datasets
from engine.config import OUTPUTS
from engine.data.base import ImageListDataset
from engine.errors import UserError
from engine.models import checkpoints, from_checkpoint, mldecoder, published, q2l, zoo
from engine.models.conventions import IMAGENET_MEAN, IMAGENET_STD, Normalize
from engine.util import file_digest

log = logging.getLogger(__name__)

# Published models read from their authors' checkpoints: kind -> module (BACKBONES, load(...)).
PUBLISHED = {"mldecoder": mldecoder, "q2l": q2l}
OWN = ("factory", "torchscript", "torchvision", "timm", "asl", *PUBLISHED)  # the kinds of own model
WEIGHTS = ("torchvision", "timm", "asl", *PUBLISHED)  # an architecture by name: its weights from the checkpoint
NAMED = {"timm": zoo.check_timm_name, "asl": zoo.check_asl_name}  # names checked before any file is read
KEYS = (*OWN, "label_names", "output", "input_size")  # what a source dict may hold
PROB_EPS = 1e-6
FACTORY = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def own_kind(source: dict | None) -> str | None:
    """factory | torchscript | torchvision, or None for one of our checkpoints."""
    return next((k for k in OWN if (source or {}).get(k)), None)


def describe(checkpoint: str | Path | None, source: dict | None) -> str:
    """The model in a few words, for messages and the store (a checkpoint: its path)."""
    kind = own_kind(source)
    if kind is None:
        return str(checkpoint)
    what = f"{kind} {source[kind]}"
    return what + (f" ({checkpoint})" if checkpoint else "")


def default_key(checkpoint: str | Path | None, source: dict | None) -> str:
    """The model group's name when none is given: the file stem, or the factory spec with dots."""
    kind = own_kind(source)
    if kind == "factory":
        return source["factory"].replace(":", ".")
    if kind == "torchscript":
        return Path(source["torchscript"]).stem
    return Path(checkpoint).stem if checkpoint else "model"


def check(checkpoint: str | Path | None, source: dict | None) -> None:
    """The combination of keys is valid (no file is read): one kind of model, what it needs."""
    source = source or {}
    unknown = sorted(set(source) - set(KEYS))
    if unknown:
        raise UserError(f"unknown model key(s) {', '.join(unknown)}; valid: checkpoint, {', '.join(KEYS)}")
    kinds = [k for k in OWN if source.get(k)]
    if len(kinds) > 1:
        raise UserError(f"give one of {', '.join(OWN)}, not {' and '.join(kinds)}")
    kind = kinds[0] if kinds else None
    if kind is None and not checkpoint:
        raise UserError("no model: give a checkpoint, or your own model as factory (module:function), "
                        "torchscript (a file) or torchvision (an architecture, with its checkpoint)")
    if kind in WEIGHTS and not checkpoint:
        need = "its fine-tuned state dict" if kind == "torchvision" else "the authors' weights file, as saved"
        raise UserError(f"{kind} {source[kind]!r} needs a checkpoint: {need}")
    if kind in PUBLISHED:  # the name is checked before any file is read (a sweep file, as it is read)
        published.pick(kind, str(source[kind]), tuple(PUBLISHED[kind].BACKBONES))
    if kind in NAMED:
        NAMED[kind](str(source[kind]))
    if kind == "torchscript" and checkpoint:
        raise UserError("a torchscript file holds its own weights: give no checkpoint with it")
    if kind == "factory" and not FACTORY.match(str(source["factory"])):
        raise UserError(f"factory {source['factory']!r} must be 'module:function', e.g. 'my_pkg.models:build'")
    out = source.get("output", "logits")
    if out not in OUTPUTS:
        raise UserError(f"output {out!r}: valid: {', '.join(OUTPUTS)}")
    size = source.get("input_size")
    if size is not None and (not isinstance(size, int) or isinstance(size, bool) or size < 1):
        raise UserError(f"input_size must be a positive integer, got {size!r}")
    if kind is None and (out != "logits" or size is not None):
        raise UserError(f"output and input_size are for your own models ({', '.join(OWN)}); "
                        "a checkpoint of ours gives logits at its own input size")
    names = source.get("label_names")
    if names is not None and not isinstance(names, str) and \
            not (isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names)):
        raise UserError(f"label_names must be a file (one name per line) or a list of names, got {names!r}")


def read_label_names(value: str | Path | list | tuple | None) -> list[str] | None:
    """Label names from a list, or from a file with one per line (blank lines skipped)."""
    if value is None:
        return None
    if isinstance(value, (list, tuple)):
        names = [str(n) for n in value]
        where = "label_names"
    else:
        try:
            names = [ln.strip() for ln in Path(value).read_text().splitlines() if ln.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"{value}: cannot read the label names file ({type(e).__name__})") from None
        where = str(value)
    dup = sorted({n for n in names if names.count(n) > 1})
    if not names or dup:
        raise UserError(f"{where}: {'no label names' if not names else f'label names repeated: {dup}'}")
    return names


def import_factory(spec: str):
    """The factory function named 'module:function'. A module that does not import here is a
    one-line error naming the module and the host (sweeps import it in the driver and in every
    actor, so a Ray node that lacks it says so)."""
    module, attr = spec.split(":")
    try:
        mod = importlib.import_module(module)
    except Exception as e:  # noqa: BLE001 - whatever the module raises, the user must fix the module
        msg = str(e).splitlines()[0] if str(e) else ""
        raise UserError(f"factory {spec}: module {module!r} does not import on {socket.gethostname()} "
                        f"({type(e).__name__}: {msg}); install it, or put its folder on PYTHONPATH, here and on "
                        f"every Ray node") from None
    fn = getattr(mod, attr, None)
    if not callable(fn):
        raise UserError(f"factory {spec}: module {module!r} ({getattr(mod, '__file__', '?')}) has no function "
                        f"{attr!r}")
    return fn


class OwnModel(nn.Module):
    """Your model as the attacks see it: logits out, label names and input size attached."""

    def __init__(self, net: nn.Module, label_names: list[str], input_size: int | None, output: str,
                 normalize: bool = False):
        super().__init__()
        self.net = nn.Sequential(Normalize(IMAGENET_MEAN, IMAGENET_STD), net) if normalize else net
        self.probabilities = output == "probabilities"
        self.label_names = label_names
        self.input_size = input_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        return torch.logit(out, eps=PROB_EPS) if self.probabilities else out


@dataclass
class Loaded:
    """A model ready to scan and attack, with what the store records about it."""

    built: nn.Module | None  # None: one of our checkpoints, built from ``ck`` on first use
    label_names: list[str]
    family: str  # mlgcn | mlliw for ours; factory | torchscript | the torchvision architecture
    backbone: str
    input_size: int | None
    digest: str
    what: str  # describe()
    key: str  # default_key()
    ck: dict | None = None  # our checkpoint, read
    source: dict = field(default_factory=dict)

    @property
    def model(self) -> nn.Module:
        # Our checkpoints are built only when needed, after the data set has been checked: a bad
        # data root or annotation choice is reported before an architecture mismatch, as always.
        if self.built is None:
            self.built = from_checkpoint(self.ck)
        return self.built

    def dataset_for(self, dataset: str | None, root: str | Path | None, split: str | None, *,
                    allow_missing: bool = False, **load_kw) -> ImageListDataset:
        """The split to scan, its label columns in the model's order."""
        if self.ck is not None:
            return checkpoint_dataset(self.ck, dataset, root, split, self.what, allow_missing=allow_missing,
                                      **load_kw)
        if dataset is None or root is None:
            raise UserError(f"{self.what}: your own model records no data set: name one (dataset and root; "
                            f"--dataset and --root)")
        ds = datasets.load(dataset, root=root, split=split, size=self.input_size, allow_missing=allow_missing,
                           model_labels=self.label_names, **load_kw)
        return ds.with_label_order(self.label_names)

    def check_outputs(self, logits: torch.Tensor) -> None:
        """Warn when outputs declared as logits look like probabilities: every clean output in
        [0, 1] shows every label whose probability is not exactly 0 (before any attack runs)."""
        if self.ck is None and self.source.get("output") != "probabilities" and logits.numel() and \
                bool(((logits >= 0) & (logits <= 1)).all()):
            log.warning("%s: every clean output lies in [0, 1]: are they probabilities? They are read as logits "
                        "(a label is shown iff its output >= 0); declare output = \"probabilities\" "
                        "(--output probabilities) if they are", self.what)

    def attrs(self) -> dict[str, Any]:
        """What the store's model group records about your own model (nothing extra for ours)."""
        return {} if self.ck is not None else {"model_source": dict(self.source), "input_size": self.input_size}


def checkpoint_dataset(ck: dict[str, Any], dataset: str | None, root: str | Path | None, split: str | None,
                       path: str | Path, *, allow_missing: bool = False, **load_kw) -> ImageListDataset:
    """The split to score one of our checkpoints on, its labels mapped onto the checkpoint's by name."""
    name = dataset or (ck.get("dataset") or {}).get("name")
    root = root or (ck.get("dataset") or {}).get("root")
    if name is None or root is None:
        raise UserError(f"{path}: this checkpoint records no training data set (e.g. an ML-GCN release "
                        f"checkpoint): pass --dataset and --root")
    ds = datasets.load(name, root=root, split=split, size=ck["model"]["input_size"], allow_missing=allow_missing,
                       model_labels=ck["label_names"], **load_kw)
    if len(ds.label_names) != len(ck["label_names"]):
        raise UserError(
            f"{path}: checkpoint has {len(ck['label_names'])} labels but data set {name!r} at {root} has "
            f"{len(ds.label_names)}"
        )
    return ds.with_label_order(ck["label_names"])


def load(checkpoint: str | Path | None, source: dict | None = None, *, embedding: str | Path | None = None,
         label_names: list[str] | None = None, trust_pickle: bool = False) -> Loaded:
    """Load a model on the CPU, checked; ``label_names`` (e.g. --label-names) stands in for the
    source's. ``embedding`` and ``trust_pickle`` are for our checkpoints (engine.models.checkpoints)."""
    source = {k: v for k, v in (source or {}).items() if v is not None}
    check(checkpoint, source)
    names = label_names if label_names is not None else read_label_names(source.get("label_names"))
    kind = own_kind(source)
    what, key = describe(checkpoint, source), default_key(checkpoint, source)
    if kind is None:
        ck = checkpoints.read(checkpoint, embedding, names, trust_pickle=trust_pickle)
        m = ck["model"]
        return Loaded(None, list(ck["label_names"]), m["family"], m["backbone"], m["input_size"],
                      file_digest(checkpoint), what, key, ck=ck, source=source)
    if checkpoint and not Path(checkpoint).is_file():
        raise UserError(f"{checkpoint}: checkpoint not found")
    size = source.get("input_size")
    if kind == "factory":
        net, names, parts = _factory(source["factory"], checkpoint, names)
        backbone = source["factory"]
    elif kind == "torchscript":
        net, names, parts = _torchscript(source["torchscript"], names)
        backbone = Path(source["torchscript"]).name
    elif kind in PUBLISHED:
        net, names, parts = PUBLISHED[kind].load(source[kind], checkpoint, names, trust_pickle=trust_pickle)
        backbone = source[kind]
    elif kind == "torchvision":
        net, names, parts = _torchvision(source["torchvision"], checkpoint, names)
        backbone = source["torchvision"]
    else:
        net, names, parts = (zoo.timm_net if kind == "timm" else zoo.asl_net)(source[kind], checkpoint, names,
                                                                           trust_pickle)
        backbone = source[kind]
    if names is None:
        raise UserError(f"{what}: no label names: give label_names (a file or a list; --label-names)"
                        + (", return (module, label_names) or set module.label_names" if kind == "factory" else ""))
    size = size or getattr(net, "input_size", None)
    if size is not None and (not isinstance(size, int) or size < 1):
        raise UserError(f"{what}: the module's input_size must be a positive integer, got {size!r}")
    model = OwnModel(net, list(names), size, source.get("output", "logits"), normalize=kind == "torchvision")
    model.eval()
    _check_forward(model, what)
    ident = {**parts, "label_names": model.label_names, "output": source.get("output", "logits"), "input_size": size}
    digest = hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]
    family = source["torchvision"] if kind == "torchvision" else kind  # timm | asl: the backbone names the net
    return Loaded(model, model.label_names, family, backbone, size, digest, what, key, source=source)


def _factory(spec: str, checkpoint, names):
    fn = import_factory(spec)
    try:
        out = fn(str(checkpoint)) if checkpoint else fn()
    except UserError:
        raise
    except Exception as e:  # noqa: BLE001 - the user's code: one line naming it, not our traceback
        raise UserError(f"factory {spec} raised {type(e).__name__}: {(str(e).splitlines() or [''])[0]}") from None
    if isinstance(out, tuple) and len(out) == 2:
        net, given = out
        if not isinstance(given, (list, tuple)) or not all(isinstance(n, str) for n in given):
            raise UserError(f"factory {spec} returned label names {given!r:.80}; expected a list of strings")
        names = names if names is not None else read_label_names(list(given))
    else:
        net = out
    if not isinstance(net, nn.Module):
        raise UserError(f"factory {spec} returned {type(net).__name__}, not an nn.Module (or (module, label_names))")
    if names is None and getattr(net, "label_names", None) is not None:
        names = read_label_names(list(net.label_names))
    module = importlib.import_module(spec.split(":")[0])
    source_file = getattr(module, "__file__", None)
    parts = {"factory": spec, "module_digest": file_digest(source_file) if source_file else None,
             "weights": file_digest(checkpoint) if checkpoint else None}
    return net, names, parts


def _torchscript(path, names):
    if not Path(path).is_file():
        raise UserError(f"{path}: torchscript file not found")
    try:
        net = torch.jit.load(str(path), map_location="cpu")
    except Exception as e:  # noqa: BLE001 - torch's errors for a bad file are long; one line is enough
        raise UserError(f"{path}: not a TorchScript file ({type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]})") from None
    if names is None and hasattr(net, "label_names"):
        names = read_label_names(list(net.label_names))
    return net, names, {"torchscript": file_digest(path)}


def _torchvision(arch: str, checkpoint, names):
    import torchvision  # heavy; only this kind of model needs it

    try:
        obj = torch.load(str(checkpoint), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a file torch cannot read safely: one line
        raise UserError(f"{checkpoint}: not a state dict torch can load safely ({type(e).__name__})") from None
    sd = obj.get("state_dict", obj) if isinstance(obj, dict) else None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise UserError(f"{checkpoint}: expected a state dict, or a dict with 'state_dict' (and 'label_names')")
    if names is None and isinstance(obj.get("label_names"), (list, tuple)):
        names = read_label_names(list(obj["label_names"]))
    if names is None:
        raise UserError(f"{checkpoint}: no label names: give label_names (--label-names), or save "
                        f"{{'state_dict': ..., 'label_names': [...]}}")
    try:
        net = torchvision.models.get_model(arch, weights=None, num_classes=len(names))
    except ValueError as e:
        raise UserError(f"torchvision {arch!r}: {e}") from None
    try:
        net.load_state_dict(sd)
    except RuntimeError as e:
        raise UserError(f"{checkpoint}: does not fit torchvision {arch} with {len(names)} labels: "
                        f"{str(e).splitlines()[0]} ...") from None
    return net, names, {"torchvision": arch, "weights": file_digest(checkpoint)}


@torch.no_grad()
def _check_forward(model: OwnModel, what: str) -> None:
    """One blank image through the model: it must give one score per label name."""
    s = model.input_size or 224
    try:
        out = model(torch.zeros(1, 3, s, s))
    except Exception as e:  # noqa: BLE001 - the user's model: one line naming it
        raise UserError(f"{what}: a forward pass of a 1 x 3 x {s} x {s} image in [0, 1] failed: {type(e).__name__}: "
                        f"{(str(e).splitlines() or [''])[0][:200]}") from None
    if not isinstance(out, torch.Tensor) or tuple(out.shape) != (1, len(model.label_names)):
        got = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise UserError(f"{what}: gives {got} for one image, but has {len(model.label_names)} label names: "
                        f"expected (1, {len(model.label_names)}), one score per label")
