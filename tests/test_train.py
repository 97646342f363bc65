import pytest
import torch

from engine import data, models
from engine.config import ModelConfig, TrainConfig
from engine.errors import UserError
from engine.models import checkpoints
from engine.models.train import loss_fn, train


def _train_loss(path, root):
    m = models.load(path)
    x, y = data.stack(data.load("demo", root=root, split="train", size=20))
    with torch.no_grad():
        return loss_fn(m.family)(m(x), y).item()


def test_one_epoch_lowers_the_loss(tmp_path, demo_root):
    cfg = ModelConfig(family="mlgcn", input_size=20)
    tc = TrainConfig(epochs=2, lr=3e-3)
    out = tmp_path / "m.pt"
    # Loss of the untrained model (epoch 0) vs after one epoch, on the whole training split.
    torch.manual_seed(tc.seed)
    ds = data.load("demo", root=demo_root, split="train", size=20)
    from engine.models.mlgcn import correlation_matrix

    m0 = models.build(cfg, ds.num_labels, correlation=correlation_matrix(ds.labels)).eval()
    x, y = data.stack(ds)
    with torch.no_grad():
        before = loss_fn("mlgcn")(m0(x), y).item()
    train(model_cfg=cfg, train_cfg=tc.replace(epochs=1), dataset="demo", root=demo_root, out=out, progress=False)
    assert _train_loss(out, demo_root) < before
    # Resume continues to epoch 2 with the same history prefix; a finished checkpoint is a no-op.
    res = train(model_cfg=cfg, train_cfg=tc, dataset="demo", root=demo_root, out=out, resume=True, progress=False)
    assert res["ran"] == 1 and checkpoints.read(out)["epoch"] == 2
    res = train(model_cfg=cfg, train_cfg=tc, dataset="demo", root=demo_root, out=out, resume=True, progress=False)
    assert res["ran"] == 0


def test_trained_models_learn(trained, demo_root):
    from engine.models.evaluate import evaluate

    for fam, path in trained.items():
        m = evaluate(path)
        assert m["micro_f1"] > 0.6, (fam, m)
        assert m["num_samples"] == 120


def test_training_refuses_to_overwrite_or_mix(tmp_path, demo_root, trained):
    cfg = ModelConfig(family="mlgcn", input_size=20)
    out = tmp_path / "m.pt"
    out.write_bytes(b"precious")
    with pytest.raises(UserError, match="already exists"):
        train(model_cfg=cfg, train_cfg=TrainConfig(epochs=1), dataset="demo", root=demo_root, out=out,
              progress=False)
    assert out.read_bytes() == b"precious"
    with pytest.raises(UserError, match="not a showmanylabels checkpoint|cannot read"):
        train(model_cfg=cfg, train_cfg=TrainConfig(epochs=1), dataset="demo", root=demo_root, out=out,
              resume=True, progress=False)
    with pytest.raises(UserError, match="different model configuration"):
        train(model_cfg=cfg.replace(gcn_hidden=32), train_cfg=TrainConfig(epochs=10, lr=3e-3, batch_size=32),
              dataset="demo", root=demo_root, out=trained["mlgcn"], resume=True, progress=False)


@pytest.mark.parametrize("kw,msg", [({"lr": -0.1}, "lr must be > 0"), ({"epochs": 0}, "epochs must be >= 1"),
                                    ({"optimizer": "rmsprop"}, "unknown optimizer")])
def test_bad_training_values(kw, msg):
    with pytest.raises(UserError, match=msg):
        TrainConfig(**kw)
