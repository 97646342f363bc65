"""Grids in sweep files, run names with their parameters, the self-describing store (xarray), the
per-sample CSV export, and what the report makes of a grid."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

import cli.main
from engine import results
from engine.errors import UserError
from engine.report import collect, render
from engine.runtime.sweep import run_sweep, sweep_status
from engine.runtime.sweep.sweepfile import load_sweep


def _file(tmp_path, trained, attack_tables: str, sweep: str = "") -> Path:
    f = tmp_path / "grid.toml"
    f.write_text(f'[sweep]\nname = "grid"\n{sweep}\n[protocol]\nn = 6\nchunk_size = 3\nbatch_size = 3\n\n'
                 f'[[model]]\ncheckpoint = "{trained["mlgcn"]}"\nkey = "mlgcn"\n\n{attack_tables}')
    return f


PGD_GRID = '[[attack]]\nname = "pgd"\nparams = { eps = [0.3, 0.03], iterations = [1, 3], step = 0.05 }\n'


def test_lists_in_params_expand_to_named_runs(tmp_path, trained):
    sw = load_sweep(_file(tmp_path, trained, PGD_GRID + '\n[[attack]]\nname = "pgd"\n'))
    keys = [r.spec.key for r in sw.runs]
    # First key outermost; floats in their shortest round-trip form; the plain run beside the grid.
    assert keys == ["pgd@eps=0.3,iterations=1,step=0.05", "pgd@eps=0.3,iterations=3,step=0.05",
                    "pgd@eps=0.03,iterations=1,step=0.05", "pgd@eps=0.03,iterations=3,step=0.05", "pgd"]
    assert sw.runs[2].spec.config.eps == 0.03 and sw.runs[2].spec.config.iterations == 1


@pytest.mark.parametrize("tables,sweep,expect", [
    ('[[attack]]\nname = "pgd"\nparams = { eps = [] }\n', "", "params eps is an empty list"),
    ('[[attack]]\nname = "pgd"\nparams = { iterations = [2, 2.5] }\n', "", "iterations must be an integer, got 2.5"),
    ('[[attack]]\nname = "pgd"\nparams = { epz = [0.1, 0.2] }\n', "", "unknown key 'epz'; valid: loss"),
    ('[[attack]]\nname = "pgd"\nparams = { eps = 0.1 }\n[[attack]]\nname = "pgd"\nparams = { eps = 0.1 }\n', "",
     "repeats run 'pgd@eps=0.1'"),
    (PGD_GRID, "max_runs = 3", "the sweep makes 4 runs (4 per model x 1 models), more than [sweep] max_runs = 3"),
])
def test_bad_grids_are_one_line(tmp_path, trained, capsys, tables, sweep, expect):
    f = _file(tmp_path, trained, tables, sweep)
    rc = cli.main.main(["sweep", str(f), "--out", str(tmp_path / "g.zarr"), "--local", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "\n" not in err and expect in err and str(f) in err, err
    assert not (tmp_path / "g.zarr").exists()


def test_too_many_runs_go_with_yes(tmp_path, trained):
    assert len(load_sweep(_file(tmp_path, trained, PGD_GRID, "max_runs = 3"), yes=True).runs) == 4


def test_cli_list_param_is_refused(trained, demo_root, tmp_path, capsys):
    rc = cli.main.main(["attack", "--checkpoint", str(trained["mlgcn"]), "--attack", "pgd", "--root", str(demo_root),
                        "--out", str(tmp_path / "a.zarr"), "--param", "eps=[0.1, 0.2]", "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 2 and "eps must be a number" in err and not (tmp_path / "a.zarr").exists()


@pytest.fixture(scope="module")
def grid_store(tmp_path_factory, trained):
    tmp = tmp_path_factory.mktemp("grid")
    out = tmp / "g.zarr"
    res = run_sweep(_file(tmp, trained, PGD_GRID), out, local=True, progress=False)
    assert res["shards_done"] == res["shards_total"] == 8
    return out


def test_grid_report_titles_and_plot_against_the_parameter(grid_store, tmp_path):
    written = render(grid_store, tmp_path / "rep")
    md = (tmp_path / "rep" / "tables.md").read_text()
    for t in ("PGD (eps=0.03, iterations=1, step=0.05)", "PGD (eps=0.3, iterations=3, step=0.05)"):
        assert f"| {t} |" in md, md
    # Rows in parameter order (0.03 before 0.3), not name order.
    assert md.index("eps=0.03, iterations=1") < md.index("eps=0.3, iterations=1")
    names = sorted(p.name for p in written if "success_vs_" in p.name)
    assert names == ["success_vs_eps_mlgcn_demo_pgd.png", "success_vs_iterations_mlgcn_demo_pgd.png"]
    with pytest.raises(UserError, match=r"--vs decay: no attack .* \(swept here: eps, iterations\)"):
        render(grid_store, tmp_path / "rep2", vs="decay")
    assert not (tmp_path / "rep2").exists()
    # A larger budget never does worse here (the same samples, steps and iterations).
    rows = {r["run"]: r for r in collect(grid_store)[0]}
    small, large = rows["pgd@eps=0.03,iterations=3,step=0.05"], rows["pgd@eps=0.3,iterations=3,step=0.05"]
    assert large["success_final"][0] >= small["success_final"][0]


def test_attack_adds_a_differently_parameterised_run(grid_store, trained, demo_root, tmp_path):
    import shutil

    from engine.runtime.runner import attack_checkpoint

    out = tmp_path / "copy.zarr"
    shutil.copytree(grid_store, out)
    res = attack_checkpoint(trained["mlgcn"], "pgd", out, n=6, chunk_size=3, batch_size=3, root=demo_root,
                            params={"iterations": 2}, model_key="mlgcn", progress=False)
    assert res["group"].endswith("pgd@iterations=2") and res["params"] == {"iterations": 2}
    assert len(collect(out)[0]) == 5


def test_store_opens_in_xarray_with_named_dims_and_missing_rows(grid_store, tmp_path):
    import shutil

    import xarray as xr  # a test dependency (pyproject: test extras)
    import zarr

    out = tmp_path / "partial.zarr"
    shutil.copytree(grid_store, out)
    group = "mlgcn/demo/pgd@eps=0.3,iterations=3,step=0.05"
    run = zarr.open_group(str(out / group), mode="r+")
    run["done"][1] = False  # the second chunk unfinished: its rows must read as missing ...
    for name in ("label_count_final", "success", "norms", "iters"):  # ... and hold the fill values
        arr = run[name]
        arr[3:6] = arr.fill_value
    ds = xr.open_zarr(str(out), group=group, consolidated=False)
    assert dict(ds.sizes) == {"sample": 6, "label": len(ds.label), "norm": 4, "chunk": 2}
    assert list(ds.norm.values) == ["l0", "l1", "l2", "linf"] and "done" in ds.coords
    assert "sample_index" in ds.coords and ds.norms.dims == ("sample", "norm")
    assert ds.attrs["params"] == {"eps": 0.3, "iterations": 3, "step": 0.05} and "exp_labels" in ds.attrs
    for name in ("label_count_final", "success", "iters"):
        v = ds[name].values
        assert np.isnan(v[3:]).all() and not np.isnan(v[:3]).any(), (name, v)
    assert np.isnan(ds.norms.values[3:]).all()
    # The engine reads the same store: booleans back as booleans, unfinished rows not counted.
    assert results.read(run, "success").dtype == bool


def test_export_matches_the_tables_row_for_row(grid_store, tmp_path, capsys):
    rc = cli.main.main(["export", str(grid_store), "--csv", str(tmp_path / "x")])
    assert rc == 0
    rows = list(csv.DictReader((tmp_path / "x" / "samples.csv").open()))
    assert len(rows) == 4 * 6
    tables = json.loads(render(grid_store, tmp_path / "rep", ("json",))[0].read_text())
    for t in tables["runs"]:
        mine = [r for r in rows if r["run"] == t["run"] and r["eligible"] == "1"]
        assert len(mine) == t["n_eligible"]
        for n, rate in enumerate(t["success_final"]):
            assert np.isclose(np.mean([int(r[f"success_n{n}"]) for r in mine]), rate), (t["run"], n)
    assert {float(r["norm_linf"]) <= 0.3 + 1e-6 for r in rows} == {True}


def test_each_shard_records_its_provenance_and_the_report_summarises_it(grid_store, tmp_path, caplog):
    import shutil

    import zarr

    from engine.runtime import provenance

    render(grid_store, tmp_path / "rep")
    doc = json.loads((tmp_path / "rep" / "provenance.json").read_text())
    assert doc["warnings"] == [] and len(doc["runs"]) == 4
    one = doc["runs"]["mlgcn/demo/pgd@eps=0.3,iterations=1,step=0.05"]
    assert one["shards"] == 2 and one["packages"][0]["torch"] == provenance.static("cpu")["packages"]["torch"]
    assert one["data_digest"][0] and one["host"] and one["first_started"] <= one["last_finished"]
    assert "provenance" not in (tmp_path / "rep" / "tables.md").read_text()
    # A run made with another torch: the report warns, the tables stay as they were.
    out = tmp_path / "mixed.zarr"
    shutil.copytree(grid_store, out)
    arr = zarr.open_group(str(out), mode="r+")["mlgcn/demo/pgd@eps=0.03,iterations=1,step=0.05/provenance"]
    rec = json.loads(str(arr[:][0]))
    rec["packages"]["torch"] = "0.0.1"
    arr[0] = json.dumps(rec)
    with caplog.at_level("WARNING"):
        render(out, tmp_path / "rep2")
    assert "mlgcn/demo: its runs were made with different packages" in caplog.text
    assert (tmp_path / "rep2" / "tables.md").read_text() == (tmp_path / "rep" / "tables.md").read_text().replace(
        str(grid_store), str(out))


def test_adding_runs_to_the_file_extends_the_store_a_changed_run_is_refused(grid_store, trained, tmp_path):
    import shutil

    out = tmp_path / "grow.zarr"
    shutil.copytree(grid_store, out)
    grown = _file(tmp_path, trained, PGD_GRID + '\n[[attack]]\nname = "fgsm"\n')
    res = run_sweep(grown, out, local=True, progress=False)
    # The grid's 8 shards are found done; only FGSM's 2 run.
    assert (res["shards_run"], res["shards_total"]) == (2, 10), res
    status = sweep_status(out)
    assert status["complete"] and status["runs_total"] == 5
    # The same run names with other settings (n): refused, naming what changed.
    changed = _file(tmp_path, trained, PGD_GRID + '\n[[attack]]\nname = "fgsm"\nn = 3\n')
    with pytest.raises(UserError, match="run fgsm: n"):
        run_sweep(changed, out, local=True, progress=False)
    removed = _file(tmp_path, trained, '[[attack]]\nname = "fgsm"\n')
    with pytest.raises(UserError, match="runs removed"):
        run_sweep(removed, out, local=True, progress=False)


def test_the_store_pages_xarray_example_runs(grid_store, capsys):
    import xarray  # noqa: F401 - a test dependency: fail, not skip, without it
    page = (Path(__file__).resolve().parents[1] / "docs" / "store.md").read_text()
    section = page[page.index("## Reading it"):]
    code = section[section.index("```python") + len("```python"):]
    code = code[:code.index("```")]
    group = "mlgcn/demo/pgd@eps=0.3,iterations=3,step=0.05"
    code = code.replace('"runs/demo/store.zarr"', repr(str(grid_store))).replace('"mlgcn/demo/pgd"', repr(group))
    exec(compile(code, "docs/store.md", "exec"), {})
    out = capsys.readouterr().out.splitlines()
    rate = [r for r in collect(grid_store)[0] if r["run"] == group.split("/")[-1]][0]["success_final"][0]
    assert "'sample': 6" in out[0] and np.isclose(float(out[1]), rate), out


def test_python_api_results_go_into_a_store_and_report(trained, demo_root, tmp_path):
    from engine import attacks, data, models

    model = models.load(trained["mlgcn"])
    ds = data.load("demo", root=demo_root, size=20)
    ids = [0, 3, 5, 8]
    x, y = data.stack(ds, ids)
    res = attacks.run(model, x, attack="fgm", seed=0, sample_ids=ids, eps=2.0)
    out = tmp_path / "api.zarr"
    kw = dict(model="mine", dataset="demo", attack="fgm", params={"eps": 2.0}, sample_index=ids, labels_true=y,
              label_names=model.label_names)
    path = results.write_run(out, res, **kw)
    assert path == "mine/demo/fgm@eps=2.0" and results.write_run(out, res, **kw) == path  # reopened, not redone
    rows, _ = collect(out)
    assert len(rows) == 1 and rows[0]["n"] == 4 and rows[0]["params"] == {"eps": 2.0}
    counts = res.label_count_final.numpy()
    assert rows[0]["success_final"][0] == pytest.approx(float((counts >= rows[0]["exp_labels"][0]).mean()))
    render(out, tmp_path / "rep")
    assert "| FGM (eps=2.0) |" in (tmp_path / "rep" / "tables.md").read_text()
    # The same run name over another config (changed in the stored fingerprint by hand): refused.
    import zarr

    run = zarr.open_group(str(out), mode="r+")[path]
    run.attrs["fingerprint"] = {**run.attrs["fingerprint"], "config": {"eps": 1.0}}
    with pytest.raises(UserError, match="differs in: config"):
        results.write_run(out, res, **kw)


def test_whole_store_opens_as_an_xarray_datatree(grid_store):
    import xarray as xr  # a test dependency (pyproject: test extras)

    tree = xr.open_datatree(str(grid_store), engine="zarr", consolidated=False)
    run = tree["mlgcn/demo/pgd@eps=0.03,iterations=3,step=0.05"]
    assert run.ds.norms.dims == ("sample", "norm") and "candidates" in tree["mlgcn/demo"].ds
