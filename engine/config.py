"""Frozen, keyword-only configuration dataclasses, with TOML/dict round trips.

Every config validates itself on construction (``validate``), so a bad value fails where it is
given, with the field's name, instead of deep inside a training or attack loop.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TypeVar

import tomllib

from engine.errors import UserError

C = TypeVar("C", bound="Config")


@dataclass(frozen=True, kw_only=True)
class Config:
    """Base: dict/TOML conversion with unknown-key checking."""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:  # overridden where there is something to check
        pass

    @classmethod
    def field_names(cls) -> list[str]:
        """The fields a user sets (``init=False`` fields are derived by ``validate``)."""
        return [f.name for f in fields(cls) if f.init]

    @classmethod
    def schema(cls) -> dict[str, type]:
        """Field -> the plain type a TOML file or the CLI must give: int, float, str, bool, list,
        dict, or object (anything). Sweep files and ``from_dict`` check values against it."""
        return {f.name: toml_type(f.type) for f in fields(cls) if f.init}

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any], *, where: str = "") -> C:
        """Build from a mapping; unknown keys are an error that lists the valid ones."""
        names = cls.field_names()
        unknown = sorted(set(data) - set(names))
        if unknown:
            at = f" in {where}" if where else ""
            raise UserError(
                f"unknown parameter(s) {', '.join(unknown)}{at} for {cls.__name__}; "
                f"valid: {', '.join(names)}"
            )
        types = {f.name: f.type for f in fields(cls)}
        schema = cls.schema()
        at = f"{where}: " if where else ""
        for k, v in data.items():
            if not is_a(v, schema[k]):
                raise UserError(f"{at}{k} must be {TYPE_NAMES[schema[k]]}, got {v!r}")
        clean = {k: _coerce(v, types[k]) for k, v in data.items()}
        return cls(**clean)

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
    if t is object or value is None:
        return True  # None: "not given" where a caller passes a field's default through
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


def check_positive(name: str, value: float, *, allow_zero: bool = False, allow_inf: bool = False) -> None:
    ok = value >= 0 if allow_zero else value > 0
    if isinstance(value, float) and math.isnan(value):
        ok = False
    if not allow_inf and isinstance(value, float) and math.isinf(value):
        ok = False
    if not ok:
        bound = ">= 0" if allow_zero else "> 0"
        raise UserError(f"{name} must be {bound}, got {value}")


@dataclass(frozen=True, kw_only=True)
class DemoDataConfig(Config):
    """The embedded demo data set (see engine.data.demo)."""

    n_train: int = 4000
    n_test: int = 1000
    size: int = 32  # images are size..2*size px per side before the loader resizes them
    labels: int = 20
    seed: int = 0

    def validate(self) -> None:
        if self.n_train < 1 or self.n_test < 1:
            raise UserError(f"n_train and n_test must be >= 1, got {self.n_train}, {self.n_test}")
        if self.size < 16:
            raise UserError(f"size must be >= 16 px, got {self.size}")
        if not 4 <= self.labels <= 80:
            raise UserError(f"labels must be in 4..80, got {self.labels}")


# The backbones engine.models.backbones builds (it keys its builders by these names; kept here so
# that validating a config never imports the model code).
BACKBONES = ("tiny", "resnet18", "resnet50", "resnet101", "inception_v3")


@dataclass(frozen=True, kw_only=True)
class ModelConfig(Config):
    """Architecture of a multi-label classifier (head family on a backbone)."""

    family: str = "mlgcn"  # mlgcn | mlliw
    backbone: str = "tiny"  # tiny | resnet18 | resnet50 | resnet101 | inception_v3
    input_size: int = 32
    backbone_weights: str | None = None  # local ImageNet state dict (nothing downloads)
    embedding: str | None = None  # ML-GCN label embeddings (.pkl/.npy, C x D); one-hot if None
    gcn_t: float = 0.4  # ML-GCN correlation binarisation threshold
    gcn_p: float = 0.25  # ML-GCN re-weighting
    gcn_hidden: int = 1024
    # Input normalisation inside the model: "family" = ImageNet mean/std for ML-GCN (its repo),
    # (x - 0.5) / 0.5 for ML-LIW (its reimplementation); or "imagenet" / "half" explicitly, e.g. to
    # match the normalisation a pretrained backbone was trained with.
    normalization: str = "family"

    def validate(self) -> None:
        if self.family not in ("mlgcn", "mlliw"):
            raise UserError(f"unknown model family {self.family!r}; valid: mlgcn, mlliw")
        if self.backbone not in BACKBONES:
            raise UserError(f"unknown backbone {self.backbone!r}; valid: {', '.join(BACKBONES)}")
        if self.input_size < 16:
            raise UserError(f"input_size must be >= 16 px, got {self.input_size}")
        if self.normalization not in ("family", "imagenet", "half"):
            raise UserError(f"unknown normalization {self.normalization!r}; valid: family, imagenet, half")
        if not 0 < self.gcn_t < 1 or not 0 < self.gcn_p < 1:
            raise UserError(f"gcn_t and gcn_p must be in (0,1), got {self.gcn_t}, {self.gcn_p}")


@dataclass(frozen=True, kw_only=True)
class TrainConfig(Config):
    """Optimisation recipe. Defaults are the demo recipe; see engine.models.train for the study's."""

    epochs: int = 12
    batch_size: int = 64
    lr: float = 2e-3
    lr_schedule: str = "cosine"  # cosine (to 5%) | step (x lr_gamma every lr_step epochs) | constant
    lr_step: int = 30
    lr_gamma: float = 0.9
    optimizer: str = "adam"  # adam | sgd
    momentum: float = 0.9
    weight_decay: float = 1e-4
    backbone_lr_mult: float = 1.0  # ML-GCN repo: 0.1 with a pretrained backbone
    grad_clip: float = 10.0  # ML-GCN repo clips the gradient norm at 10
    augment: bool = True  # horizontal flip (+ multi-scale crop at >= 224 px)
    seed: int = 0
    freeze_backbone: bool = False  # ML-LIW recipe: frozen (eval-mode) pretrained backbone, train the head

    def validate(self) -> None:
        if self.epochs < 1:
            raise UserError(f"epochs must be >= 1, got {self.epochs}")
        if self.batch_size < 1:
            raise UserError(f"batch_size must be >= 1, got {self.batch_size}")
        check_positive("lr", self.lr)
        check_positive("weight_decay", self.weight_decay, allow_zero=True)
        check_positive("grad_clip", self.grad_clip, allow_inf=True)
        if self.lr_schedule not in ("cosine", "step", "constant"):
            raise UserError(f"unknown lr_schedule {self.lr_schedule!r}; valid: cosine, step, constant")
        if self.lr_step < 1:
            raise UserError(f"lr_step must be >= 1, got {self.lr_step}")
        if self.optimizer not in ("adam", "sgd"):
            raise UserError(f"unknown optimizer {self.optimizer!r}; valid: adam, sgd")
