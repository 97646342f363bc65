import numpy as np
import pytest
import torch
from sklearn import metrics as skm

from engine import data, models
from engine.config import ModelConfig
from engine.errors import UserError
from engine.models import checkpoints
from engine.models.metrics import table1
from engine.models.mlgcn import correlation_matrix, propagation_matrix
from engine.models.mlliw import liw_loss


@pytest.mark.parametrize(
    "family,backbone,size",
    [("mlgcn", "tiny", 16), ("mlliw", "tiny", 24), ("mlgcn", "resnet18", 32), ("mlliw", "resnet18", 32),
     ("mlliw", "inception_v3", 75)],
)
def test_output_shapes(family, backbone, size):
    cfg = ModelConfig(family=family, backbone=backbone, input_size=size, gcn_hidden=64)
    m = models.build(cfg, 7).eval()
    with torch.no_grad():
        out = m(torch.rand(2, 3, size, size))
    assert out.shape == (2, 7) and torch.isfinite(out).all()


def test_mlgcn_parameter_names_match_the_repository():
    m = models.build(ModelConfig(family="mlgcn", backbone="resnet18", input_size=32), 20)
    keys = set(m.state_dict())
    assert {"A", "gc1.weight", "gc2.weight", "features.0.weight", "features.1.running_mean",
            "features.4.0.conv1.weight", "features.7.1.bn2.weight"} <= keys
    assert m.gc1.weight.shape == (20, 1024) and m.gc2.weight.shape == (1024, 512)


def test_correlation_matrix_hand_computed():
    # 4 labels, 5 samples. Counts n = (3, 2, 2, 1); co-occurrences (0,1)=2, (0,2)=1, (2,3)=1.
    y = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [1, 0, 1, 0], [0, 0, 1, 1], [0, 0, 0, 0]])
    # P(j|i): row 0 = (., 2/3, 1/3, 0); row 1 = (1, ., 0, 0); row 2 = (1/2, 0, ., 1/2); row 3 = (0, 0, 1, .)
    # binarised at 0.4: edges 0->1, 1->0, 2->0, 2->3, 3->2. Column sums: (2, 1, 1, 1).
    # times 0.25 / (colsum + 1e-6), plus I:
    q = 0.25 / (1 + 1e-6)
    h = 0.25 / (2 + 1e-6)
    expected = np.array([[1, q, 0, 0], [h, 1, 0, 0], [h, 0, 1, q], [0, 0, q, 1]], dtype=np.float32)
    np.testing.assert_allclose(correlation_matrix(y, t=0.4, p=0.25), expected, rtol=1e-6)
    a = torch.tensor(expected)
    d = torch.diag(a.sum(1) ** -0.5)
    np.testing.assert_allclose(propagation_matrix(a), (a @ d).t() @ d, rtol=1e-6)


def test_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = (rng.random((200, 9)) < 0.25).astype(int)
    z = rng.normal(size=(200, 9)) + 2 * y - 1
    m = table1(torch.tensor(z), torch.tensor(y))
    p = 1 / (1 + np.exp(-z))
    pred = (z >= 0).astype(int)
    assert m["hamming_loss"] == pytest.approx(skm.hamming_loss(y, pred))
    assert m["ranking_loss"] == pytest.approx(skm.label_ranking_loss(y, p))
    assert m["average_precision"] == pytest.approx(skm.label_ranking_average_precision_score(y, p))
    assert m["mAP"] == pytest.approx(skm.average_precision_score(y, p, average="macro"))
    assert m["micro_f1"] == pytest.approx(skm.f1_score(y, pred, average="micro"))
    assert m["macro_f1"] == pytest.approx(skm.f1_score(y, pred, average="macro", zero_division=0))
    assert m["average_precision"] != pytest.approx(m["mAP"])  # two different definitions


def test_liw_loss_matches_the_pairwise_definition():
    torch.manual_seed(1)
    z = torch.randn(6, 5)
    y = (torch.rand(6, 5) < 0.4).float()
    y[0] = 1  # a row with no negatives is skipped
    o = torch.sigmoid(z)

    def pairwise(o, y):
        tot = 0.0
        for i in range(o.shape[0]):
            pos, neg = torch.nonzero(y[i] > 0).flatten(), torch.nonzero(y[i] == 0).flatten()
            if len(pos) and len(neg):
                tot += sum(torch.exp(-(o[i, k] - o[i, l])) for k in pos for l in neg) / (len(pos) * len(neg))
        return tot

    expected = 0.5 * pairwise(o, y) + pairwise(o.t(), y.t())
    assert liw_loss(z, y).item() == pytest.approx(float(expected), rel=1e-5)


def test_checkpoint_round_trip_gives_identical_logits(trained, demo_root):
    for path in trained.values():
        m = models.load(path)
        x, _ = data.stack(data.load("demo", root=demo_root), range(8))
        ck = checkpoints.read(path)
        m2 = models.from_checkpoint(ck)
        with torch.no_grad():
            assert torch.equal(m(x), m2(x))
        assert m.label_names == ck["label_names"]
        models.prepare_for_attack(m2)  # frozen ML-GCN classifiers give the same logits
        with torch.no_grad():
            torch.testing.assert_close(m(x), m2(x), rtol=1e-5, atol=1e-5)


def test_unknown_model_and_backbone():
    with pytest.raises(UserError, match="unknown backbone 'vgg'.*valid: tiny"):
        ModelConfig(backbone="vgg")
    with pytest.raises(UserError, match="unknown family 'mlknn'; valid: mlgcn, mlliw"):
        ModelConfig(family="mlknn")
    with pytest.raises(UserError, match="too small for inception_v3"):
        models.build(ModelConfig(family="mlliw", backbone="inception_v3", input_size=32), 5)


def test_backbone_weights_from_a_checkpoint(trained, tmp_path):
    cfg = ModelConfig(family="mlliw", input_size=20, backbone_weights=str(trained["mlgcn"]))
    m = models.build(cfg, 8)
    src = models.load(trained["mlgcn"])
    assert torch.equal(m.features[0].weight, src.features[0].weight)
    torch.save({"weird.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(UserError, match="bad.pt: not a matching state dict"):
        models.build(cfg.replace(backbone_weights=str(tmp_path / "bad.pt")), 8)
