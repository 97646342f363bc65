"""A damaged store is an error naming the run, array and chunk, never silently wrong tables."""

import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import data, results
from engine.errors import UserError
from engine.report import render
from engine.results.format import PARTIAL
from engine.runtime import runner

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture()
def store(trained, demo_root, tmp_path):
    out = tmp_path / "s.zarr"
    runner.attack_checkpoint(trained["mlgcn"], "fgsm", out, n=6, chunk_size=3, root=demo_root, progress=False)
    return out


def test_every_chunk_is_written_even_all_fill(store):
    # `failed` is all False (the fill value): its chunks must still exist, or a deleted one could not be told apart.
    assert sorted(p.name for p in (store / "mlgcn/demo/fgsm/failed/c").iterdir()) == ["0", "1"]


def test_deleted_chunk_is_named_on_report_and_resume(store, trained, demo_root, tmp_path):
    (store / "mlgcn/demo/fgsm/label_count_final/c/1").unlink()
    with pytest.raises(UserError, match=r"chunk 1 of label_count_final is missing although the run marks it done"):
        render(store, tmp_path / "rep")
    with pytest.raises(UserError, match=r"chunk 1 of label_count_final is missing"):
        runner.attack_checkpoint(trained["mlgcn"], "fgsm", store, n=6, chunk_size=3, root=demo_root, progress=False)
    p = subprocess.run([sys.executable, "-m", "cli.main", "report", str(store), "--out", str(tmp_path / "r2")],
                       capture_output=True, text=True, cwd=REPO)
    assert p.returncode == 2 and p.stderr.count("\n") == 1 and "mlgcn/demo/fgsm" in p.stderr, p.stderr
    assert not (tmp_path / "r2" / "tables.md").exists()


def test_flipped_byte_fails_the_checksum(store, tmp_path):
    chunk = store / "mlgcn/demo/fgsm/label_count_best/c/0"
    data = bytearray(chunk.read_bytes())
    data[len(data) // 2] ^= 0x5A
    chunk.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"array label_count_best cannot be decoded"):
        render(store, tmp_path / "rep")


def test_other_data_at_resume_is_refused_a_copy_is_not(store, trained, demo_root, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(demo_root, copy)
    # An identical copy at another path: accepted, the finished run is found done.
    res = runner.attack_checkpoint(trained["mlgcn"], "fgsm", store, n=6, chunk_size=3, root=copy, progress=False)
    assert res["chunks_run"] == 0
    # One attacked image changed: refused, naming the data root and the digests.
    cand = np.asarray(zarr.open_group(str(store), mode="r")["mlgcn/demo/candidates"][:])
    ds = data.load("demo", root=copy, size=20)
    victim = ds.paths[int(cand[0])]
    raw = bytearray(victim.read_bytes())
    raw[-20] ^= 0x01
    victim.write_bytes(bytes(raw))
    with pytest.raises(UserError, match=r"data here differ from those mlgcn/demo in the store was made from"):
        runner.attack_checkpoint(trained["mlgcn"], "fgsm", store, n=6, chunk_size=3, root=copy, progress=False)


def test_report_allow_incomplete_shows_the_intact_runs(store, trained, demo_root, tmp_path):
    runner.attack_checkpoint(trained["mlgcn"], "fgm", store, n=6, chunk_size=3, root=demo_root, progress=False)
    (store / "mlgcn/demo/fgsm/pred/c/0/0").unlink()
    with pytest.raises(UserError, match="chunk 0 of pred is missing"):
        render(store, tmp_path / "rep")
    render(store, tmp_path / "rep", ("md", "json"), allow_incomplete=True)
    md = (tmp_path / "rep" / "tables.md").read_text()
    assert "| FGM |" in md and "| FGSM |" not in md
    assert "Damaged runs, left out of these tables" in md and "chunk 0 of pred is missing" in md


def _make(group, key, fp):
    return results.create_run(group, key, n=4, num_labels=3, image_shape=None, chunk_size=2, attrs={"attack": "x"},
                              sample_index=np.arange(4), labels_true=np.zeros((4, 3), bool), fingerprint=fp)


def test_run_creation_never_touches_another_writers_half_made_group(tmp_path):
    root = results.open_store(tmp_path / "s.zarr")
    g = results.model_group(root, "m", "d")
    # Half-made groups of the same run: one whose maker (this process) is alive, one whose maker is gone.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True).stdout.strip()
    for tag, pid in (("live", os.getpid()), ("dead", int(dead))):
        g.create_group(f"r{PARTIAL}{tag}", attributes={"partial_of": {"host": socket.gethostname(), "pid": pid}})
    run = _make(g, "r", {"a": 1, "data_digest": "abc"})
    names = set(g.group_keys())
    assert f"r{PARTIAL}live" in names and f"r{PARTIAL}dead" not in names and "r" in names
    assert "partial_of" not in run.attrs and run.attrs["fingerprint"]["data_digest"] == "abc"
    # The report sees only the finished run, never a half-made one.
    assert [k for *_, k, _ in results.iter_runs(root)] == ["r"]
    # Same fingerprint reopens; other data (digest) is refused naming it, as is a fingerprint without one.
    assert _make(g, "r", {"a": 1, "data_digest": "abc"}).path == run.path
    with pytest.raises(UserError, match="differs in: data_digest"):
        _make(g, "r", {"a": 1, "data_digest": "xyz"})
    with pytest.raises(UserError, match="differs in: data_digest"):
        _make(g, "r", {"a": 1})
