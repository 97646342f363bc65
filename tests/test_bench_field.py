"""`make bench`'s field section (bench/bench_field.py): each field attack against its reference loop
(bench/reference_ports.py) on a tiny model, and the Performance page's table of its rows."""

from __future__ import annotations

import json

import torch
from torch import nn

from bench import bench_field
from engine import attacks

LABELS = 6


def _model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.Tanh(), nn.Flatten(), nn.Linear(4 * 8 * 8, LABELS))
    net.num_labels = LABELS
    return net.eval()


def test_every_field_attack_matches_its_reference_loop_on_two_samples():
    model = _model()
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        shown = (model(x) >= 0).sum(1)
    assert ((shown >= 1) & (shown <= LABELS - bench_field.K)).all()  # both are eligible for the top-k attacks
    rows = bench_field.run(model, x, quick=True, log=lambda _: None)
    assert [r["attack"] for r in rows] == list(bench_field.FIELD)
    for r in rows:
        assert "error" not in r, r
        assert r["bench"] == "field" and r["batch"] == 2 and r["eligible"] >= 1
        assert r["ours_s"] > 0 and r["reference_s"] > 0
        assert abs(r["speedup"] - r["reference_s"] / r["ours_s"]) < 1e-9
        # equal results: the same samples succeed, and the images (or the perturbation) agree
        assert r["same_success"] and r["success_ours"] == r["success_reference"], r
        assert r["max_abs_diff"] < 1e-4, r
        universal = attacks.get(r["attack"]).universal
        assert (r["floor_ratio"] is None) == universal
        if not universal:
            assert r["floor_ratio"] > 0 and sum(r["passes"].values()) > 0
            # the spec's passes bound those made (early exits only shorten a run): its floor is higher
            assert all(r["passes"][k] <= r["spec_passes"][k] + 1e-9 for k in r["passes"]), r
            assert r["spec_floor_ratio"] <= r["floor_ratio"] * (1 + 1e-9)
    assert any(r["success_ours"] for r in rows)  # not a comparison of attacks that all did nothing
    table = bench_field.format_table(rows)
    assert table.splitlines()[0].startswith("| attack | reference runs |") and len(table.splitlines()) == 11


def test_a_broken_attack_is_an_error_row_and_the_others_still_run(monkeypatch):
    def broken(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setitem(bench_field.REFERENCE, "mljsma", broken)
    model, x = _model(), torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    rows = bench_field.run(model, x, quick=True, names=("mljsma", "mlaede"), log=lambda _: None)
    assert rows[0] == {"bench": "field", "attack": "mljsma", "error": "RuntimeError: boom"}
    assert rows[1]["same_success"]
    assert "failed: RuntimeError: boom" in bench_field.format_table(rows)


def _row(attack, **kw):
    return {"bench": "field", "attack": attack, "preset": "paper", "params": {}, "batch": 8, "device": "cpu",
            "reference": "one sample at a time", "ours_s": 0.5, "reference_s": 2.0, "speedup": 4.0,
            "max_abs_diff": 3e-7, "success_ours": 5, "success_reference": 5, "same_success": True, "eligible": 8,
            "floor_ratio": 1.25, "spec_floor_ratio": 1.0,
            "passes": {"forward": 1.0, "forward_backward": 20.0, "backward": 0.0}, **kw}


def test_the_performance_page_shows_the_newest_field_rows(tmp_path):
    from docs.pages import bench_pages

    empty = bench_pages.performance(bench_pages.Results(tmp_path))
    assert "## Field attacks: ours vs the reference loop" in empty and "No field-attack comparison" in empty
    machine = {"host": "h", "cpu": {"model": "CPU X", "torch_isa": "AVX2"}, "cpu_count": 2}
    for name, date, speed in (("bench-a.json", "2026-01-01T00:00:00+00:00", 3.0),
                              ("bench-b.json", "2026-02-01T00:00:00+00:00", 4.0)):
        rows = [_row("tkmlapu", speedup=speed),
                _row("kuap", floor_ratio=None, spec_floor_ratio=None, passes=None, same_success=False,
                     success_reference=4)]
        (tmp_path / name).write_text(json.dumps({"kind": "bench", "date": date, "machine": machine,
                                                 "versions": {"python": "3.11", "torch": "2"},
                                                 "command": "python -m bench --only field", "rows": rows}))
    # a newer record without field rows (another section alone) leaves the field table as it was
    (tmp_path / "bench-c.json").write_text(json.dumps({"kind": "bench", "date": "2026-03-01T00:00:00+00:00",
                                                       "machine": machine, "versions": {}, "command": "x",
                                                       "rows": [], "table": ""}))
    page = bench_pages.performance(bench_pages.Results(tmp_path))
    field = page[page.index("## Field attacks"):]
    assert "| tkmlapu | one sample at a time | 8 | 0.500 | 2.000 | 4.0x | 3.0e-07 | 5 / 5 of 8 | 1.25 / 1.00 |" in field
    assert "| kuap | one sample at a time | 8 | 0.500 | 2.000 | 4.0x | 3.0e-07 | 5 / 4 of 8 (differ) | |" in field
    assert "3.0x" not in field and "*Machine:* CPU X" in field and "bench-b.json" in field


def test_mlaede_is_priced_by_forward_passes_only():
    cfg = attacks.make_config("mlaede", "paper", pop_size=10, generations=20)
    p = attacks.get("mlaede").passes(cfg, 20)
    assert p.grad == 0 and p.bwd == 0 and p.fwd == 10 * (2 * 20 - 1) + 2
    assert p.in_grad_passes(0.25) == 0.25 * p.fwd  # the plan's cost: forwards at their measured share
