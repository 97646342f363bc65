"""Section ``sweep``: a tiny ``sml sweep --local`` on the device (demo data, a briefly trained tiny model,
five attacks including MLA-LP, so the carried zarr and highspy are used)."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.gpu import REPO

SWEEP_ATTACKS = ('name = "fgsm"', 'name = "pgd"\nparams = { iterations = 10 }', 'name = "slide"\nparams = '
                 '{ iterations = 10 }', 'name = "mlcw"\npreset = "demo"', 'name = "mlalp"\nn = 8')


def sweep_rows(device: str, folder: Path, timeout: float) -> list[dict]:
    """A tiny sweep through the CLI (`python -m cli.main sweep ... --local`) on `device`."""
    from engine.config import DemoDataConfig, ModelConfig, TrainConfig
    from engine.data import demo
    from engine.models.train import train

    data, ck = folder / "data", folder / "mlgcn.pt"
    demo.generate(data, DemoDataConfig(n_train=600, n_test=120, size=20, labels=8, seed=3))
    t = time.perf_counter()
    train(model_cfg=ModelConfig(family="mlgcn", input_size=20), train_cfg=TrainConfig(epochs=8, lr=3e-3,
          batch_size=32), dataset="demo", root=data, out=ck, progress=False, device=device)
    train_s = time.perf_counter() - t
    lines = ["[sweep]", 'name = "gpu-check"', f'device = "{device.split(":")[0]}"', "", "[protocol]", "n = 16",
             "chunk_size = 8", "", "[[model]]", f'checkpoint = "{ck}"', 'key = "mlgcn"', 'dataset = "demo"',
             f'root = "{data}"']
    for a in SWEEP_ATTACKS:
        lines += ["", "[[attack]]", a]
    sweep = folder / "gpu-check.toml"
    sweep.write_text("\n".join(lines) + "\n")
    cmd = [sys.executable, "-m", "cli.main", "sweep", str(sweep), "--out", str(folder / "store.zarr"), "--local",
           "--json", "--no-progress"]
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout)
    secs = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"sml sweep --local exited {p.returncode}: {p.stderr.strip()[-1500:]}")
    res = json.loads(p.stdout[p.stdout.index("{"):])
    ok = res["shards_done"] == res["shards_total"]
    return [{"check": "sweep --local", "model": "tiny mlgcn 20px", "item": f"{len(SWEEP_ATTACKS)} attacks",
             "ok": ok, "note": f"{res['shards_done']}/{res['shards_total']} shards, {res['samples_run']} samples "
             f"in {secs:.0f} s (process included; training {train_s:.0f} s)", "raw": res}]
