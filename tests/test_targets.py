"""The targets beyond the study's: top-k (TkML-AP) and ranking (Rank I / II) label sets, their
success criteria, and bad input."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import cli.main
from engine import attacks, models, results
from engine.attacks import targets
from engine.errors import UserError

LABELS = 6
SCORES = torch.tensor([[3.0, 2.0, -1.0, 0.5, -3.0, -0.2],
                       [-1.0, -2.0, 4.0, -0.5, -3.0, 1.0],
                       [1.0, 2.0, 3.0, 4.0, 5.0, -6.0]])


def test_topk_untargeted_pushes_out_the_shown_labels():
    t, ok = targets.build("topk-untargeted", SCORES >= 0, [0, 1, 2], 0, scores=SCORES, k=2)
    assert torch.equal(t, (SCORES >= 0).float())
    # row 2 shows 5 of 6 labels: only one hidden label, so no top 2 can leave them all out
    assert ok.tolist() == [True, True, False]
    _, ok1 = targets.build("topk-untargeted", SCORES >= 0, [0, 1, 2], 0, scores=SCORES, k=1)
    assert ok1.tolist() == [True, True, True]


def test_topk_targeted_difficulties_follow_the_clean_scores():
    y = SCORES >= 0
    best, ok = targets.build("topk-targeted", y, [0, 1, 2], 0, scores=SCORES, k=2, difficulty="best")
    worst, _ = targets.build("topk-targeted", y, [0, 1, 2], 0, scores=SCORES, k=2, difficulty="worst")
    # row 0: hidden labels 2 (-1), 4 (-3), 5 (-0.2): best = the two highest, worst = the two lowest
    assert torch.nonzero(best[0]).flatten().tolist() == [2, 5]
    assert torch.nonzero(worst[0]).flatten().tolist() == [2, 4]
    assert torch.nonzero(best[1]).flatten().tolist() == [0, 3]
    assert ok.tolist() == [True, True, False] and best[2].sum() == 0
    rnd, _ = targets.build("topk-targeted", y, [0, 1, 2], 5, scores=SCORES, k=2, difficulty="random")
    assert (rnd.sum(1)[:2] == 2).all() and not (rnd.bool() & y).any()
    again, _ = targets.build("topk-targeted", y[[1, 0]], [1, 0], 5, scores=SCORES[[1, 0]], k=2, difficulty="random")
    assert torch.equal(again, rnd[[1, 0]])  # per-sample seeds
    named, ok = targets.build("topk-targeted", y, [0, 1, 2], 0, scores=SCORES, k=2, target_label="2, 4")
    assert torch.nonzero(named[0]).flatten().tolist() == [2, 4] and ok.tolist() == [True, False, False]


def test_ranking_targets_use_the_random_set():
    y = SCORES >= 0
    r, ok = targets.build("random", y, [0, 1, 2], 3)
    for name in ("rank-i", "rank-ii"):
        t, ok2 = targets.build(name, y, [0, 1, 2], 3)
        assert torch.equal(t, r) and torch.equal(ok, ok2)


def _judge(name, logits, y_star, clean=None, k=None):
    c = targets.criterion(name, clean if clean is not None else logits >= 0, k)
    return c.reached(logits, y_star, torch.ones(len(logits), dtype=torch.bool)).tolist()


def test_success_criteria_on_known_scores():
    y_star = torch.tensor([[1.0, 1.0, 0, 0, 0, 0]])
    top = torch.tensor([[-0.2, -0.1, -5, -5, -5, -5]])  # labels 0, 1 on top, below the threshold
    assert _judge("topk-targeted", top, y_star, k=2) == [True]
    assert _judge("topk-targeted", top, y_star, k=3) == [False]  # a third label would be needed
    assert _judge("random", top, y_star) == [False] and _judge("random", top + 1, y_star) == [True]
    assert _judge("topk-untargeted", top, y_star, k=2) == [False]
    assert _judge("topk-untargeted", -top - 5, y_star, k=2) == [True]
    assert _judge("rank-i", top, y_star) == [True]
    tie = torch.tensor([[0.1, -5, -5, -5, -5, -5.0]])
    assert _judge("rank-i", tie, y_star) == [False]  # label 1 ties with the others
    # rank-ii: label 5 was shown and is dropped by y*; it must fall below the never-shown labels
    clean = torch.tensor([[True, False, False, False, False, True]])
    good = torch.tensor([[3.0, 2, 0, 0, 0, -1]])
    bad = torch.tensor([[3.0, 2, 0, -2, 0, -1]])
    assert _judge("rank-ii", good, y_star, clean) == [True]
    assert _judge("rank-i", bad, y_star, clean) == [True] and _judge("rank-ii", bad, y_star, clean) == [False]
    nan = torch.tensor([[0.1, 0.2, -5, -5, -5, float("nan")]])
    c = targets.criterion("topk-targeted", nan >= 0, 2)
    assert c.reached(nan, y_star, torch.tensor([False])).tolist() == [False]


@pytest.mark.parametrize("name, k", [("topk-untargeted", 2), ("topk-targeted", 2), ("rank-i", None),
                                     ("rank-ii", None)])
def test_margin_is_positive_exactly_where_the_target_is_reached(name, k):
    g = torch.Generator().manual_seed(7)
    logits = torch.randn(400, LABELS, generator=g) * 2
    clean = torch.randn(400, LABELS, generator=g) >= 0
    y_star, ok = targets.build(name, clean, range(400), 0, scores=torch.randn(400, LABELS, generator=g), k=k)
    c = targets.criterion(name, clean, k)
    hit = c.reached(logits, y_star, torch.ones(400, dtype=torch.bool))
    assert torch.equal(hit[ok], c.margin(logits, y_star)[ok] > 0)
    assert 0 < hit[ok].sum() < ok.sum()  # both outcomes occur


def test_bad_target_input_is_one_line():
    y = SCORES >= 0
    for kw, msg in (({"k": 0}, r"k = 0 is outside 1\.\.5"), ({"k": 6}, r"k = 6 is outside 1\.\.5"),
                    ({"k": None}, "needs the attack's parameter k"),
                    ({"k": 2, "target_label": "1"}, "names 1 distinct labels for topk-targeted with k = 2"),
                    ({"k": 2, "target_label": [1, 1]}, "names 1 distinct labels"),
                    ({"k": 2, "difficulty": "hard"}, "unknown difficulty 'hard'; valid: best, random, worst")):
        with pytest.raises(UserError, match=msg) as e:
            targets.build("topk-targeted", y, [0, 1, 2], 0, scores=SCORES, **kw)
        assert "\n" not in str(e.value)
    with pytest.raises(UserError, match="unknown target 'top-k'; valid: show-many"):
        targets.build("top-k", y, [0, 1, 2], 0)


class _Linear(nn.Module):
    def __init__(self, labels=6):
        super().__init__()
        self.fc = nn.Linear(3 * 8 * 8, labels)
        self.num_labels = labels

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_success_is_the_targets_own_criterion_through_the_driver():
    torch.manual_seed(0)
    model = _Linear()
    x = torch.rand(6, 3, 8, 8)
    res = attacks.run(model, x, "pgd", target="rank-ii", eps=0.5, step=0.05, iterations=30)
    with torch.no_grad():
        logits, clean = model(res.x_adv), model(x) >= 0
    want = targets.criterion("rank-ii", clean).reached(logits, res.y_star, torch.ones(6, dtype=torch.bool))
    assert torch.equal(res.success, want & res.eligible)
    assert res.success.any()  # a linear model is easy to rank
    with pytest.raises(UserError, match="target topk-untargeted needs the attack's parameter k"):
        attacks.run(model, x, "pgd", target="topk-untargeted")


@pytest.mark.parametrize("argv, expect", [
    (["--attack", "tkmlapu", "--param", "k=8"], "k = 8 is outside 1..7 (a model with 8 labels)"),
    (["--attack", "tkmlapu", "--param", "k=0"], "k must be in 1..1000, got 0"),
    (["--attack", "tkmlapt", "--target-label", "1,2"], "names 2 distinct labels for topk-targeted with k = 3"),
    (["--attack", "tkmlapt", "--param", "difficulty=hard"], "unknown difficulty 'hard'; valid: best, random, worst"),
    (["--attack", "pgd", "--target", "topk-targeted"], "target topk-targeted needs the attack's parameter k"),
    (["--attack", "kfool", "--target", "top-3"], "unknown target 'top-3'"),
])
def test_bad_target_input_through_the_cli(trained, tmp_path, capsys, argv, expect):
    out = tmp_path / "x.zarr"
    rc = cli.main.main(["attack", "--checkpoint", str(trained["mlgcn"]), "--out", str(out), "--no-progress", *argv])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and err.startswith("sml: error: ") and "\n" not in err and expect in err, err
    assert not out.exists() and not list(tmp_path.iterdir())


def test_default_target_of_the_api_and_the_cli(trained, tmp_path, capsys):
    model = models.load(trained["mlgcn"])
    x = torch.rand(3, 3, 20, 20, generator=torch.Generator().manual_seed(0))
    res = attacks.run(model, x, attack="tkmlapu", k=3, iterations=5)
    with torch.no_grad():
        assert torch.equal(res.y_star > 0.5, model(x) >= 0)  # topk-untargeted: the shown labels
    out = tmp_path / "s.zarr"
    rc = cli.main.main(["attack", "--checkpoint", str(trained["mlgcn"]), "--attack", "tkmlapt", "--param", "k=2",
                        "--param", "iterations=5", "--n", "4", "--out", str(out), "--no-progress"])
    assert rc == 0
    assert "tkmlapt.paper.topk-targeted@iterations=5,k=2" in capsys.readouterr().out
    (run,) = [r for _, _, _, r in results.iter_runs(results.open_store(out, "r"))]
    y_star, eligible = results.read(run, "y_star"), results.read(run, "eligible")
    assert (y_star[eligible].sum(1) == 2).all()  # the store holds the k chosen labels
