"""The sweep worker: a Ray actor (or, with ``--local``, an object in the driver) that holds models
and runs plan and shard jobs, writing each finished shard straight into the store.

An actor loads a model once per (model, data set) (``runner.plan``, cached) and runs whatever
shard the driver gives it next. The first job per model is a *plan* job: Table 1 / candidate scan
(cached in the store) and the creation of every run of that model through ``runner.open_run`` --
the same code path as ``sml attack`` -- so the driver learns the real shard counts without
loading a model itself.
"""

from __future__ import annotations

import os
import time
from typing import Any

import numpy as np
import torch

from engine import results
from engine.device import check_device
from engine.errors import UserError
from engine.models import sources
from engine.runtime import fitting, runner
from engine.runtime.runspec import RunSpec

# Test hook: an actor that finds this variable set (a folder) and can create <folder>/stalled
# writes its pid there and sleeps mid-shard (after its first batch, before anything is written),
# so that a test can kill -9 it at a known point. Only the first actor to get there stalls.
STALL_ENV = "SML_SWEEP_STALL"
FORWARD_ENV = (STALL_ENV, "SML_SWEEP_STALL_SECONDS")


class SweepWorker:
    """Holds models (one Plan per model entry) and runs plan and shard jobs into the store."""

    def __init__(self, store: str, models: list[dict], runs: list[dict], *, threads: int | None = None,
                 device: str = "cpu", pool_workers: int = 0):
        if threads:
            # OMP_NUM_THREADS & co. come with the actor's runtime_env (they must be set before torch
            # loads); torch's own pool is sized here, before its first parallel region.
            torch.set_num_threads(threads)
        self.store_path = store
        self.root = results.open_store(store, "a")
        self.models = models
        self.runs = [(int(r["model"]), RunSpec.from_dict(r["spec"])) for r in runs]
        self.device = check_device(pick_device(device))
        self.pool_workers = pool_workers
        self.plans: dict[int, Any] = {}
        self.ctx: dict[str, Any] = {}

    def pid(self) -> int:
        return os.getpid()

    def _plan(self, i: int, verify_data: bool = False):
        if i not in self.plans:
            m = self.models[i]
            # Your own model (m["own_model"]) is rebuilt here: its factory's module must import on this node too.
            p = runner.plan(m["checkpoint"], self.root, dataset=m["dataset"], root=m["root"], split=m["split"],
                            device=self.device, model_key=m["key"], verify_data=verify_data,
                            own_model=m.get("own_model"), **m.get("load_kw", {}))
            if p.digest != m["digest"]:
                raise UserError(f"{p.checkpoint} changed since the sweep started (digest {m['digest']}, now "
                                f"{p.digest}); let training finish, then run the sweep again")
            self.plans[i] = p
        return self.plans[i]

    def plan(self, i: int, retry_failed: bool = False) -> dict[str, Any]:
        """Load model i (scan cached in the store) and create or reopen all of its runs
        (``retry_failed``: shards given up on before are to be run again)."""
        try:
            t0 = time.perf_counter()
            p = self._plan(i, verify_data=True)
            mine = [rs for mi, rs in self.runs if mi == i]
            for rs in mine:  # every run's check before any of its groups is created
                rs.check_labels(p.dataset.num_labels, p.dataset.label_names)
                if rs.spec.universal:  # its fit and scored samples among the candidates
                    fitting.split(p, rs, rs.samples(p.family, p.dataset.name), p.candidates)
            runs = []
            for j, (mi, rs) in enumerate(self.runs):
                if mi != i:
                    continue
                run = runner.open_run(p, self.root, rs)
                if retry_failed:
                    _reopen_given_up(run)
                runs.append({"run": j, "path": run.path, "n": int(run.attrs["n"]),
                             "chunk_size": int(run.attrs["chunk_size"]), "todo": runner.todo_chunks(run)})
            return {"model": i, "group": f"{p.model_key}/{p.dataset_key}", "dataset": p.dataset_key, "runs": runs,
                    "seconds": time.perf_counter() - t0, "pid": os.getpid()}
        except UserError as e:
            m = self.models[i]
            return {"error": f"{sources.describe(m['checkpoint'], m.get('own_model'))}: {e}"}

    def shard(self, j: int, path: str, chunk: int) -> dict[str, Any]:
        """Attack chunk ``chunk`` of run ``j`` (group ``path``) and write it; skip it if already done."""
        try:
            t0 = time.perf_counter()
            mi, rs = self.runs[j]
            run = self.root[path]
            if bool(results.done_flags(run)[chunk]):
                # A shard re-queued after its actor died may have been finished just before: never twice.
                return {"rows": 0, "skipped": True, "seconds": 0.0, "pid": os.getpid()}
            p = self._plan(mi)
            # One thread per solver process: the actor's CPUs are shared out as processes.
            runner.add_resources(rs.spec, self.ctx, self.pool_workers, threads=1)
            rows = runner.run_shard(p, run, chunk, rs, device=self.device, ctx=self.ctx, progress=_stall_hook())
            return {"rows": rows, "skipped": False, "seconds": time.perf_counter() - t0, "pid": os.getpid()}
        except UserError as e:
            return {"error": f"{path} chunk {chunk}: {e}"}
        except Exception as e:  # noqa: BLE001 - a fault in this shard (a bug, memory, a bad file): the driver
            # retries it and, if it keeps failing, records its samples as failed (give_up)
            return {"crash": f"{type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}", "pid": os.getpid()}

    def give_up(self, j: int, path: str, chunk: int, reason: str) -> dict[str, Any]:
        """Record every sample of a shard that keeps raising as failed (not eligible: no table counts
        it) with ``reason``, and mark the shard done, so that the sweep completes."""
        run = self.root[path]
        n = runner.chunk_rows(run, chunk)
        l = int(run.attrs["num_labels"])
        rows = {k: np.zeros(results.result_shape(k, n, l), dtype=dt) for k, (dt, _) in results.RESULT_FIELDS.items()}
        rows["failed"][:] = True
        rows["queries"][:] = -1  # nothing counted
        results.write_chunk(run, chunk, rows, [f"{GAVE_UP}{reason}"] * n)
        return {"rows": n, "pid": os.getpid()}

    def close(self) -> bool:
        runner.close_resources(self.ctx)
        return True


GAVE_UP = "shard failed: "  # the reason prefix of the samples of a shard given up on (--retry-failed)


def _reopen_given_up(run) -> None:
    """Clear the done flag of every shard whose samples were all given up on."""
    c = int(run.attrs["chunk_size"])
    reasons = results.read(run, "reason")
    done = results.done_chunks(run)
    for k in np.nonzero(done)[0]:
        rs = reasons[k * c:(k + 1) * c]
        if len(rs) and all(str(r).startswith(GAVE_UP) for r in rs):
            results.reopen_chunk(run, int(k))


def pick_device(device: str) -> str:
    if device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def _stall_hook():
    folder = os.environ.get(STALL_ENV)
    if not folder:
        return None
    state = {"batches": 0}

    def hook(_rows: int) -> None:
        state["batches"] += 1
        if state["batches"] != 1:
            return
        try:
            fd = os.open(os.path.join(folder, "stalled"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        except FileExistsError:
            return
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        time.sleep(float(os.environ.get("SML_SWEEP_STALL_SECONDS", "120")))

    return hook
