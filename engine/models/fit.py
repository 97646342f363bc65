"""Training a timm or ASL model (`sml train --timm NAME` / `--asl NAME`) into the checkpoint its
model source reads (engine.models.zoo), with the ASL loss or binary cross-entropy.

The same epoch loop as ML-GCN / ML-LIW (engine.models.train.run_epoch: seeded batch order and flips,
gradient clipping, cosine or step learning rate), on the whole network from random weights (nothing
downloads, so there are no pretrained weights to start from). The checkpoint is written after
every epoch, atomically:

- ``timm``: ``{"state_dict", "label_names", "input_size", ...}``, the state dict of timm's model
  (its ``pretrained_cfg`` mean/std, put in front during training, is not part of it);
- ``asl``: the ASL authors' dict, ``{"model", "num_classes", "idx_to_class", "input_size", ...}``,
  the weights in timm's tresnet layout (converting them to the authors' InPlaceABN layout would
  lose BatchNorm scales below 1e-5, which training can reach).

Both also hold ``train``, ``loss``, ``dataset``, ``epoch``, ``history`` and ``optimizer``, so that
``resume`` continues the last epoch and refuses a checkpoint made with other settings.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from engine import data as datasets
from engine.config import LossConfig, TrainConfig
from engine.device import check_device
from engine.errors import UserError
from engine.models import checkpoints, train, zoo
from engine.models.conventions import Normalize

KINDS = ("timm", "asl")
LOG_EPS = 1e-8  # the authors' clamp before the logarithm


def asl_loss(cfg: LossConfig):
    """The asymmetric loss (Ridnik et al. 2021, Eq. 1-5), summed over labels and averaged over the
    batch (the authors sum over the batch as well: only the gradient's scale differs). As in their
    training script (``disable_torch_grad_focal_loss=True``) the focusing weights are constants of
    the backward pass."""

    def loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(logits)
        p_neg = (p - cfg.clip).clamp(min=0) if cfg.clip > 0 else p  # the probability margin
        with torch.no_grad():
            w = torch.where(y > 0, (1 - p) ** cfg.gamma_pos, p_neg**cfg.gamma_neg)
        ll = y * torch.log(p.clamp(min=LOG_EPS)) + (1 - y) * torch.log((1 - p_neg).clamp(min=LOG_EPS))
        return -(w * ll).sum() / logits.shape[0]

    return loss


def bce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.binary_cross_entropy_with_logits(logits, y, reduction="sum") / logits.shape[0]


def criterion(cfg: LossConfig):
    return asl_loss(cfg) if cfg.loss == "asl" else bce_loss


def _net(kind: str, arch: str, num_labels: int) -> tuple[nn.Module, nn.Module]:
    """(what trains: timm's normalisation in front for ``timm``, the timm network whose weights are saved)."""
    (zoo.check_timm_name if kind == "timm" else zoo.check_asl_name)(arch)
    net = zoo.create(arch, num_labels)
    cfg = net.pretrained_cfg
    if kind == "timm":
        return nn.Sequential(Normalize(tuple(cfg["mean"]), tuple(cfg["std"])), net), net
    return net, net


def _resume(out: Path, kind: str, want: dict[str, Any]) -> dict[str, Any]:
    ck = checkpoints.load_file(out, False)
    if not isinstance(ck, dict) or ck.get("kind") != kind:
        raise UserError(f"{out}: not a checkpoint of `sml train --{kind}`; use another --out to train afresh")
    for k, v in want.items():
        if ck.get(k) != v:
            raise UserError(f"{out}: existing checkpoint was trained with another {k} ({ck.get(k)!r}, now {v!r}); "
                            f"use another --out to train afresh")
    return ck


def fit(kind: str, arch: str, *, train_cfg: TrainConfig, loss_cfg: LossConfig, dataset: str, root: str | Path,
        out: str | Path, input_size: int, resume: bool = False, progress: bool = True, device: str = "cpu",
        allow_missing: bool = False, **load_kw) -> dict[str, Any]:
    """Train ``kind`` (timm | asl) ``arch`` on the data set's training split; returns a summary dict."""
    if kind not in KINDS:
        raise UserError(f"unknown model kind {kind!r}; valid: {', '.join(KINDS)}")
    if train_cfg.freeze_backbone:
        raise UserError("freeze_backbone: a timm or ASL model trains from random weights here; nothing to freeze")
    check_device(device)
    out = Path(out)
    meta = datasets.info(dataset)
    ds = datasets.load(dataset, root=root, split=meta.train_split, size=input_size, allow_missing=allow_missing,
                       **load_kw)
    ds_desc = {"name": dataset, "root": str(Path(root).expanduser().resolve()), "size": input_size,
               "split": meta.train_split, "num_samples": len(ds)}
    want = {"arch": arch, "input_size": input_size, "label_names": ds.label_names, "dataset": ds_desc,
            "loss": loss_cfg.to_dict(), "train": {k: v for k, v in train_cfg.to_dict().items() if k != "epochs"}}
    if out.exists() and not resume:
        raise UserError(f"{out}: checkpoint already exists; pass --resume to continue it or choose another --out")
    ck = _resume(out, kind, want) if out.exists() else None
    start, history = (int(ck["epoch"]), list(ck["history"])) if ck else (0, [])
    if start >= train_cfg.epochs:
        return {"out": str(out), "epochs": start, "ran": 0, "history": history}
    torch.manual_seed(train_cfg.seed)
    model, net = _net(kind, arch, ds.num_labels)
    if ck is not None:
        net.load_state_dict(ck["state_dict"] if kind == "timm" else ck["model"])
    model.to(device)
    opt = (torch.optim.SGD(model.parameters(), lr=train_cfg.lr, momentum=train_cfg.momentum,
                           weight_decay=train_cfg.weight_decay) if train_cfg.optimizer == "sgd" else
           torch.optim.Adam(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay))
    for g in opt.param_groups:
        g["lr_mult"] = 1.0
    if ck is not None:
        opt.load_state_dict(ck["optimizer"])
    loss = criterion(loss_cfg)
    preloaded = train.preload(ds, input_size)
    for epoch in range(start, train_cfg.epochs):
        model.train()
        for g in opt.param_groups:
            g["lr"] = train.lr_at(train_cfg, epoch)
        history.append(train.run_epoch(model, model, opt, loss, ds, preloaded, train_cfg, epoch, device=device,
                                       augment=train_cfg.augment, desc=f"{kind} {arch}", progress=progress))
        model.eval()
        sd = {k: v.cpu() for k, v in net.state_dict().items()}
        weights = {"state_dict": sd} if kind == "timm" else {
            "model": sd, "num_classes": ds.num_labels, "idx_to_class": dict(enumerate(ds.label_names))}
        checkpoints.save_atomic({**weights, **want, "kind": kind, "epoch": epoch + 1, "epochs": train_cfg.epochs,
                                 "history": history, "optimizer": opt.state_dict()}, out)
    return {"out": str(out), "epochs": train_cfg.epochs, "ran": train_cfg.epochs - start, "history": history}
