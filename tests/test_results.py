"""The results package: one builder of a run's attributes for every writer, and a store written in
another format refused wherever it is opened (one line, exit 2, nothing written)."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import cli.main
from engine import attacks, data, models, results
from engine.errors import UserError
from engine.runtime.sweep import run_sweep

RUN = "mlgcn/demo/fgsm"


def _listing(path) -> dict[str, tuple[int, int]]:
    """Every file under ``path`` with its size and modification time: what 'nothing written' compares."""
    return {str(p.relative_to(path)): (p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.rglob("*"))
            if p.is_file()}


def _refused(argv, capsys, found: str) -> str:
    assert cli.main.main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert f"{RUN}: written in {found}; this engine reads format {results.FORMAT} only: re-run into a new --out" \
        in err, err
    return err


@pytest.fixture()
def swept(trained, demo_root, tmp_path):
    """A store made by a sweep (one fgsm run), and the sweep file that made it."""
    toml = tmp_path / "g.toml"
    toml.write_text(f'[protocol]\nn = 4\nchunk_size = 2\n[[model]]\ncheckpoint = "{trained["mlgcn"]}"\n'
                    f'root = "{demo_root}"\n[[attack]]\nname = "fgsm"\n')
    out = tmp_path / "s.zarr"
    run_sweep(toml, out, local=True, progress=False)
    return out, toml


@pytest.mark.parametrize("found", [2, None])
def test_a_run_of_another_format_is_refused_everywhere_with_nothing_written(swept, trained, demo_root, tmp_path,
                                                                            capsys, found):
    out, toml = swept
    run = zarr.open_group(str(out), mode="r+")[RUN]
    if found is None:
        del run.attrs["store_format"]
    else:
        run.attrs["store_format"] = found
    what = "store format 2" if found else "an older store format (no store_format attribute)"
    before = _listing(out)
    _refused(["report", out, "--out", tmp_path / "rep"], capsys, what)
    assert not (tmp_path / "rep").exists()
    _refused(["export", out, "--csv", tmp_path / "csv"], capsys, what)
    assert not (tmp_path / "csv").exists()
    _refused(["sweep", "--status", out], capsys, what)
    _refused(["sweep", toml, "--out", out, "--local", "--no-progress"], capsys, what)
    _refused(["attack", "--checkpoint", trained["mlgcn"], "--attack", "fgsm", "--out", out, "--n", 4,
              "--chunk-size", 2, "--root", demo_root, "--no-progress"], capsys, what)
    assert _listing(out) == before
    assert not out.with_name(out.name + ".lock").exists()


def test_write_run_refuses_a_run_of_another_format(trained, demo_root, tmp_path):
    model = models.load(trained["mlgcn"])
    ds = data.load("demo", root=demo_root, size=20)
    ids = [0, 3, 5]
    x, y = data.stack(ds, ids)
    res = attacks.run(model, x, attack="fgsm", seed=0, sample_ids=ids)
    out = tmp_path / "api.zarr"
    kw = dict(model="mine", dataset="demo", attack="fgsm", sample_index=ids, labels_true=y,
              label_names=model.label_names)
    path = results.write_run(out, res, **kw)
    zarr.open_group(str(out), mode="r+")[path].attrs["store_format"] = 2
    before = _listing(out)
    want = rf"mine/demo/fgsm: written in store format 2; this engine reads format {results.FORMAT}"
    with pytest.raises(UserError, match=want):
        results.write_run(out, res, **kw)
    assert _listing(out) == before


def test_a_model_group_without_a_data_digest_is_refused(swept, trained, demo_root, tmp_path, capsys):
    out, _ = swept
    del zarr.open_group(str(out), mode="r+")["mlgcn/demo"].attrs["data_digest"]
    before = _listing(out)
    assert cli.main.main(["attack", "--checkpoint", str(trained["mlgcn"]), "--attack", "fgm", "--out", str(out),
                          "--n", "4", "--root", str(demo_root), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "mlgcn/demo: written in an older store format" in err, err
    assert _listing(out) == before


def test_write_run_and_the_runner_build_the_same_attributes(swept, trained, demo_root):
    """One builder (engine.results.attrs): a run of the Python API and one of `sml attack` / a sweep
    describe themselves with the same attribute keys, and both read back through the same reader."""
    out, _ = swept
    model = models.load(trained["mlgcn"])
    ds = data.load("demo", root=demo_root, size=20)
    ids = [0, 3, 5, 8]
    x, y = data.stack(ds, ids)
    res = attacks.run(model, x, attack="fgsm", seed=0, sample_ids=ids)
    path = results.write_run(out, res, model="mine", dataset="demo", attack="fgsm", sample_index=ids, labels_true=y,
                             label_names=model.label_names)
    root = results.open_store(out, "r")
    api, ran = dict(root[path].attrs), dict(root[RUN].attrs)
    assert set(api) == set(ran)
    assert set(api["fingerprint"]) >= {"attack", "config", "target", "seed"} <= set(ran["fingerprint"])
    assert api["store_format"] == ran["store_format"] == results.FORMAT
    assert api["source"] == "engine.results.write_run" and ran["source"] == "engine.runtime.runner.open_run"
    assert sorted(r.path for *_, r in results.iter_runs(root)) == [path, RUN]
    mine, theirs = results.summarize(root[path]), results.summarize(root[RUN])
    assert set(mine) == set(theirs) and theirs["n"] == 4
    counts = res.label_count_final.numpy()
    assert mine["n"] == 4 and mine["success_final"][0] == pytest.approx(float((counts >= mine["exp_labels"][0]).mean()))
    assert np.array_equal(results.read(root[path], "sample_index"), ids)
