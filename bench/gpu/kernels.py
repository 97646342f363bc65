"""Section ``kernels``: every Triton kernel against kernels.reference, then (on CUDA) their speed."""

from __future__ import annotations


def kernel_rows(device: str, tiny: bool) -> list[dict]:
    from bench import bench_kernels as BK

    # The smoke run on CPU interprets the kernels, one program at a time: small shapes only.
    shapes, large = (((2, 7), (2, 3, 9, 11)), None) if tiny else (BK.ODD_SHAPES, (8, 3, 448, 448))
    rows = []
    for r in BK.agreement(device, shapes, large=large):
        rows.append({"check": "kernel vs reference", "item": r["kernel"], "model": "x".join(map(str, r["shape"])) +
                     (" ties" if r["ties"] else ""), "agreement": f"max |diff| {r['max_abs_diff']:.1e}",
                     "ok": r["ok"], "raw": r})
    if device.startswith("cuda"):
        for r in BK.speed(device, shape=large, reps=20):
            if r["bench"] == "kernel-speed":
                note = f"{r['ms']:.3f} ms, {r['gb_per_s']:.0f} GB/s"
                if "of_copy_bandwidth" in r:
                    note += f" = {r['of_copy_bandwidth']:.2f} x copy; reference {r['reference_ms']:.3f} ms"
            else:
                note = (f"k-th largest, sparsity {r['sparsity']}: search {r['search_ms']:.3f} ms, "
                        f"topk {r['topk_ms']:.3f} ms")
            rows.append({"check": "kernel speed", "item": r.get("kernel", "slide-selection"),
                         "model": "x".join(map(str, r["shape"])), "note": note, "raw": r})
    return rows
