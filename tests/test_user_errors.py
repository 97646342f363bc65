"""Bad input is one line and exit code 2, and leaves nothing behind: devices, parameter types,
model keys, unreadable inputs; and what we write gets the user's umask, not tempfile's 0600."""

from __future__ import annotations

import os
import stat

import pytest

import cli.main
from engine.device import check_device
from engine.errors import UserError
from engine.util import umask_mode, write_text_atomic


def _sml(capsys, *argv) -> tuple[int, str]:
    rc = cli.main.main([str(a) for a in argv])
    err = capsys.readouterr().err.strip()
    return rc, err


BAD_ATTACK = [
    (["--device", "cuda"], "no CUDA device"),
    (["--device", "gpu"], "unknown device 'gpu'"),
    (["--device", "cuda:7"], "cuda:7"),
    (["--model-key", "a/b"], "--model-key must be a non-empty name without '/'"),
    (["--model-key", ".."], "got '..'"),
    (["--param", "eps=abc"], "eps must be a number, got 'abc'"),
    (["--param", "iterations=2.5"], "iterations must be an integer, got 2.5"),
    (["--param", "rand_init=3"], "rand_init must be true or false, got 3"),
    (["--param", "eps=-1"], "eps must be >= 0"),
    (["--param", "eps=inf"], "eps must be a finite number, got inf"),
    (["--param", "step=nan"], "step must be a finite number, got nan"),
    (["--param", "iterations=1000000"], "iterations must be in 1..100000, got 1000000"),
    (["--n", "100000000"], "n must be in 1..10000000, got 100000000"),
    (["--seed", "-1"], "seed must be in 0..9223372036854775807, got -1"),
    (["--order", "random"], "unknown order 'random'"),
    (["--chunk-size", "0"], "chunk_size must be in 1..1000000, got 0"),
    (["--target", "reduction"], "needs target_label"),
]


@pytest.mark.parametrize("extra,expect", BAD_ATTACK, ids=[b[1][:30] for b in BAD_ATTACK])
def test_bad_attack_input_is_one_line_and_creates_nothing(trained, tmp_path, capsys, extra, expect):
    if "cuda" in extra[-1] and _has_cuda():
        pytest.skip("this machine has CUDA")
    out = tmp_path / "x.zarr"
    rc, err = _sml(capsys, "attack", "--checkpoint", trained["mlgcn"], "--attack", "pgd", "--out", out,
                   "--no-progress", *extra)
    assert rc == 2
    assert err.startswith("sml: error: ") and "\n" not in err and expect in err, err
    assert not out.exists()


@pytest.mark.parametrize("what,argv,expect", [
    ("missing checkpoint", ["--checkpoint", "nope.pt"], "nope.pt: checkpoint not found"),
    ("not a checkpoint", ["--checkpoint", "junk.pt"], "junk.pt: cannot read checkpoint"),
    ("missing data", ["--root", "nodata"], "nodata: demo data directory does not exist"),
])
def test_unreadable_inputs_leave_no_store(trained, tmp_path, capsys, monkeypatch, what, argv, expect):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    if "--checkpoint" not in argv:
        argv = ["--checkpoint", str(trained["mlgcn"]), *argv]
    rc, err = _sml(capsys, "attack", "--attack", "fgsm", "--out", "x.zarr", "--no-progress", *argv)
    assert rc == 2 and expect in err, err
    assert not (tmp_path / "x.zarr").exists()


def test_sweep_on_a_missing_device_creates_no_store(trained, tmp_path, capsys):
    if _has_cuda():
        pytest.skip("this machine has CUDA")
    f = tmp_path / "s.toml"
    f.write_text(f'[sweep]\nbase = "."\ndevice = "cuda"\n[[model]]\ncheckpoint = "{trained["mlgcn"]}"\n'
                 f'[[attack]]\nname = "fgsm"\nn = 2\n')
    rc, err = _sml(capsys, "sweep", f, "--out", tmp_path / "s.zarr", "--local", "--no-progress")
    assert rc == 2 and "no CUDA device" in err
    assert not (tmp_path / "s.zarr").exists()


def test_train_on_a_missing_device(demo_root, tmp_path, capsys):
    if _has_cuda():
        pytest.skip("this machine has CUDA")
    rc, err = _sml(capsys, "train", "--model", "mlgcn", "--root", demo_root, "--out", tmp_path / "m.pt",
                   "--device", "cuda")
    assert rc == 2 and "no CUDA device" in err
    assert not (tmp_path / "m.pt").exists()


def test_check_device_accepts_cpu():
    assert check_device("cpu") == "cpu"
    with pytest.raises(UserError, match="this machine has: cpu"):
        check_device("tpu")


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def test_written_files_get_the_umask(tmp_path):
    old = os.umask(0o027)
    try:
        assert umask_mode() == 0o640 and umask_mode(directory=True) == 0o750
        write_text_atomic(tmp_path / "t.json", "{}\n")
        assert stat.S_IMODE((tmp_path / "t.json").stat().st_mode) == 0o640
    finally:
        os.umask(old)
    write_text_atomic(tmp_path / "u.json", "{}\n")
    assert stat.S_IMODE((tmp_path / "u.json").stat().st_mode) == umask_mode()


def test_checkpoints_and_demo_data_get_the_umask(trained, demo_root):
    want = umask_mode()
    assert stat.S_IMODE(os.stat(trained["mlgcn"]).st_mode) == want
    assert stat.S_IMODE(os.stat(demo_root).st_mode) == umask_mode(directory=True)
