"""Frozen, keyword-only configuration dataclasses, with TOML/dict round trips.

Every config validates itself on construction (``validate``), so a bad value fails where it is
given, with the field's name, instead of deep inside a training or attack loop.
"""

from __future__ import annotations

import dataclasses
import math
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
        return [f.name for f in fields(cls)]

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
        clean = {k: _coerce(v, types[k]) for k, v in data.items()}
        return cls(**clean)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def replace(self: C, **changes: Any) -> C:
        return self.from_dict({**self.to_dict(), **changes})


def _coerce(value: Any, annotation: Any) -> Any:
    # TOML and the CLI give ints where floats are meant (eps = 1); keep floats floats so that
    # configs compare and serialise the same whichever way they were written.
    ann = str(annotation)
    if isinstance(value, int) and not isinstance(value, bool) and ann.startswith("float"):
        return float(value)
    if isinstance(value, list) and ann.startswith("tuple"):
        return tuple(value)
    return value


def load_toml(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    if not p.is_file():
        raise UserError(f"{p}: TOML file not found")
    try:
        return tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"{p}: not valid TOML: {e}") from None


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
        from engine.models.backbones import BACKBONES

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
