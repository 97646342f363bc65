"""Sections ``large`` and ``small`` (ours / floor per attack, eager and compiled) and the compile-mode
sections ``autotune-*`` and ``graphs-small`` (one compiled PGD step under another torch.compile mode)."""

from __future__ import annotations

import statistics
from contextlib import contextmanager

from bench.gpu import log
from bench.gpu.measure import peak_gib, peak_reset


def attack_rows(model, x, model_name: str, names, compiled, *, iterations: int, repeats: int, device: str,
                floor: float) -> list[dict]:
    """ours / floor per attack, eager and (for `compiled`) torch.compile'd, with the first compiled
    call's extra time (the compile) and the peak memory of each; `floor` is for `iterations`."""
    from bench.timing import timed
    from engine import attacks

    ids = list(range(x.shape[0]))
    rows = []
    for name in names:
        cfg = attacks.make_config(name, "paper", **({} if name in ("fgsm", "fgm") else {"iterations": iterations}))
        n_iter = int(getattr(cfg, "iterations", 1))
        fl = floor * n_iter / iterations
        row = {"check": "attack", "model": model_name, "item": name, "batch": x.shape[0], "iterations": n_iter,
               "floor_s": fl}

        def run(comp, name=name, cfg=cfg):
            return attacks.run(model, x, name, sample_ids=ids, config=cfg, compile=comp)

        run(False)  # warm-up: kernels compiled, allocator primed
        peak_reset(device)
        eager = statistics.median(timed(lambda: run(False), device)[0] for _ in range(repeats))
        row.update(eager_s=eager, eager_floor=eager / fl)
        if name in compiled:
            first, _ = timed(lambda: run(True), device)
            comp = statistics.median(timed(lambda: run(True), device)[0] for _ in range(repeats))
            row.update(compiled_s=comp, compiled_floor=comp / fl, compile_s=first - comp, mode="default")
        row["peak_gib"] = peak_gib(device)  # of eager and compiled runs together
        rows.append(row)
        log(f"  {model_name}/{name}: eager {row['eager_floor']:.2f} x floor"
            + (f", compiled {row['compiled_floor']:.2f} x ({row['compile_s']:.0f} s compile)"
               if "compiled_floor" in row else ""))
    return rows


@contextmanager
def compile_mode(mode: str):
    """Compile the engine's step (engine.attacks.driver.compiled_advance, which calls
    torch.compile(fullgraph=True) itself) as torch.compile(mode=...) would: the same inductor
    options, set around the first call, with every earlier compiled step dropped."""
    import torch
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    from engine.attacks import driver

    driver._COMPILED.clear()
    torch._dynamo.reset()
    try:
        # No FX-graph cache: the compile time reported must be a compile, not a cache hit.
        with inductor_config.patch({**list_mode_options(mode), "fx_graph_cache": False}):
            yield
    finally:
        driver._COMPILED.clear()
        torch._dynamo.reset()


def mode_row(model, x, model_name: str, mode: str, *, iterations: int, repeats: int, device: str,
             floor_s: float) -> dict:
    from bench.timing import timed
    from engine import attacks

    ids = list(range(x.shape[0]))
    cfg = attacks.make_config("pgd", "paper", iterations=iterations)
    with compile_mode(mode):
        peak_reset(device)
        first, _ = timed(lambda: attacks.run(model, x, "pgd", sample_ids=ids, config=cfg, compile=True), device)
        comp = statistics.median(
            timed(lambda: attacks.run(model, x, "pgd", sample_ids=ids, config=cfg, compile=True), device)[0]
            for _ in range(repeats))
        peak = peak_gib(device)
    log(f"  {model_name}/pgd {mode}: {comp / floor_s:.2f} x floor ({first - comp:.0f} s compile)")
    return {"check": "compiled step", "model": model_name, "item": "pgd", "mode": mode, "batch": x.shape[0],
            "iterations": iterations, "floor_s": floor_s, "compiled_s": comp, "compiled_floor": comp / floor_s,
            "compile_s": first - comp, "peak_gib": peak}
