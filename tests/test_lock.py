"""One writer per store: the lease file (engine.results.lock) with real processes, no mocks."""

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from engine import results
from engine.errors import UserError
from engine.results import lock as lk
from engine.runtime import runner
from engine.runtime.sweep import run_sweep, sweep_status


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_second_writer_is_refused_naming_the_first(tmp_path):
    with lk.StoreLock(tmp_path / "s.zarr", "sml sweep"):
        lease = json.loads((tmp_path / "s.zarr.lock").read_text())
        assert lease["pid"] == os.getpid() and lease["host"] == socket.gethostname()
        with pytest.raises(UserError, match=rf"another driver is writing this store \(sml sweep on host "
                                            rf"{socket.gethostname()}, pid {os.getpid()}, started "):
            lk.StoreLock(tmp_path / "s.zarr", "sml attack").acquire()
    assert not (tmp_path / "s.zarr.lock").exists()  # released
    lk.StoreLock(tmp_path / "s.zarr", "sml attack").acquire().release()


def test_lease_of_a_dead_driver_is_taken_over(tmp_path, caplog):
    path = tmp_path / "s.zarr.lock"
    path.write_text(json.dumps({"host": socket.gethostname(), "pid": _dead_pid(), "started": "then"}))
    with lk.StoreLock(tmp_path / "s.zarr", "sml sweep") as mine:
        assert json.loads(path.read_text())["token"] == mine.token
    assert "taking over the lease of a driver that is gone" in caplog.text


def test_lease_from_another_host_goes_stale_by_its_heartbeat(tmp_path, monkeypatch):
    path = tmp_path / "s.zarr.lock"
    path.write_text(json.dumps({"host": "elsewhere", "pid": 1, "started": "then"}))
    with pytest.raises(UserError, match="host elsewhere, pid 1"):  # fresh: alive as far as we can tell
        lk.StoreLock(tmp_path / "s.zarr", "sml sweep").acquire()
    old = time.time() - lk.STALE_S - 5
    os.utime(path, (old, old))
    lk.StoreLock(tmp_path / "s.zarr", "sml sweep").acquire().release()


def test_heartbeat_renews_the_lease(tmp_path, monkeypatch):
    monkeypatch.setattr(lk, "HEARTBEAT_S", 0.1)
    path = tmp_path / "s.zarr.lock"
    with lk.StoreLock(tmp_path / "s.zarr", "sml sweep"):
        first = json.loads(path.read_text())
        old = time.time() - 1000
        os.utime(path, (old, old))
        time.sleep(0.5)
        assert time.time() - path.stat().st_mtime < 5
        assert json.loads(path.read_text())["token"] == first["token"]


def test_sweep_refuses_a_store_another_driver_writes_and_status_still_reads_it(trained, demo_root, tmp_path):
    out = tmp_path / "s.zarr"
    toml = tmp_path / "g.toml"
    toml.write_text(f'[protocol]\nn = 4\nchunk_size = 4\n[[model]]\ncheckpoint = "{trained["mlgcn"]}"\n'
                    f'root = "{demo_root}"\n[[attack]]\nname = "fgsm"\n')
    run_sweep(toml, out, local=True, progress=False)
    before = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from engine.results.lock import StoreLock; "
                               f"StoreLock({str(out)!r}, 'sml sweep').acquire(); print('held', flush=True); "
                               "time.sleep(60)"], stdout=subprocess.PIPE, text=True,
                              cwd=os.path.dirname(os.path.dirname(__file__)))
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            run_sweep(toml, out, local=True, progress=False)
        with pytest.raises(UserError, match=f"pid {holder.pid}"):
            runner.attack_checkpoint(trained["mlgcn"], "fgm", out, n=4, chunk_size=4, root=demo_root,
                                     progress=False)
        assert sweep_status(out)["shards_done"] == 1  # readers need no lease
        after = sorted(str(p.relative_to(out)) for p in out.rglob("*"))
        assert after == before, set(after) ^ set(before)  # nothing touched
    finally:
        holder.kill()
        holder.wait()
    # The holder died without releasing: the next writer takes the lease over.
    res = runner.attack_checkpoint(trained["mlgcn"], "fgm", out, n=4, chunk_size=4, root=demo_root, progress=False)
    assert res["n"] == 4 and not (tmp_path / "s.zarr.lock").exists()
    assert results.open_store(out, "r")["mlgcn/demo/fgm"] is not None
