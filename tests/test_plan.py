"""`sml sweep FILE --plan`: the cost of a sweep from the attacks' pass counts, without attacking."""

import json

import pytest

import cli.main
from engine import attacks
from engine.runtime.sweep import plan as pl

N = 10


def _sweep(tmp_path, trained) -> str:
    lines = ["[protocol]", f"n = {N}", "chunk_size = 4", "",
             "[[model]]", f'checkpoint = "{trained["mlgcn"]}"', 'key = "g"', "",
             "[[attack]]", 'name = "fgsm"', "",
             "[[attack]]", 'name = "pgd"', "params = { iterations = 5 }", "",
             "[[attack]]", 'name = "mlalp"', "params = { iterations = 2 }"]
    path = tmp_path / "grid.toml"
    path.write_text("\n".join(lines) + "\n")
    return str(path)


def _profile(tmp_path, entries=None) -> str:
    path = tmp_path / "profile.json"
    pl.write_profile(path, "cuda", "Test GPU", entries if entries is not None else [
        {"backbone": "tiny", "family": "mlliw", "size": 20, "batch": 32, "fwd_bwd_s_per_image": 9.0,
         "fwd_s_per_image": 9.0},
        {"backbone": "tiny", "family": "mlgcn", "size": 20, "batch": 32, "fwd_bwd_s_per_image": 0.01,
         "fwd_s_per_image": 0.004}])
    return str(path)


def test_plan_from_a_profile(tmp_path, trained):
    res = pl.plan_sweep(_sweep(tmp_path, trained), device_profile=_profile(tmp_path))
    rows = {r["attack"]: r for r in res["rows"]}
    assert list(rows) == ["fgsm", "pgd", "mlalp"] and res["device"] == "Test GPU"
    assert all(r["samples"] == N and r["labels"] == 8 and r["fwd_bwd_s_per_image"] == 0.01 for r in rows.values())
    share = 0.4  # the profile's entry of the model's own head family
    # One-step: one gradient pass whose logits give the targets, one forward to score x_adv.
    assert rows["fgsm"]["passes_per_sample"] == pytest.approx(1 + share)
    # PGD's random start: its clean prediction needs a forward of its own.
    assert rows["pgd"]["passes_per_sample"] == pytest.approx(5 + 2 * share)
    p = attacks.get("mlalp").passes(attacks.make_config("mlalp", iterations=2), 8)
    assert rows["mlalp"]["passes_per_sample"] == pytest.approx(p.grad + p.fwd * share + p.bwd * (1 - share))
    assert p.bwd == 2 * 7  # the Jacobian's other 7 rows, per iteration
    total = sum(r["device_seconds"] for r in rows.values())
    assert rows["fgsm"]["device_seconds"] == pytest.approx(N * 1.4 * 0.01)
    assert res["device_seconds"] == pytest.approx(total) and res["shards"] == 3 * 3  # 10 samples in chunks of 4
    on = res["wall_seconds"]
    assert on[1] == pytest.approx(total)
    longest = rows["mlalp"]["device_seconds"] * 4 / N
    assert on[4] >= max(total / 4, longest) - 1e-12 and on[32] == pytest.approx(longest)
    assert on[1] >= on[4] >= on[8] >= on[32]
    assert any("mlalp" in a and "CPU solver work is not counted" in a for a in res["assumptions"])


def test_plan_measures_the_model_without_a_profile(tmp_path, trained, capsys):
    assert cli.main.main(["sweep", _sweep(tmp_path, trained), "--plan"]) == 0
    out = capsys.readouterr().out
    assert "| g/demo | fgsm | 10 |" in out and "| g/demo | pgd@iterations=5 | 10 |" in out
    assert "1 device(s)" in out and "32 device(s)" in out and "measured here" in out and "assumptions:" in out
    assert not (tmp_path / "grid.zarr").exists()
    assert cli.main.main(["sweep", _sweep(tmp_path, trained), "--plan", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    fg = next(r for r in res["rows"] if r["attack"] == "fgsm")
    assert fg["fwd_bwd_s_per_image"] > 0 and 1 <= fg["passes_per_sample"] <= 2
    assert fg["device_seconds"] == pytest.approx(N * fg["passes_per_sample"] * fg["fwd_bwd_s_per_image"])


@pytest.mark.parametrize("args,expect", [
    (["--device-profile", "P"], "--device-profile goes with --plan"),
    (["--plan", "--out", "x.zarr"], "nothing is written"),
    (["--plan", "--device-profile", "missing.json"], "device profile not found"),
    (["--plan", "--device-profile", "BAD"], "not a device profile"),
    (["--plan", "--device-profile", "OTHER"], "no entry for tiny at 20 px (it has: resnet101@448)"),
])
def test_plan_bad_input_is_one_line(args, expect, tmp_path, trained, capsys):
    (tmp_path / "BAD").write_text("{}")
    other = _profile(tmp_path, [{"backbone": "resnet101", "family": "mlgcn", "size": 448,
                                 "fwd_bwd_s_per_image": 0.01, "fwd_s_per_image": 0.004}])
    args = [{"BAD": str(tmp_path / "BAD"), "OTHER": other}.get(a, a) for a in args]
    assert cli.main.main(["sweep", _sweep(tmp_path, trained), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expect in err


def test_plan_reads_the_rows_of_sml_profile(tmp_path, trained):
    """`sml profile --out` rows (and a bench record holding them) are a device profile: the row of
    the sweep's model (backbone, family, input size) at its largest batch prices a pass."""
    row = {"attack": "pgd", "model": "m", "device": "cpu", "precision": "fp32", "compile": False,
           "backbone": "tiny", "family": "mlgcn", "input_size": 20, "provenance": {"device": "cpu (x86_64)"}}
    rows = [{**row, "batch": 8, "fwd_bwd_s_per_image": 0.5, "fwd_s_per_image": 0.2},
            {**row, "batch": 32, "fwd_bwd_s_per_image": 0.01, "fwd_s_per_image": 0.004}]
    for doc in (rows, {"kind": "profile", "rows": rows}):
        path = tmp_path / "p.json"
        path.write_text(json.dumps(doc))
        res = pl.plan_sweep(_sweep(tmp_path, trained), device_profile=path)
        fg = next(r for r in res["rows"] if r["attack"] == "fgsm")
        assert fg["fwd_bwd_s_per_image"] == 0.01 and fg["timing_batch"] == 32
        assert fg["passes_per_sample"] == pytest.approx(1 + 0.4) and res["device"] == "cpu (x86_64)"
