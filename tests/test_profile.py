"""`sml profile`: passes counted by hooks on the model equal what the attack's spec declares; a
callable's own passes (gradient steps, forward-only scoring, Jacobian rows) are counted as made;
rows carry the floor, phases and provenance; `--compare` gates on throughput; bad input is one line."""

from __future__ import annotations

import json
import sys
import textwrap

import pytest
import torch

import cli.main
from engine import data
from engine.config import ProfileConfig
from engine.profile import gate, harness, peers
from engine.runtime import batching

FAST = ProfileConfig(repeats=1, memory=False, calibration_seconds=0.02)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, demo_root):
    """A factory module (a tiny conv net on the small demo set's labels) and the attack callables
    the tests profile, importable by name."""
    folder = tmp_path_factory.mktemp("profmods")
    names = data.load("demo", root=demo_root, split="test").label_names
    (folder / "sml_prof_tiny.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        def build():
            torch.manual_seed(0)
            net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                                nn.Linear(16, {len(names)}))
            return net, {list(names)!r}

        def two_steps_and_a_score(model, x, y_star, step=0.01):
            xa = x
            for _ in range(2):
                xa = xa.detach().requires_grad_(True)
                loss = nn.functional.binary_cross_entropy_with_logits(model(xa), y_star)
                g, = torch.autograd.grad(loss, xa)
                xa = (xa - step * g.sign()).clamp(0, 1)
            with torch.no_grad():
                model(xa)
            return xa.detach()

        def jacobian_rows(model, x, y_star):
            xg = x.clone().requires_grad_(True)
            out = model(xg)
            for k in range(3):
                torch.autograd.grad(out[:, k].sum(), xg, retain_graph=True)
            return x.clone()

        def wrong_shape(model, x, y_star):
            return x[:, :1]

        def no_y_star(model, x):
            return x
    """))
    sys.path.insert(0, str(folder))
    yield {"opts": {"own_model": {"factory": "sml_prof_tiny:build"}, "dataset": "demo", "root": str(demo_root)},
           "folder": folder, "root": demo_root}
    sys.path.remove(str(folder))


def test_registered_attack_passes_equal_its_spec(tiny):
    """PGD with a random start: 3 gradient passes, a clean forward and a scoring forward per sample,
    as AttackSpec.passes declares; the floor and phases come with the row."""
    (row,) = harness.run(["pgd@iterations=3"], tiny["opts"], "4", FAST, log=lambda m: None)
    assert row["passes"] == {"forward": 2.0, "forward_backward": 3.0, "backward": 0.0}
    assert row["spec_passes"] == row["passes"] and row["spec_check"] == "equal"
    assert row["attack"] == "pgd@iterations=3" and row["batch"] == 4 and row["model"] == "sml_prof_tiny.build"
    assert row["floor_s_per_sample"] == pytest.approx(2 * row["fwd_s_per_image"] + 3 * row["fwd_bwd_s_per_image"])
    assert row["floor_ratio"] == pytest.approx(row["seconds_per_sample"] / row["floor_s_per_sample"])
    ph = row["phases"]
    assert set(ph) == {"forward", "backward", "update", "scoring", "other"}
    assert ph["forward"] > 0 and ph["backward"] > 0 and ph["scoring"] > 0
    assert row["provenance"]["cpu"]["model"] and torch.__version__.startswith(row["provenance"]["packages"]["torch"])


def test_callables_are_counted_as_they_run(tiny):
    """Two gradient steps and a no-grad score; one forward with three Jacobian rows."""
    rows = harness.run(["sml_prof_tiny:two_steps_and_a_score@step=0.02", "sml_prof_tiny:jacobian_rows"],
                       tiny["opts"], "3,5", FAST, log=lambda m: None)
    assert [(r["attack"].split(":")[1].split("@")[0], r["batch"]) for r in rows] == [
        ("two_steps_and_a_score", 3), ("two_steps_and_a_score", 5), ("jacobian_rows", 3), ("jacobian_rows", 5)]
    assert rows[0]["passes"] == {"forward": 1.0, "forward_backward": 2.0, "backward": 0.0}
    assert rows[2]["passes"] == {"forward": 0.0, "forward_backward": 1.0, "backward": 2.0}
    assert rows[0]["spec_check"] is None and rows[0]["images_per_s"] > 0


def test_batch_auto_is_the_largest_that_fits(tiny):
    model, ds, _ = harness.load(tiny["opts"])
    want = batching.auto_batch(model, tuple(ds.image(0).shape), num_labels=ds.labels.shape[1], jacobian=False)
    (row,) = harness.run(["fgsm"], tiny["opts"], "auto", FAST, log=lambda m: None)
    assert row["batch"] == want > 1 and row["passes"]["forward_backward"] == 1.0


def test_peer_library_attack(tiny):
    if peers.advertorch() is None:
        pytest.skip("advertorch is not installed")
    (row,) = harness.run(["advertorch:fgsm"], tiny["opts"], "4", FAST, log=lambda m: None)
    assert row["passes"]["forward_backward"] == 1.0 and row["spec_check"] is None


def test_cli_writes_rows_trace_and_plot(tiny, tmp_path, capsys):
    out, trace, plot = tmp_path / "p.json", tmp_path / "t.json", tmp_path / "p.png"
    rc = cli.main.main(["profile", "--attack", "fgsm", "--attack", "sml_prof_tiny:two_steps_and_a_score",
                        "--factory", "sml_prof_tiny:build", "--dataset", "demo", "--root", str(tiny["root"]),
                        "--batch", "2", "--repeats", "1", "--no-memory", "--calibration-seconds", "0.02",
                        "--out", str(out), "--trace", str(trace), "--plot", str(plot)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "| fgsm |" in text and "two_steps_and_a_score" in text and "equal" in text
    rows = json.loads(out.read_text())
    assert [r["attack"] for r in rows] == ["fgsm", "sml_prof_tiny:two_steps_and_a_score"]
    assert all(r["peak_memory_bytes"] is None for r in rows)
    assert json.loads((tmp_path / "t.0-b2.json").read_text())["traceEvents"]
    assert (tmp_path / "t.1-b2.json").is_file() and plot.stat().st_size > 1000


@pytest.mark.slow
def test_cpu_memory_in_a_fresh_process(tiny, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", str(tiny["folder"]))
    cfg = ProfileConfig(repeats=1, calibration_seconds=0.02)
    (row,) = harness.run(["pgd@iterations=2"], tiny["opts"], "8", cfg, log=lambda m: None)
    assert 0 < row["peak_memory_bytes"] < 200 * 2**20  # a tiny net on 8 images: not the parent's size


def _rows(**speeds) -> list[dict]:
    return [{"attack": a, "model": "m", "device": "cpu", "precision": "fp32", "compile": False, "batch": 16,
             "images_per_s": v} for a, v in speeds.items()]


def test_compare_fails_only_a_matched_row_slower_than_the_tolerance(tmp_path, capsys):
    old, new = tmp_path / "old.json", tmp_path / "new.json"
    old.write_text(json.dumps(_rows(pgd=100.0, fgsm=100.0, gone=5.0)))
    new.write_text(json.dumps({"kind": "profile", "rows": _rows(pgd=95.0, fgsm=120.0, added=7.0)}))
    assert cli.main.main(["profile", "--compare", str(old), str(new)]) == 0
    text = capsys.readouterr().out
    assert "only in OLD: gone @ 16" in text and "only in NEW: added @ 16" in text
    assert cli.main.main(["profile", "--compare", str(old), str(new), "--tolerance", "0.04"]) == 1
    assert "SLOWER" in capsys.readouterr().out
    res = gate.compare(json.loads(old.read_text()), _rows(pgd=50.0), 0.10)
    assert res["failed"] and res["only_old"] == [["fgsm", "m", "cpu", "fp32", False, 16], ["gone", "m", "cpu",
                                                                                             "fp32", False, 16]]


def _one_line(capsys, argv) -> str:
    assert cli.main.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("attack, batch, expect", [
    ("sml_no_such_module:fn", "2", "module 'sml_no_such_module' does not import"),
    ("sml_prof_tiny:nothing_here", "2", "has no function 'nothing_here'"),
    ("sml_prof_tiny:no_y_star", "2", "does not take (model, x, y_star"),
    ("sml_prof_tiny:two_steps_and_a_score@stride=2", "2", "does not take (model, x, y_star, stride=)"),
    ("sml_prof_tiny:wrong_shape", "2", "returned a tensor of shape (2, 1, 32, 32); expected x_adv"),
    ("advertorch:mldp", "2", "advertorch has no version of 'mldp'"),
    ("foolbox:pgd", "2", "module 'foolbox' does not import"),
    ("pgd@eps=-1", "2", "eps must be >= 0"),
    ("pgd@iterations", "2", "'iterations' is not NAME=VALUE"),
    ("nosuchattack", "2", "unknown attack 'nosuchattack'"),
    ("pgd", "0", "--batch '0': expected auto, or sizes in 1..65536"),
])
def test_bad_input_is_one_line(tiny, tmp_path, capsys, attack, batch, expect):
    out = tmp_path / "p.json"
    err = _one_line(capsys, ["profile", "--attack", attack, "--factory", "sml_prof_tiny:build", "--dataset", "demo",
                             "--root", str(tiny["root"]), "--batch", batch, "--no-memory", "--out", str(out)])
    assert expect in err and not out.exists()


def test_trace_needs_an_eager_call(tiny, tmp_path, capsys):
    err = _one_line(capsys, ["profile", "--attack", "fgsm", "--factory", "sml_prof_tiny:build", "--compile",
                             "--trace", str(tmp_path / "t.json")])
    assert "--trace records the phases of an eager call" in err and not (tmp_path / "t.json").exists()


def test_a_batch_that_does_not_fit_is_one_line(tiny, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(harness, "_available_bytes", lambda: 10_000)
    err = _one_line(capsys, ["profile", "--attack", "fgsm", "--factory", "sml_prof_tiny:build", "--dataset", "demo",
                             "--root", str(tiny["root"]), "--batch", "64", "--no-memory"])
    assert "--batch 64: needs about" in err and "largest that fits" in err


def _record(folder, name: str, date: str, speeds: dict, kind: str = "profile") -> None:
    rows = [{**r, "seconds_per_sample": 1 / r["images_per_s"], "passes": {"forward": 1.0, "forward_backward": 2.0,
                                                                          "backward": 0.0},
             "floor_ratio": 1.5, "phases": {"forward": 1.0, "backward": 1.0, "update": 0.0, "scoring": 0.0,
                                            "other": 0.0}, "spec_check": "equal"} for r in _rows(**speeds)]
    doc = {"kind": kind, "date": date, "machine": {"host": "h", "cpu": {"model": "CPU X", "torch_isa": "AVX2"},
                                                   "cpu_count": 2}, "versions": {"python": "3.11", "torch": "2"},
           "command": "python -m bench", "rows": rows}
    (folder / name).write_text(json.dumps(doc))


def test_performance_page_history_newest_first(tmp_path):
    from docs.pages import bench_pages

    empty = bench_pages.performance(bench_pages.Results(tmp_path))
    assert "No profile is recorded" in empty and "No CI profile is recorded" in empty
    _record(tmp_path, "profile-a.json", "2026-01-01T00:00:00+00:00", {"pgd": 10.0, "fgsm": 50.0})
    _record(tmp_path, "profile-b.json", "2026-02-01T00:00:00+00:00", {"pgd": 12.5})
    page = bench_pages.performance(bench_pages.Results(tmp_path))
    assert "| pgd | m | 16 | 12.5 |" in page  # the latest profile's table
    assert "| pgd | m | cpu, fp32 | 16 | 12.5 | 10.0 |" in page and "| fgsm | m | cpu, fp32 | 16 | | 50.0 |" in page
    history = page[page.index("## History"):]
    assert history.index("(1) *Machine:* CPU X") < history.index("profile-b.json") < history.index("profile-a.json")
