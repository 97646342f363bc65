"""What the attack sections share: stand-in models and images, the floor they are timed against, and
the peak memory of a run."""

from __future__ import annotations

import statistics


def peak_reset(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def peak_gib(device: str) -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 2**30 if device.startswith("cuda") else None


def stand_in_images(n: int, size: int, device: str):
    import torch

    gen = torch.Generator().manual_seed(0)
    return torch.rand(n, 3, size, size, generator=gen).to(device)


def stand_in_model(backbone: str, size: int, labels: int, device: str):
    import torch

    from engine.config import ModelConfig
    from engine.models import build

    torch.manual_seed(0)  # random weights: timing only
    return build(ModelConfig(family="mlgcn", backbone=backbone, input_size=size), labels).eval().to(device)


def floor_seconds(model, x, *, iterations: int, repeats: int, device: str) -> float:
    """The floor: `iterations` forward + backward passes to the input of the same model and batch
    (bench.bench_attacks.floor_run), median of `repeats`."""
    import torch

    from bench.bench_attacks import floor_run
    from bench.timing import timed
    from engine import attacks

    model = attacks.attack_mode(model).__enter__()
    with torch.no_grad():
        y_star = torch.ones(x.shape[0], model(x[:1]).shape[1], device=device)
    floor_run(model, x, y_star, 1)()  # warm-up
    return statistics.median(timed(floor_run(model, x, y_star, iterations), device)[0] for _ in range(repeats))
