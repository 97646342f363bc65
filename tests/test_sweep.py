"""Sweeps: determinism across pool sizes, actor and driver kills, status, bad input, multi-node join.

One Ray session is shared by the module (start-up costs seconds); drivers that must be their own
process (driver kill, unreachable address, joining a `ray start` head) run as subprocesses.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from engine import attacks, protocol
from engine.errors import UserError
from engine.runtime import sweep as sw

REPO = Path(__file__).resolve().parents[1]
# A separate driver process: `sml` as the module it is.
SML = [sys.executable, "-m", "cli.main"]
RAY_BIN = Path(sys.executable).parent / "ray"


def _grid(trained, **protocol) -> str:
    """A small demo sweep: both models x a one-step, an iterative and the LP attack."""
    proto = {"n": 8, "chunk_size": 4, "batch_size": 2, **protocol}
    lines = ["[sweep]", 'name = "test"', "", "[protocol]"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in proto.items()]
    for fam in ("mlgcn", "mlliw"):
        lines += ["", "[[model]]", f'checkpoint = "{trained[fam]}"', f'key = "{fam}"']
    lines += ["", "[[attack]]", 'name = "fgsm"',
              "", "[[attack]]", 'name = "pgd"', "params = { iterations = 3 }",
              "", "[[attack]]", 'name = "mlalp"', "params = { iterations = 2 }", "n = 4"]
    return "\n".join(lines) + "\n"


def _arrays(path) -> dict[str, np.ndarray]:
    """Every array in a store, read with plain zarr (no engine code), but ``provenance``: how a shard
    was made (host, times, threads) is not a result."""
    out: dict[str, np.ndarray] = {}

    def walk(g, prefix):
        for name, a in g.arrays():
            if name != "provenance":
                out[prefix + name] = np.asarray(a[:])
        for name, sub in g.groups():
            walk(sub, f"{prefix}{name}/")

    walk(zarr.open_group(str(path), mode="r"), "")
    return out


def _assert_same(a: dict, b: dict) -> None:
    assert sorted(a) == sorted(b)
    differ = [k for k in a
              if not (a[k].shape == b[k].shape and a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]))]
    assert not differ, f"arrays differ: {differ}"


def _env() -> dict[str, str]:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", PYTHONPATH=str(REPO))
    env.pop(sw.STALL_ENV, None)
    return env


def _wait_for_head(head: subprocess.Popen, port: int, timeout: float = 60) -> None:
    """Until a `ray start --head` answers on ``port`` (its output in the failure if it exits)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert head.poll() is None, head.stdout.read().decode()[-3000:]
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.5)


def _wait_for_nodes(port: int, n: int, timeout: float = 60) -> None:
    """Until the cluster at ``port`` lists ``n`` live nodes (`ray status`)."""
    deadline = time.monotonic() + timeout
    out = ""
    while time.monotonic() < deadline:
        out = subprocess.run([str(RAY_BIN), "status", "--address", f"127.0.0.1:{port}"], env=_env(),
                             capture_output=True, text=True, timeout=30).stdout
        active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
        if active.count("node_") >= n:
            return
        time.sleep(1)
    raise AssertionError(f"the cluster never showed {n} nodes:\n{out[-2000:]}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# ---------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def ray_session():
    """One local Ray for the module; token auth off so that subprocess drivers can join it."""
    import ray

    old = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    # sml_test_gpu stands in for a GPU in the routing test; it changes nothing elsewhere.
    ray.init(address="local", num_cpus=2, resources={"sml_test_gpu": 1}, include_dashboard=False,
             log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()
        if old is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = old


@pytest.fixture(scope="module")
def grid(tmp_path_factory, trained):
    folder = tmp_path_factory.mktemp("sweep")
    path = folder / "test.toml"
    path.write_text(_grid(trained))
    return path


@pytest.fixture(scope="module")
def reference(grid, tmp_path_factory):
    """The grid run --local (no Ray): what every other way of running it must reproduce exactly."""
    import torch

    out = tmp_path_factory.mktemp("ref") / "local.zarr"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one thread here, two in the 1-actor run: results must not care
    try:
        res = sw.run_sweep(grid, out, local=True, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert res["shards_done"] == res["shards_total"] == res["shards_run"] > 0
    return out, _arrays(out), res


# ---------------------------------------------------------------- determinism
@pytest.mark.parametrize("workers", [1, 2])
def test_same_results_any_pool_size(ray_session, grid, reference, tmp_path, workers):
    out = tmp_path / f"w{workers}.zarr"
    res = sw.run_sweep(grid, out, workers=workers, progress=False)
    assert res["mode"] == "ray" and res["actors"] == {"cpu": workers}
    assert res["threads_per_actor"] == {"cpu": max(1, 2 // workers)}
    assert res["shards_run"] == reference[2]["shards_total"]
    _assert_same(_arrays(out), reference[1])
    # A second run resumes into a finished store: nothing is redone.
    again = sw.run_sweep(grid, out, workers=workers, progress=False)
    assert again["shards_run"] == 0 and again["shards_done_before"] == res["shards_total"]


def test_lp_shards_go_to_cpu_only_actors(ray_session, grid, reference, tmp_path):
    # With a (stand-in) accelerator, gradient attacks run on device actors and MLA-LP on CPU-only ones.
    out = tmp_path / "routed.zarr"
    res = sw.run_sweep(grid, out, progress=False, device_resource="sml_test_gpu")
    assert res["actors"] == {"device": 1, "cpu": 1}
    lp_shards = 2  # 2 models x ceil(4 / 4)
    assert res["shards_by_pool"] == {"device": res["shards_total"] - lp_shards, "cpu": lp_shards}
    _assert_same(_arrays(out), reference[1])


def test_pools_from_resources():
    cpu = sw.plan_pools({"CPU": 16}, workers=None, needs_cpu_pool=True, device="auto", cpu_actor_cpus=4)
    assert [(p.name, p.size, p.threads, p.options) for p in cpu] == [("cpu", 16, 1, {"num_cpus": 1})]
    two = sw.plan_pools({"CPU": 16}, workers=2, needs_cpu_pool=False, device="auto", cpu_actor_cpus=4)
    assert (two[0].size, two[0].threads, two[0].options) == (2, 8, {"num_cpus": 8})
    many = sw.plan_pools({"CPU": 2}, workers=4, needs_cpu_pool=False, device="auto", cpu_actor_cpus=4)
    assert (many[0].size, many[0].threads, many[0].options) == (4, 1, {"num_cpus": 0.5})
    gpu = sw.plan_pools({"CPU": 32, "GPU": 4}, workers=None, needs_cpu_pool=True, device="auto", cpu_actor_cpus=4)
    dev, lp = gpu
    assert (dev.name, dev.size, dev.device, dev.options["num_gpus"]) == ("device", 4, "cuda", 1)
    assert (lp.name, lp.size, lp.options, lp.pool_workers) == ("cpu", 7, {"num_cpus": 4}, 4)
    assert "num_gpus" not in lp.options


# ---------------------------------------------------------------- fault tolerance
def test_actor_killed_mid_shard_is_replaced(ray_session, grid, reference, tmp_path, monkeypatch):
    stall = tmp_path / "stall"
    stall.mkdir()
    monkeypatch.setenv(sw.STALL_ENV, str(stall))  # forwarded to the actors: the first one to get there stalls
    killed = {}

    def killer():
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            f = stall / "stalled"
            if f.exists() and f.read_text().strip():
                pid = int(f.read_text())
                os.kill(pid, signal.SIGKILL)
                killed["pid"] = pid
                return
            time.sleep(0.05)

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    out = tmp_path / "killed.zarr"
    res = sw.run_sweep(grid, out, workers=2, progress=False)
    t.join(5)
    assert killed, "no actor stalled"
    assert res["actor_deaths"] == 1
    assert res["shards_done"] == res["shards_total"] == reference[2]["shards_total"]
    # Done once: every shard ran exactly once to completion, the killed one on another actor.
    assert res["shards_run"] + res["shards_skipped"] == res["shards_total"]
    _assert_same(_arrays(out), reference[1])


def test_driver_killed_then_resumed(ray_session, grid, reference, tmp_path):
    out = tmp_path / "resume.zarr"
    stall = tmp_path / "stall"
    stall.mkdir()
    # One of the driver's actors stalls mid-shard, so the kill lands with a shard half done.
    env = dict(_env(), **{sw.STALL_ENV: str(stall)})
    cmd = [*SML, "sweep", str(grid), "--out", str(out), "--address", ray_session, "--workers", "2", "--no-progress"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 150
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                if sw.sweep_status(out)["shards_done"] >= 3 and (stall / "stalled").exists():
                    break
            except (UserError, KeyError, FileNotFoundError, ValueError):
                pass  # not created yet
            time.sleep(0.1)
        assert proc.poll() is None, proc.stdout.read().decode()[-3000:]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    time.sleep(1.0)  # the killed driver's actors go with it
    # The store is readable at any moment and what is marked done is complete and final.
    st = sw.sweep_status(out)
    assert 3 <= st["shards_done"] < st["shards_total"]
    part, ref = _arrays(out), reference[1]
    for run in st["runs"]:
        if run["group"] is None:
            continue
        g = run["group"]
        done = part[f"{g}/done"]
        c = int(zarr.open_group(str(out), mode="r")[g].attrs["chunk_size"])
        for k in np.nonzero(done)[0]:
            for name in ("label_count_final", "label_count_best", "pred", "norms", "iters", "reason"):
                assert np.array_equal(part[f"{g}/{name}"][k * c:(k + 1) * c], ref[f"{g}/{name}"][k * c:(k + 1) * c])
    res = sw.run_sweep(grid, out, workers=2, progress=False)
    assert res["shards_done_before"] >= 3
    assert res["shards_done_before"] + res["shards_run"] + res["shards_skipped"] == res["shards_total"]
    _assert_same(_arrays(out), ref)


# ---------------------------------------------------------------- status
def test_status_json(reference, capsys):
    import cli.main

    out, _, res = reference
    assert cli.main.main(["sweep", "--status", str(out)]) == 0
    st = json.loads(capsys.readouterr().out)
    assert st["shards_total"] == st["shards_done"] == res["shards_total"]
    assert st["samples_done"] == st["samples_total"] == res["samples_run"]
    assert st["complete"] and st["exact"] and st["sweep"] == "test" and st["runs_total"] == 6


def test_status_of_plain_store_is_an_error(tmp_path, capsys):
    import cli.main

    zarr.open_group(str(tmp_path / "plain.zarr"), mode="w", zarr_format=3)
    assert cli.main.main(["sweep", "--status", str(tmp_path / "plain.zarr")]) == 2
    assert "no sweep" in capsys.readouterr().err


# ---------------------------------------------------------------- bad input
BAD = [
    # (text after the model tables, expected fragments of the message)
    ('[[attack]]\nname = "pgd"\nchunksize = 5\n', [":LINE:", "unknown key 'chunksize'", "valid:", "chunk_size"]),
    ('[[attack]]\nname = "pgdd"\n', [":LINE:", "unknown attack 'pgdd'", "valid:", "fgsm", "mlalp"]),
    ('[[attack]]\nname = "mlcw"\npreset = "fast"\n', [":LINE:", "unknown preset 'fast' for mlcw", "paper", "demo"]),
    ('[[attack]]\nname = "pgd"\ntargets = ["show-more"]\n', [":LINE:", "unknown target 'show-more'", "hiding-all"]),
    ('[[attack]]\nname = "pgd"\nparams = { epss = 0.1 }\n', [":LINE:", "epss", "valid:", "eps"]),
    ('[[attack]]\nname = "pgd"\norder = "random"\n', [":LINE:", "unknown order 'random'", "seeded, first"]),
    ('[[attack]]\nname = "pgd"\nn = 0\n', [":LINE:", "n must be in 1..10000000, got 0"]),
    ('[[attack]]\nname = "pgd"\nbatch_size = "big"\n', [":LINE:", "batch_size must be an integer"]),
    ('[[attack]]\nname = "pgd"\n[attacks]\nx = 1\n', [":LINE:", "unknown table or key 'attacks'", "[[attack]]"]),
    ('[[attack]]\nname = "pgd"\n\n[[attack]]\nname = "pgd"\n', [":LINE:", "repeats run 'pgd'"]),
    ('[[attack]]\nname = "reduction_test"\n', [":LINE:", "unknown attack"]),
    ('[[attack]]\nname = "pgd"\ntarget = "reduction"\n', [":LINE:", "needs target_label"]),
    ('[sweep]\ndevice = "tpu"\n[[attack]]\nname = "pgd"\n', [":LINE:", "unknown device 'tpu'", "auto, cpu, cuda"]),
    ('[[attack]]\npreset = "paper"\n', [":LINE:", "[[attack]] #1 needs name = one of:", "fgsm", "mlalp"]),
    ('[[model]]\nkey = "other"\n[[attack]]\nname = "pgd"\n',
     [":LINE:", "[[model]] #2: no model: give a checkpoint"]),
]


@pytest.mark.parametrize("tail,expect", BAD, ids=[b[1][1][:24] for b in BAD])
def test_bad_sweep_file_names_line_and_allowed(tmp_path, tail, expect):
    (tmp_path / "m.pt").write_bytes(b"")  # parsing only checks that it exists
    head = '[[model]]\ncheckpoint = "m.pt"\n\n[sweep]\nbase = "."\n\n' if "[sweep]" not in tail else \
        '[[model]]\ncheckpoint = "m.pt"\n\n'
    text = head + tail
    path = tmp_path / "bad.toml"
    path.write_text(text)
    with pytest.raises(UserError) as e:
        sw.load_sweep(path)
    msg = str(e.value)
    assert msg.startswith(str(path) + ":"), msg
    line = int(msg[len(str(path)) + 1:].split(":", 1)[0])
    assert 1 <= line <= len(text.splitlines())
    for frag in expect:
        assert frag.replace(":LINE:", f":{line}:") in msg, msg
    # The line named is the one with the offending key (or its table).
    offending = text.splitlines()[line - 1]
    assert any(w in offending for w in ("=", "[")), offending


def test_bad_model_entries(tmp_path):
    ck = tmp_path / "m.pt"
    ck.write_bytes(b"")
    p = tmp_path / "m.toml"
    p.write_text('[[model]]\ncheckpoint = "nope.pt"\n[[attack]]\nname = "pgd"\n')
    with pytest.raises(UserError, match=r"m\.toml:2: .*checkpoint .*nope\.pt not found"):
        sw.load_sweep(p)
    p.write_text(f'[[model]]\ncheckpoint = "{ck}"\ndataset = "voc2099"\n[[attack]]\nname = "pgd"\n')
    with pytest.raises(UserError, match=r"m\.toml:3: unknown dataset 'voc2099'; valid: .*demo"):
        sw.load_sweep(p)
    p.write_text(f'[[model]]\ncheckpoint = "{ck}"\nbackbone = "x"\n[[attack]]\nname = "pgd"\n')
    with pytest.raises(UserError, match=r"m\.toml:3: \[\[model\]\] #1: unknown key 'backbone'; valid: checkpoint"):
        sw.load_sweep(p)


def test_every_shipped_sweep_names_registered_attacks_and_presets():
    files = sorted((REPO / "sweeps").glob("*.toml"))
    assert len(files) >= 5
    for path in files:
        runs = sw.load_sweep(path, check_files=False).runs
        assert runs, path.name
        for r in runs:
            assert r.spec.attack in attacks.names(), (path.name, r.spec.key)
            assert r.spec.preset in attacks.get(r.spec.attack).presets, (path.name, r.spec.key)


def test_shipped_sweep_files_parse():
    paper = sw.load_sweep(REPO / "sweeps/paper.toml", datasets=["voc2007", "voc2012", "nuswide", "coco"],
                          check_files=False)
    assert len(paper.models) == 8 and len(paper.runs) == 8 * 9
    assert {m.key for m in paper.models} == {"mlgcn", "mlliw"}
    demo = sw.load_sweep(REPO / "sweeps/demo.toml", check_files=False)
    assert {r.spec.preset for r in demo.runs if r.spec.attack == "mlcw"} == {"demo"}
    # Relative paths resolve against the folder above the file's folder: the repository root.
    assert demo.models[0].checkpoint == str(REPO / "runs/demo/ckpt/mlgcn.pt")
    grid = sw.load_sweep(REPO / "sweeps/demo_grid.toml", check_files=False)
    assert len(grid.runs) == 2 * 8 and grid.runs[0].spec.key == "pgd@eps=0.01,iterations=10"
    rel = sw.load_sweep(REPO / "sweeps/released.toml", datasets=["voc2007", "voc2012", "nuswide", "coco"],
                        check_files=False)
    assert len(rel.models) == 8 and {r.spec.preset for r in rel.runs} == {"released"}
    assert {(r.spec.order, r.spec.rounding) for r in rel.runs} == {("first", "floor")}
    assert {m.split for m in rel.models} == {"val", "val2014"}
    voc = [m for m in rel.models if m.dataset.startswith("voc")]
    assert all(m.load_kw() == {"difficult": "negative", "source": "csv"} for m in voc)
    # ML-CW and MLA-LP run in the code's batches (10, 2, 32): their shards must hold whole batches.
    assert all(r.spec.chunk_size % 160 == 0 for r in rel.runs if r.spec.attack in ("mlcw", "mlalp"))
    # The released code's ASL runs (src/demo_asl_*.py): TResNet-XL on VOC, TResNet-L on COCO and
    # NUS-WIDE, raw pixels at 448, VOC2007 test, ML-CW / MLA-LP in batches of 24.
    asl = sw.load_sweep(REPO / "sweeps/asl.toml", datasets=["voc2007", "voc2012", "nuswide", "coco"],
                        check_files=False)
    assert [(m.dataset, m.asl, m.split, m.input_size) for m in asl.models] == [
        ("voc2007", "tresnet_xl", "test", 448), ("voc2012", "tresnet_xl", "val", 448),
        ("nuswide", "tresnet_l", "val", 448), ("coco", "tresnet_l", "val2014", 448)]
    assert len(asl.runs) == 4 * 9 and {r.spec.preset for r in asl.runs} == {"released"}
    assert {(r.spec.order, r.spec.rounding) for r in asl.runs} == {("first", "floor")}
    assert all(r.spec.chunk_size % protocol.cell("asl", m.dataset).batch == 0 and r.spec.samples("asl", m.dataset)
               == 1000 for r in asl.runs for m in [asl.models[r.model]])


def test_foreign_store_is_refused(grid, reference, tmp_path, trained):
    out = reference[0]
    other = tmp_path / "other.toml"
    other.write_text(_grid(trained, n=6))
    with pytest.raises(UserError) as e:
        sw.run_sweep(other, out, local=True, progress=False)
    msg = str(e.value)
    assert "holds sweep 'test'" in msg and "never mixed" in msg and "new --out" in msg and "--status" in msg
    assert "run pgd: n" in msg or "run fgsm: n" in msg, msg


def test_unreachable_address_fails_fast(grid, tmp_path):
    port = _free_port()  # nothing listens there
    for addr in (f"127.0.0.1:{port}", "10.255.255.1:6379"):
        t0 = time.monotonic()
        p = subprocess.run([*SML, "sweep", str(grid), "--out", str(tmp_path / "x.zarr"), "--address", addr],
                           env=_env(), capture_output=True, text=True, timeout=60)
        took = time.monotonic() - t0
        assert p.returncode == 2, p.stderr[-2000:]
        assert f"cannot reach a Ray cluster at {addr}" in p.stderr and "ray start --head" in p.stderr
        assert took < 30, took


# ---------------------------------------------------------------- multi-node: join a `ray start` head
def test_join_head_on_loopback(grid, reference, tmp_path):
    assert RAY_BIN.exists(), f"{RAY_BIN}: the ray CLI is missing (pip install ray)"
    port = _free_port()
    tmp = Path(f"/tmp/sml-ray-{os.getpid()}-{port}")  # short: Ray's socket paths must stay < 108 bytes
    head = subprocess.Popen([str(RAY_BIN), "start", "--head", "--port", str(port), "--node-ip-address", "127.0.0.1",
                             "--num-cpus", "2", "--include-dashboard", "false", "--disable-usage-stats", "--block",
                             "--temp-dir", str(tmp)],
                            env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        _wait_for_head(head, port)
        out = tmp_path / "joined.zarr"
        p = subprocess.run([*SML, "sweep", str(grid), "--out", str(out), "--address", f"127.0.0.1:{port}",
                            "--workers", "2", "--no-progress", "--json"],
                           env=_env(), capture_output=True, text=True, timeout=150)
        assert p.returncode == 0, p.stderr[-3000:]
        res = json.loads(p.stdout)
        assert res["mode"] == "ray" and res["actors"] == {"cpu": 2} and res["shards_done"] == res["shards_total"]
        _assert_same(_arrays(out), reference[1])
    finally:
        head.terminate()  # `ray start --block` stops its node's processes on SIGTERM
        try:
            head.wait(40)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_driver_peak_rss_is_the_process_own_not_its_parents():
    """Linux keeps ru_maxrss across exec: a driver started from a big process must not report it."""
    import resource

    import torch

    # 1 GiB touched in this (the parent) process: more than a fresh driver's own peak (torch and
    # triton imported: ~0.75 GiB), so the two cannot be confused whatever the parent loaded before.
    ballast = torch.ones(256 * 2**20)
    parent_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    assert parent_mb > 1024
    code = "from engine.runtime.sweep.scheduler import _peak_rss_mb; print(_peak_rss_mb())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    child_mb = float(out.stdout.strip().splitlines()[-1])
    del ballast
    assert 0 < child_mb < parent_mb - 512, (child_mb, parent_mb)


# ---------------------------------------------------------------- node loss
def _ray_node(args: list[str], tmp: Path, env: dict) -> subprocess.Popen:
    return subprocess.Popen([str(RAY_BIN), "start", *args, "--node-ip-address", "127.0.0.1", "--num-cpus", "1",
                             "--disable-usage-stats", "--block", "--temp-dir", str(tmp)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


def _tear_down(node: subprocess.Popen) -> None:
    """By PID (never `ray stop`, which would stop every Ray on the machine)."""
    if node.poll() is None:
        node.terminate()
        try:
            node.wait(30)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(node.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    node.wait(10)


@pytest.mark.slow
def test_sweep_survives_losing_a_node(grid, reference, tmp_path):
    """Two raylets on the loopback; the second is killed with SIGKILL mid-sweep. The sweep must
    finish on the surviving actor with no operator action (the replacement actor cannot be placed
    on the smaller cluster and is given up after the placement timeout), results equal to --local."""
    assert RAY_BIN.exists(), f"{RAY_BIN}: the ray CLI is missing (pip install ray)"
    port = _free_port()
    tmp = Path(f"/tmp/sml-node-{os.getpid()}-{port}")  # short: Ray's socket paths must stay < 108 bytes
    stall = tmp_path / "stall"
    stall.mkdir()
    # The head declares a silent node dead within seconds instead of the default ~30 s.
    env = dict(_env(), RAY_health_check_period_ms="500", RAY_health_check_timeout_ms="500",
               RAY_health_check_failure_threshold="4", RAY_health_check_initial_delay_ms="0")
    head = _ray_node(["--head", "--port", str(port), "--include-dashboard", "false"], tmp, env)
    second = None
    driver = None
    try:
        _wait_for_head(head, port)
        # Only the second node's workers see the stall hook (they inherit its raylet's environment):
        # its actor stalls 6 s in its first shard, so the kill lands on an actor with a shard in flight.
        stall_env = {sw.STALL_ENV: str(stall), "SML_SWEEP_STALL_SECONDS": "6"}
        second = _ray_node(["--address", f"127.0.0.1:{port}"], tmp, dict(env, **stall_env))
        _wait_for_nodes(port, 2)  # else both actors could land on the head
        out = tmp_path / "lost.zarr"
        driver = subprocess.Popen([*SML, "sweep", str(grid), "--out", str(out), "--address", f"127.0.0.1:{port}",
                                   "--workers", "2", "--placement-timeout", "10", "--no-progress", "--json"],
                                  env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not (stall / "stalled").exists():
            assert driver.poll() is None, driver.stderr.read()[-3000:]
            assert time.monotonic() < deadline, "no actor reached a shard"
            time.sleep(0.05)
        t_kill = time.monotonic()
        os.killpg(second.pid, signal.SIGKILL)  # the node's raylet and its workers, as a machine loss
        stdout, stderr = driver.communicate(timeout=180)
        recovery = time.monotonic() - t_kill
        assert driver.returncode == 0, stderr[-3000:]
        # Ray's driver prints its own node-death notice to stdout before our JSON summary.
        assert "\n{" in "\n" + stdout, (stdout[-2000:], stderr[-3000:])
        res = json.loads(stdout[("\n" + stdout).rindex("\n{"):])
        assert res["actor_deaths"] >= 1, (res, stderr[-3000:])
        assert res["shards_done"] == res["shards_total"] == reference[2]["shards_total"]
        # No sample lost or done twice: every shard completed once (one may be found done and skipped).
        assert res["shards_run"] + res["shards_skipped"] == res["shards_total"]
        _assert_same(_arrays(out), reference[1])
        # Recovery bound: 2 x (the lost shards' compute + the placement timeout) + node-death detection.
        lost = max(6.0, res["shard_seconds"] / max(1, res["shards_run"]))
        assert recovery < 2 * (lost + 10) + 15, (recovery, res)
        print(f"recovery {recovery:.1f} s after the kill; {res['actor_deaths']} death(s), "
              f"{res['actors_not_placed']} replacement(s) not placed")
    finally:
        if driver is not None and driver.poll() is None:
            driver.kill()
        for node in (second, head):
            if node is not None:
                _tear_down(node)
        shutil.rmtree(tmp, ignore_errors=True)


class _PendingBackend:
    """A cluster that never places an actor (as Ray keeps an unplaceable actor pending forever)."""

    def __init__(self):
        self.stopped = 0

    def start(self, pool):
        return object()

    def submit(self, handle, method, *args):
        return (handle, method)

    def wait(self, refs, timeout):
        time.sleep(min(timeout, 0.05))
        return []

    def stop(self, handle, graceful):
        self.stopped += 1


def test_unplaceable_actors_end_the_sweep_with_exit_3(grid, tmp_path):
    from engine.errors import NoWorkersLeft
    from engine.runtime.sweep.backends import PoolSpec
    from engine.runtime.sweep.scheduler import _Scheduler

    class Bar:
        total = 0

        def refresh(self):
            pass

    pools = [PoolSpec("cpu", 2, {}, 1, "cpu")]
    backend = _PendingBackend()
    sched = _Scheduler(backend, pools, sw.load_sweep(grid), None, Bar(), max_deaths=5, placement_timeout=0.2)
    t0 = time.monotonic()
    with pytest.raises(NoWorkersLeft, match="no live sweep actor is left .* re-run the same command") as e:
        sched.run()
    assert e.value.exit_code == 3
    assert time.monotonic() - t0 < 10 and backend.stopped == 2  # both pending actors were cancelled


def test_shard_that_keeps_raising_is_recorded_failed_then_retried(trained, demo_root, tmp_path):
    """A shard that raises is tried SHARD_TRIES times, then its samples are recorded as failed (with
    the reason) so that the sweep completes; --retry-failed runs exactly those shards again."""
    from dataclasses import dataclass

    from engine.attacks.driver import finalize
    from engine.attacks.registry import AttackConfig, AttackSpec, register, unregister
    from engine.report import render
    from engine.runtime.sweep.scheduler import SHARD_TRIES

    calls = {"n": 0, "broken": True}

    @dataclass(frozen=True, kw_only=True)
    class FlakyConfig(AttackConfig):
        pass

    def run(model, x0, y_star, eligible, cfg, ctx):
        calls["n"] += 1
        if calls["broken"] and x0.shape[0] == 2:
            raise RuntimeError("boom in a shard")
        import torch
        with torch.no_grad():
            counts = (model(x0) >= 0).sum(1)
        return finalize(model, x0, x0.clone(), y_star, eligible, counts, counts == y_star.shape[1],
                        torch.zeros(len(x0), dtype=torch.long), torch.full((len(x0),), -1))

    register(AttackSpec(family="solver", reference="a test", name="flaky", title="Flaky", config=FlakyConfig,
                        norm="linf", run=run, doc="raises",
                        presets={"paper": {}}))
    try:
        toml = tmp_path / "f.toml"
        # 6 samples in shards of 4 and 2: the 2-sample shard raises while "broken".
        toml.write_text(f'[protocol]\nn = 6\nchunk_size = 4\nbatch_size = 4\n[[model]]\n'
                        f'checkpoint = "{trained["mlgcn"]}"\nroot = "{demo_root}"\n[[attack]]\nname = "flaky"\n')
        out = tmp_path / "f.zarr"
        res = sw.run_sweep(toml, out, local=True, progress=False)
        assert res["shards_failed"] == 1 and res["shards_done"] == res["shards_total"] == 2
        g = zarr.open_group(str(out), mode="r")["mlgcn/demo/flaky"]
        assert np.asarray(g["failed"][:]).tolist() == [False] * 4 + [True] * 2
        assert all(str(r) == "shard failed: RuntimeError: boom in a shard" for r in np.asarray(g["reason"][4:]))
        assert not np.asarray(g["eligible"][4:]).any()  # no table counts them
        render(out, tmp_path / "rep", ("md",))
        assert "flaky: 2" in (tmp_path / "rep" / "tables.md").read_text()
        n_before = calls["n"]
        assert n_before >= 1 + SHARD_TRIES
        # Resume: nothing to do. --retry-failed: only the failed shard runs again, now successfully.
        assert sw.run_sweep(toml, out, local=True, progress=False)["shards_run"] == 0
        calls["broken"] = False
        res = sw.run_sweep(toml, out, local=True, progress=False, retry_failed=True)
        assert res["shards_run"] == 1 and res["shards_failed"] == 0
        assert not np.asarray(zarr.open_group(str(out), mode="r")["mlgcn/demo/flaky/failed"][:]).any()
    finally:
        unregister("flaky")
