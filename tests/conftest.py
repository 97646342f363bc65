"""Shared fixtures: a small demo data set and a briefly trained tiny ML-GCN / ML-LIW."""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "2")

import pytest  # noqa: E402
import torch  # noqa: E402

from engine.config import DemoDataConfig, ModelConfig, TrainConfig  # noqa: E402
from engine.data import demo  # noqa: E402

SMALL = DemoDataConfig(n_train=1200, n_test=120, size=20, labels=8, seed=3)
SIZE = 20  # model input size for the small demo set


@pytest.fixture(scope="session")
def demo_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "data"
    demo.generate(root, SMALL)
    return root


@pytest.fixture(scope="session")
def trained(tmp_path_factory, demo_root):
    """{family: checkpoint path} for tiny models trained a few epochs on the small demo set."""
    from engine.models.train import recipe, train

    out = tmp_path_factory.mktemp("ckpt")
    paths = {}
    train(model_cfg=ModelConfig(family="mlgcn", input_size=SIZE),
          train_cfg=TrainConfig(epochs=10, lr=3e-3, batch_size=32),
          dataset="demo", root=demo_root, out=out / "mlgcn.pt", progress=False)
    paths["mlgcn"] = out / "mlgcn.pt"
    train(model_cfg=ModelConfig(family="mlliw", input_size=SIZE, backbone_weights=str(paths["mlgcn"]),
                                normalization="imagenet"),
          train_cfg=recipe("mlliw", "demo", epochs=30), dataset="demo", root=demo_root, out=out / "mlliw.pt",
          progress=False)
    paths["mlliw"] = out / "mlliw.pt"
    return paths


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
