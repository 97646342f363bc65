"""Frozen, keyword-only configuration dataclasses, with TOML/dict round trips.

Every field declares what it accepts where it is defined (:func:`param`: bounds, choices, a help
text), and every config checks all of its fields from those declarations on construction, before
its own cross-field rules (``validate``): a bad value fails where it is given, as one
:class:`~engine.errors.UserError` whose ``key`` is the field, instead of deep inside a training or
attack loop. The Python API, the CLI (which also takes its flags, choices and defaults from these
declarations) and sweep files all check through here. This module imports no torch, so that
``sml --help`` can read it.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from engine.errors import UserError

C = TypeVar("C", bound="Config")
RULE = "rule"  # the field metadata key that holds its Rule


@dataclass(frozen=True)
class Rule:
    """What a field accepts beyond its type, and its help text: bounds (``ge`` >=, ``gt`` >, ``le``
    <=, ``lt`` <) for numbers, ``choices`` (a tuple, or a function giving one where the set is a
    registry that can grow), ``finite`` (floats: NaN is always refused, infinity unless False)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None
    finite: bool = True
    doc: str = ""

    def allowed(self) -> tuple[Any, ...] | None:
        c = self.choices
        return tuple(c() if callable(c) else c) if c is not None else None

    @property
    def bounded(self) -> bool:
        return any(b is not None for b in (self.ge, self.gt, self.le, self.lt))

    def holds(self, v: float) -> bool:
        return ((self.ge is None or v >= self.ge) and (self.gt is None or v > self.gt)
                and (self.le is None or v <= self.le) and (self.lt is None or v < self.lt))

    def expected(self, integer: bool = False) -> str:
        """The bounds in words: ``>= 0``, ``in 1..64`` (integers), ``in (0, 1)``, ``in [0, 0.5)``."""
        lo = ("[", self.ge) if self.ge is not None else ("(", self.gt) if self.gt is not None else None
        hi = ("]", self.le) if self.le is not None else (")", self.lt) if self.lt is not None else None
        if lo and hi:
            if integer and lo[0] == "[" and hi[0] == "]":
                return f"in {lo[1]}..{hi[1]}"
            return f"in {lo[0]}{lo[1]}, {hi[1]}{hi[0]}"
        if lo:
            return f"{'>=' if lo[0] == '[' else '>'} {lo[1]}"
        return f"{'<=' if hi[0] == ']' else '<'} {hi[1]}" if hi else "anything"

    def check(self, name: str, value: Any, t: type) -> None:
        """``value`` of field ``name`` (plain type ``t``, see :func:`toml_type`) is acceptable."""
        if not is_a(value, t):
            raise UserError(f"{name} must be {TYPE_NAMES[t]}, got {value!r}", key=name)
        if t is float and (math.isnan(value) or (self.finite and math.isinf(value))):
            # An infinite or NaN budget, step or constant never means "unbounded": it turns every
            # result into inf/NaN, so it is refused up front (fields that mean "no limit" by
            # infinity say finite=False).
            raise UserError(f"{name} must be a {'finite ' if self.finite else ''}number, got {value}", key=name)
        allowed = self.allowed()
        if allowed is not None and value not in allowed:
            raise UserError(f"unknown {name} {value!r}; valid: {', '.join(map(str, allowed))}", key=name)
        if t in (int, float) and not self.holds(value):
            raise UserError(f"{name} must be {self.expected(t is int)}, got {value}", key=name)


NO_RULE = Rule()


def param(default: Any = MISSING, *, ge: float | None = None, gt: float | None = None, le: float | None = None,
          lt: float | None = None, choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
          finite: bool = True, doc: str = "", **field_kw: Any) -> Any:
    """A config field with what it accepts (see :class:`Rule`), e.g.
    ``lr: float = param(0.01, gt=0, doc="Adam's step size")``. Other keywords go to
    ``dataclasses.field`` (``default_factory=dict``)."""
    rule = Rule(ge=ge, gt=gt, le=le, lt=lt, choices=choices, finite=finite, doc=doc)
    return field(default=default, metadata={RULE: rule}, **field_kw)


def _optional(annotation: Any) -> bool:
    """The annotation allows None (``X | None``), or anything (``Any``)."""
    return toml_type(annotation) is object or "None" in str(annotation).replace(" ", "").split("|")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base: every field checked from its declaration, dict/TOML conversion with unknown-key checking."""

    def __post_init__(self) -> None:
        self.check_fields()
        self.validate()

    def check_fields(self) -> None:
        """Each field on its own, from its declaration: type, finiteness, choices, bounds."""
        for f in fields(self):
            if not f.init:
                continue
            v = getattr(self, f.name)
            if v is None and _optional(f.type):
                continue
            f.metadata.get(RULE, NO_RULE).check(f.name, v, toml_type(f.type))

    def validate(self) -> None:  # overridden for rules between fields (their errors set ``key`` too)
        pass

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields a user sets (``init=False`` fields are derived by ``validate``)."""
        return [f.name for f in fields(cls) if f.init]

    @classmethod
    def schema(cls) -> dict[str, type]:
        """Field -> the plain type a TOML file or the CLI must give: int, float, str, bool, list,
        dict, or object (anything)."""
        return {f.name: toml_type(f.type) for f in fields(cls) if f.init}

    @classmethod
    def field_rules(cls) -> dict[str, Rule]:
        """Field -> its :class:`Rule` (an empty one where it declares nothing)."""
        return {f.name: f.metadata.get(RULE, NO_RULE) for f in fields(cls) if f.init}

    @classmethod
    def default_of(cls, name: str) -> Any:
        """The default value of field ``name`` (MISSING for a required field)."""
        f = next(f for f in fields(cls) if f.name == name)
        return f.default_factory() if f.default_factory is not MISSING else f.default

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
        """Build from a mapping; unknown keys are an error that lists the valid ones. ``where``
        (e.g. "attack pgd") prefixes the message of any error."""
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        at = f"{where}: " if where else ""
        if unknown:
            raise UserError(f"{at}unknown key{'s' if len(unknown) > 1 else ''} {', '.join(map(repr, unknown))}; "
                            f"valid: {', '.join(names)}", key=unknown[0])
        types = {f.name: f.type for f in fields(cls)}
        try:
            return cls(**{k: _coerce(v, types[k]) for k, v in data.items()})
        except UserError as e:
            if not where:
                raise
            raise UserError(f"{at}{e}", key=e.key) from None

    def to_dict(self) -> dict[str, Any]:
        names = self.field_names()
        return {k: v for k, v in dataclasses.asdict(self).items() if k in names}

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})


TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list",
              dict: "a table", object: "anything"}
_PLAIN = {"int": int, "float": float, "str": str, "bool": bool}


def toml_type(annotation: Any) -> type:
    """The plain type of a field's annotation (a string under ``from __future__ import annotations``);
    ``X | None`` counts as X: None is the default, never something a file can write."""
    parts = [p for p in str(annotation).replace(" ", "").split("|") if p != "None"]
    if len(parts) != 1:
        return object
    a = parts[0]
    if a in _PLAIN:
        return _PLAIN[a]
    if a.startswith(("dict", "Mapping")):
        return dict
    if a.startswith(("tuple", "list", "Sequence")):
        return list
    return object


def is_a(value: Any, t: type) -> bool:
    """``value`` is of plain type ``t`` (see :func:`toml_type`): bools are no numbers, ints are floats."""
    if t is object:
        return True
    if value is None:
        return False  # a field that may be None says so in its annotation (Config.check_fields)
    if t is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if t is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if t is list:
        return isinstance(value, (list, tuple))
    return isinstance(value, t)


def _coerce(value: Any, annotation: Any) -> Any:
    # TOML and the CLI give ints where floats are meant (eps = 1); keep floats floats so that
    # configs compare and serialise the same whichever way they were written.
    ann = str(annotation)
    if isinstance(value, int) and not isinstance(value, bool) and ann.startswith("float"):
        return float(value)
    if isinstance(value, list) and ann.startswith("tuple"):
        return tuple(value)
    return value


def read_toml(path: str | Path, what: str = "TOML file") -> tuple[dict[str, Any], str]:
    """(data, text) of a TOML file; a missing or malformed file is a one-line error. Every TOML
    file the engine reads (``--config`` files, sweep files) comes through here."""
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: {what} not found")
    text = p.read_text()
    try:
        return tomllib.loads(text), text
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: not valid TOML: {e}") from None


def load_toml(path: str | Path, tables: Sequence[str] | None = None) -> dict[str, Any]:
    """A TOML file's data; with ``tables``, any other top-level key is an error naming the valid ones.
    Each table then goes to its config's ``from_dict``."""
    data, _ = read_toml(path)
    unknown = sorted(set(data) - set(tables)) if tables is not None else []
    if unknown:
        raise UserError(f"{path}: unknown table(s) {unknown}; valid: {', '.join(f'[{t}]' for t in tables)}")
    return data


# ---------------------------------------------------------------- choices the CLI offers too
# Kept here, torch-free, so that `sml --help` lists them without loading the engine; the modules
# that act on them import them from here.
ORDERS = ("seeded", "first")  # the protocol's sample order (engine.protocol)
ROUNDINGS = ("ceil", "floor")  # expLabels rounding (engine.protocol)
# What a run feeds its model and how it reads the outputs (engine.protocol.Feed): the model's own
# input normalisation or raw [0, 1] pixels past it; a label shown at logit >= 0 or, as the study's
# code, at float32 sigmoid >= 0.5; the Gram matrix of ML-DP-like solvers in float32 or float64.
INPUTS = ("model", "raw")
SHOWN_RULES = ("logit", "sigmoid")
GRAM_DTYPES = ("float32", "float64")
COMPILE_MODES = ("auto", "on", "off")  # torch.compile per iteration; the first is the default (auto: on CUDA)
OUTPUTS = ("logits", "probabilities")  # what your own model returns (engine.models.sources)
# The annotation files each data set's loader reads (its SOURCES): VOC (engine.data.voc) and COCO
# (engine.data.coco); every other loader reads one format ("auto").
VOC_SOURCES = ("auto", "csv", "txt", "xml")
COCO_SOURCES = ("auto", "instances", "mlgcn")
ANNOTATIONS = tuple(dict.fromkeys(VOC_SOURCES + COCO_SOURCES))
VOC_DIFFICULT = ("positive", "negative")  # a class shown only by difficult objects: present or absent
# The backbones engine.models.backbones builds (it keys its builders by these names; kept here so
# that validating a config never imports the model code).
BACKBONES = ("tiny", "resnet18", "resnet50", "resnet101", "inception_v3")


@dataclass(frozen=True, kw_only=True)
class ProtocolConfig(Config):
    """The protocol's knobs of one attack run: a sweep file's [protocol] keys (each [[attack]] may
    override them) and `sml attack`'s flags. engine.runtime.runspec.RunSpec adds what is attacked."""

    # Upper bounds a real run never reaches: past them a typo (n = 1e9, batch_size = 10**6) would
    # allocate or loop for hours before failing, so it is refused in one line. n None: the preset's
    # protocol default (AttackSpec.default_samples; else, under ``released``, the code's count for the
    # (model, data set): engine.protocol.RELEASED_CELLS; else 1000).
    n: int | None = param(None, ge=1, le=10**7, doc="samples per run (default: the preset's protocol default)")
    seed: int = param(0, ge=0, le=2**63 - 1, doc="seed of the sample order and of random targets and starts")
    order: str | None = param(None, choices=ORDERS,
                              doc="sample order (default: the preset's; released: first, as the code)")
    rounding: str | None = param(None, choices=ROUNDINGS,
                                 doc="expLabels rounding (default: the preset's; released: floor)")
    chunk_size: int = param(100, ge=1, le=10**6,
                            doc="samples per shard = per stored chunk: the unit of resume and of scheduling")
    batch_size: int = param(0, ge=0, le=65536, doc="samples per batch; 0: automatic (never depends on the device)")
    early_exit: bool = param(False, doc="retire samples that reach the target y* (own semantics)")
    exit_every: int = param(4, ge=1, le=10**6, doc="with early exit: check every this many iterations")
    save_adv: bool = param(False, doc="also store x_adv - x (float16)")


@dataclass(frozen=True, kw_only=True)
class RunConfig(ProtocolConfig):
    """One attack run in plain values: what is attacked, and the protocol's knobs. RunSpec
    (engine.runtime.runspec) checks the names against the registries and resolves them."""

    attack: str = param(doc="a registered attack (an unknown name lists them)")
    preset: str = param("paper", doc="the attack's preset: paper (the study's text), released (its code), ...")
    target: str | None = param(None, doc="attack type: what y* is and what success means (default: the attack's "
                                         "own; an unknown name lists them)")
    target_label: Any = param(None, doc="label (index or name) for the targets that need one (reduction, "
                                        "augmentation); topk-targeted: its k labels, joined by commas")
    params: dict[str, Any] = param(default_factory=dict, doc="the attack's parameters on top of the preset")


@dataclass(frozen=True, kw_only=True)
class DemoDataConfig(Config):
    """The embedded demo data set (see engine.data.demo)."""

    n_train: int = param(4000, ge=1, doc="training images")
    n_test: int = param(1000, ge=1, doc="test images")
    # An image is drawn at size..2*size px per side: past 1024 (2048 px images) it is a typo, not a demo.
    size: int = param(32, ge=16, le=1024, doc="images are SIZE..2*SIZE px per side before the loader resizes them")
    labels: int = param(20, ge=4, le=80, doc="labels (shape x colour pairs; 80 exist)")
    seed: int = param(0, ge=0, doc="seed of the drawing")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """Architecture of a multi-label classifier (head family on a backbone)."""

    family: str = param("mlgcn", choices=("mlgcn", "mlliw"), doc="head family")
    backbone: str = param("tiny", choices=BACKBONES, doc="feature extractor")
    input_size: int = param(32, ge=16, doc="input size in px")
    backbone_weights: str | None = param(None, doc="local ImageNet state dict, or a checkpoint to take features.* "
                                                   "from (nothing downloads)")
    embedding: str | None = param(None, doc="ML-GCN label embeddings (.npy or a GloVe pickle, C x E); one-hot if none")
    # ML-GCN's correlation matrix: co-occurrence probabilities binarised at gcn_t and re-weighted by
    # gcn_p (Chen et al. 2019, Eq. 7-8): both are shares of a probability, strictly inside (0, 1).
    gcn_t: float = param(0.4, gt=0, lt=1, doc="ML-GCN correlation binarisation threshold")
    gcn_p: float = param(0.25, gt=0, lt=1, doc="ML-GCN re-weighting of the correlation matrix")
    gcn_hidden: int = param(1024, ge=1, doc="ML-GCN hidden width of the label graph convolutions")
    # Input normalisation inside the model: "family" = ImageNet mean/std for ML-GCN (its repo),
    # (x - 0.5) / 0.5 for ML-LIW (its reimplementation); or "imagenet" / "half" explicitly, e.g. to
    # match the normalisation a pretrained backbone was trained with.
    normalization: str = param("family", choices=("family", "imagenet", "half"),
                               doc="input normalisation (family: the family's own)")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Optimisation recipe. Defaults are the demo recipe; see engine.models.train for the study's."""

    epochs: int = param(12, ge=1, doc="epochs")
    batch_size: int = param(64, ge=1, doc="images per batch")
    lr: float = param(2e-3, gt=0, doc="learning rate")
    lr_schedule: str = param("cosine", choices=("cosine", "step", "constant"),
                             doc="learning rate schedule (cosine: down to 5%; step: x lr_gamma every lr_step epochs)")
    lr_step: int = param(30, ge=1, doc="epochs between steps of the step schedule")
    lr_gamma: float = param(0.9, gt=0, le=1, doc="factor of the step schedule (a decay: at most 1)")
    optimizer: str = param("adam", choices=("adam", "sgd"), doc="optimizer")
    momentum: float = param(0.9, ge=0, lt=1, doc="SGD momentum (a share of the last update: below 1)")
    weight_decay: float = param(1e-4, ge=0, doc="weight decay")
    backbone_lr_mult: float = param(1.0, ge=0, doc="backbone learning rate factor (ML-GCN repo: 0.1 with a "
                                                   "pretrained backbone)")
    # inf: no clipping (the ML-LIW recipes).
    grad_clip: float = param(10.0, gt=0, finite=False, doc="gradient norm clip (ML-GCN repo: 10; inf: none)")
    augment: bool = param(True, doc="horizontal flip (+ multi-scale crop at >= 224 px)")
    seed: int = param(0, ge=0, doc="seed of initialisation, augmentation and batch order")
    freeze_backbone: bool = param(False, doc="train the head on a frozen (eval-mode) pretrained backbone "
                                             "(the ML-LIW recipe)")


@dataclass(frozen=True, kw_only=True)
class LossConfig(Config):
    """Training loss of a timm or ASL model (`sml train --timm / --asl`; engine.models.fit). The ASL
    loss is Ridnik et al., "Asymmetric Loss For Multi-Label Classification" (ICCV 2021): focal terms
    (1 - p)^gamma_pos on positives and p_m^gamma_neg on negatives, with p_m = max(p - clip, 0);
    the defaults are their training script's (Alibaba-MIIL/ASL train.py: 4, 0, 0.05)."""

    loss: str = param("asl", choices=("asl", "bce"), doc="asl: asymmetric loss; bce: binary cross-entropy")
    gamma_neg: float = param(4.0, ge=0, le=20, doc="ASL focusing exponent on negative labels")
    gamma_pos: float = param(0.0, ge=0, le=20, doc="ASL focusing exponent on positive labels")
    clip: float = param(0.05, ge=0, lt=1, doc="ASL probability margin: a negative's p is shifted down by it")
PROFILE_PRECISIONS = ("fp32", "tf32", "bf16")  # engine.attacks.registry.PRECISIONS, named here torch-free


@dataclass(frozen=True, kw_only=True)
class ProfileConfig(Config):
    """`sml profile`: how each (attack, batch) row is measured (engine.profile)."""

    repeats: int = param(3, ge=1, le=1000, doc="timed calls per row after the warm-up call; the median counts")
    device: str = param("cpu", doc="cpu | cuda | cuda:N")
    precision: str = param("fp32", choices=PROFILE_PRECISIONS,
                           doc="arithmetic of the model's forward and backward (a spec's own precision= wins)")
    compile: bool = param(False, doc="registered attacks: each iteration one torch.compile graph; others: the "
                                     "model compiled (one phase in the breakdown)")
    memory: bool = param(True, doc="measure peak memory (on CPU: a fresh subprocess per row)")
    calibration_seconds: float = param(0.5, gt=0, le=600,
                                       doc="least seconds the model's forward and forward+backward are timed per row")
    tolerance: float = param(0.10, ge=0, le=100, doc="--compare: slower than OLD by more than this share fails")
