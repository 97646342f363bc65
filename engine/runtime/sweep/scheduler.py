"""The sweep's driver: queues of plan and shard jobs per actor pool, dispatch to idle workers,
re-queuing of the jobs of workers that die, progress; ``run_sweep`` is the entry point.

The driver only schedules and records: it validates the file, fingerprints the sweep into the
store's root attributes (record.py), starts the pools backends.py sizes, queues the shards and
re-queues those of actors that die. It never sees a result array: each worker writes its
finished shard straight into the store, rows first and the chunk's ``done`` flag last.

Routing: attacks in ``[sweep] cpu_attacks`` (default: those whose spec says ``cpu_bound``: their
cost is a solver on the CPU, not the model) go to a pool of CPU-only actors when the cluster has
GPUs; everything else goes to the GPU actors. Without GPUs one pool takes every shard.
"""

from __future__ import annotations

import logging
import math
import resource
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tqdm import tqdm

from engine import results
from engine.device import check_device
from engine.errors import NoWorkersLeft, UserError
from engine.runtime.sweep.backends import LocalBackend, PoolSpec, RayBackend, WorkerDied, connect, plan_pools
from engine.runtime.sweep.record import ATTR, bind_store, json_safe, make_record
from engine.runtime.sweep.sweepfile import Sweep, load_sweep
from engine.runtime.sweep.worker import pick_device

log = logging.getLogger(__name__)

SHARD_TRIES = 3  # a shard that raises is run this many times before its samples are recorded as failed


@dataclass
class _Job:
    kind: str  # plan | shard
    model: int
    run: int = -1
    path: str = ""
    chunk: int = -1
    rows: int = 0
    submitted: float = 0.0
    tries: int = 0  # times this shard raised
    reason: str = ""  # give_up: why


@dataclass
class _Slot:
    pool: PoolSpec
    handle: Any
    models: set[int] = field(default_factory=set)
    job: _Job | None = None
    # starting: asked for, not known to be placed (no work is given to it yet); ready; gone: died or
    # never placed within the placement timeout, so the sweep goes on without it.
    state: str = "gone"
    since: float = 0.0


def _route(attack: str, cpu_attacks: tuple[str, ...], pools: dict[str, PoolSpec]) -> str:
    want = "cpu" if attack in cpu_attacks else "device"
    return want if want in pools else next(iter(pools))


class _Scheduler:
    """Queues per pool; dispatches to idle actors; re-queues the jobs of dead ones; records progress."""

    def __init__(self, backend, pools: list[PoolSpec], sw: Sweep, root, bar, max_deaths: int,
                 placement_timeout: float = 60.0, retry_failed: bool = False):
        self.backend, self.sw, self.root, self.bar = backend, sw, root, bar
        self.retry_failed = retry_failed
        self.placement_timeout = placement_timeout
        self.starting: dict[Any, _Slot] = {}  # probe call -> slot whose actor is not placed yet
        self.pools = {p.name: p for p in pools}
        self.queues: dict[str, deque[_Job]] = {p.name: deque() for p in pools}
        self.slots = [_Slot(p, None) for p in pools for _ in range(p.size)]
        self.inflight: dict[Any, _Slot] = {}
        self.max_deaths = max_deaths
        self.stats = {"shards_run": 0, "shards_skipped": 0, "samples_run": 0, "actor_deaths": 0, "plans": 0,
                      "shard_seconds": 0.0, "roundtrip_overhead_s": 0.0, "driver_busy_s": 0.0,
                      "shards_by_pool": {p.name: 0 for p in pools}, "pids": {p.name: [] for p in pools}}
        self.shards_total = self.shards_done_before = 0
        self.groups: dict[str, int] = {}
        self.remaining_estimate = {i: 0 for i in range(len(sw.models))}
        self.t_first_shard: float | None = None  # the shard phase, for throughput without start-up
        self.t_last_shard: float | None = None

    def run(self) -> None:
        plan_pool = "device" if "device" in self.pools else next(iter(self.pools))
        for i in range(len(self.sw.models)):
            self.queues[plan_pool].append(_Job("plan", model=i))
            est = sum(r.spec.n_requested for r in self.sw.runs if r.model == i)
            self.remaining_estimate[i] = est
        self.bar.total = sum(self.remaining_estimate.values())
        self.bar.refresh()
        for s in self.slots:
            self._start(s)
        finished = False
        try:
            while any(self.queues.values()) or self.inflight:
                t0 = time.perf_counter()
                self._give_up_unplaced()
                self._dispatch()
                self.stats["driver_busy_s"] += time.perf_counter() - t0
                if not self.inflight and not self.starting:
                    self._no_workers_left()
                ready = self.backend.wait(list(self.inflight) + list(self.starting), timeout=1.0)
                t0 = time.perf_counter()
                for ref in ready:
                    if ref in self.starting:
                        self._placed(ref)
                    else:
                        self._collect(ref)
                self.stats["driver_busy_s"] += time.perf_counter() - t0
            finished = True
        finally:
            for s in self.slots:
                if s.handle is not None:
                    try:
                        self.backend.stop(s.handle, graceful=finished and s.pool.pool_workers > 0)
                    except Exception:  # noqa: BLE001
                        log.debug("stopping a worker failed", exc_info=True)

    def _start(self, s: _Slot) -> None:
        """Ask for an actor; it gets work only once a first call proves it placed (a replacement that
        a shrunken cluster cannot place must not hold a shard while a live actor sits idle)."""
        s.handle, s.models, s.job = self.backend.start(s.pool), set(), None
        s.state, s.since = "starting", time.monotonic()
        self.starting[self.backend.submit(s.handle, "pid")] = s

    def _placed(self, ref) -> None:
        s = self.starting.pop(ref)
        try:
            self.backend.get(ref)
        except WorkerDied as e:
            self._died(s, None, e)
            return
        s.state = "ready"

    def _give_up_unplaced(self) -> None:
        """Ray has no placement timeout for pending actors: ours cancels them and goes on."""
        now = time.monotonic()
        for ref, s in list(self.starting.items()):
            live = sum(t.state == "ready" for t in self.slots if t.pool is s.pool)
            # With no live actor in its pool, a slow start (a busy or cold cluster) is given 10x longer
            # before the sweep concludes that nothing can be placed.
            if now - s.since > self.placement_timeout * (1 if live else 10):
                del self.starting[ref]
                log.warning("a %s actor could not be placed within %.0f s (the cluster lost capacity?); going on "
                            "with %d live %s actor(s)", s.pool.name, self.placement_timeout, live, s.pool.name)
                self._stop(s)
                s.state = "gone"
                self.stats["actors_not_placed"] = self.stats.get("actors_not_placed", 0) + 1

    def _stop(self, s: _Slot) -> None:
        try:
            self.backend.stop(s.handle, graceful=False)
        except Exception:  # noqa: BLE001 - it is going away either way
            log.debug("stopping a worker failed", exc_info=True)
        s.handle = None

    def _no_workers_left(self) -> None:
        left = {name: len(q) for name, q in self.queues.items() if q}
        raise NoWorkersLeft(
            f"no live sweep actor is left for the {', '.join(f'{n} queued {k} job(s)' for k, n in left.items())} "
            f"(actors died or could not be placed within {self.placement_timeout:.0f} s); finished shards are "
            f"kept: bring the cluster back (or drop --address) and re-run the same command to resume")

    def _died(self, s: _Slot, job: _Job | None, e: Exception) -> None:
        self.stats["actor_deaths"] += 1
        what = _describe(job) if job is not None else "its start"
        log.warning("a %s actor died (%s) during %s; its job goes back to the queue for any live actor, and a "
                    "replacement is asked for", s.pool.name, e, what)
        if self.stats["actor_deaths"] > self.max_deaths:
            raise UserError(f"sweep actors died {self.stats['actor_deaths']} times (last: {e}, during {what}); "
                            f"giving up. Finished shards are kept: fix the cause (memory? node loss?) and re-run "
                            f"the same command to resume") from None
        if job is not None:
            self.queues[s.pool.name].appendleft(job)
        self._stop(s)
        self._start(s)

    def _dispatch(self) -> None:
        for s in self.slots:
            if s.job is not None or s.state != "ready":
                continue
            q = self.queues[s.pool.name]
            if not q:
                continue
            # Prefer work on a model this actor already holds (no second load); else the oldest job.
            pick = next((k for k, j in enumerate(q) if j.model in s.models), 0) if s.models else 0
            job = q[pick]
            del q[pick]
            job.submitted = time.perf_counter()
            if job.kind == "shard" and self.t_first_shard is None:
                self.t_first_shard = job.submitted
            if job.kind == "plan":
                ref = self.backend.submit(s.handle, "plan", job.model, self.retry_failed)
            elif job.kind == "give_up":
                ref = self.backend.submit(s.handle, "give_up", job.run, job.path, job.chunk, job.reason)
            else:
                ref = self.backend.submit(s.handle, "shard", job.run, job.path, job.chunk)
            s.job = job
            self.inflight[ref] = s

    def _collect(self, ref) -> None:
        s = self.inflight.pop(ref)
        job, s.job = s.job, None
        try:
            res = self.backend.get(ref)
        except WorkerDied as e:
            self._died(s, job, e)
            return
        if "error" in res:
            raise UserError(res["error"])
        if "crash" in res:
            self._crashed(s, job, res["crash"])
            return
        if job.kind == "give_up":
            self.stats["shards_failed"] = self.stats.get("shards_failed", 0) + 1
            self.bar.update(job.rows)
            return
        s.models.add(job.model)
        if s.pool.name in self.stats["pids"] and res.get("pid") not in self.stats["pids"][s.pool.name]:
            self.stats["pids"][s.pool.name].append(res.get("pid"))
        if job.kind == "plan":
            self._planned(res)
            return
        latency = time.perf_counter() - job.submitted
        self.stats["shards_by_pool"][s.pool.name] += 1
        if res.get("skipped"):
            self.stats["shards_skipped"] += 1
            self.bar.total -= job.rows
        else:
            self.stats["shards_run"] += 1
            self.stats["samples_run"] += res["rows"]
            self.stats["shard_seconds"] += res["seconds"]
            self.stats["roundtrip_overhead_s"] += max(0.0, latency - res["seconds"])
            self.t_last_shard = time.perf_counter()
            self.bar.update(res["rows"])
        self._postfix()

    def _crashed(self, s: _Slot, job: _Job, why: str) -> None:
        """A shard raised (not a user error, not a dead actor): again, elsewhere if possible, up to
        SHARD_TRIES times; then its samples are recorded as failed so that the sweep completes."""
        job.tries += 1
        if job.tries < SHARD_TRIES:
            log.warning("%s raised %s (try %d of %d); queued again", _describe(job), why, job.tries, SHARD_TRIES)
            self.queues[s.pool.name].append(job)
            return
        log.warning("%s raised %s %d times: its %d samples are recorded as failed (sml sweep --retry-failed runs "
                    "it again)", _describe(job), why, job.tries, job.rows)
        self.queues[s.pool.name].appendleft(_Job("give_up", model=job.model, run=job.run, path=job.path,
                                                 chunk=job.chunk, rows=job.rows, reason=why))

    def _planned(self, res: dict) -> None:
        i = res["model"]
        self.stats["plans"] += 1
        group = res["group"]
        if group in self.groups and self.groups[group] != i:
            raise UserError(f"[[model]] #{self.groups[group] + 1} and #{i + 1} of {self.sw.path} both write "
                            f"{group} (same key and data set); give one of them another key")
        self.groups[group] = i
        remaining = 0
        for r in res["runs"]:
            n, c = r["n"], r["chunk_size"]
            n_chunks = max(1, -(-n // c))
            self.shards_total += n_chunks
            self.shards_done_before += n_chunks - len(r["todo"])
            spec = self.sw.runs[r["run"]].spec
            pool = _route(spec.spec.name, self.sw.cpu_attacks, self.pools)
            for chunk in r["todo"]:
                rows = max(0, min(c, n - chunk * c))
                remaining += rows
                self.queues[pool].append(_Job("shard", model=i, run=r["run"], path=r["path"], chunk=chunk, rows=rows))
        self.bar.total += remaining - self.remaining_estimate[i]
        self.remaining_estimate[i] = remaining
        # Record where this model's runs live, so that --status works from the store alone.
        rec = dict(self.root.attrs)[ATTR]
        rec["planned"] = dict(rec.get("planned", {}), **{str(i): {"group": group, "dataset": res["dataset"]}})
        self.root.attrs[ATTR] = json_safe(rec)
        self._postfix()

    def _postfix(self) -> None:
        done = (self.shards_done_before + self.stats["shards_run"] + self.stats["shards_skipped"]
                + self.stats.get("shards_failed", 0))
        planned = self.stats["plans"]
        tail = "" if planned == len(self.sw.models) else f", models planned {planned}/{len(self.sw.models)}"
        self.bar.set_postfix_str(f"shards {done}/{self.shards_total}{tail}", refresh=True)


def _describe(job: _Job) -> str:
    return f"plan of model #{job.model + 1}" if job.kind == "plan" else f"shard {job.path}[{job.chunk}]"


def run_sweep(sweep: str | Path, out: str | Path, *, address: str | None = None, workers: int | None = None,
              local: bool = False, progress: bool = True, device_resource: str | None = None,
              threads: int | None = None, placement_timeout: float | None = None,
              retry_failed: bool = False, yes: bool = False) -> dict[str, Any]:
    """Run (or resume) the sweep file ``sweep`` into the store ``out``; returns a summary.

    ``threads`` overrides the torch threads per actor (benchmarks); ``device_resource`` names a
    Ray resource that stands in for GPUs (tests of the routing on CPU-only machines).
    """
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be >= 1, got {workers}")
    if placement_timeout is not None and not 0 < placement_timeout < math.inf:
        raise UserError(f"--placement-timeout must be a positive number of seconds, got {placement_timeout}")
    sw = load_sweep(sweep, yes=yes)
    if local:  # the in-process worker's device is this machine's: check it before the store exists
        check_device(pick_device(sw.device))
    out_s = str(out) if results.is_url(out) else str(Path(out).expanduser().resolve())
    record = make_record(sw)
    with results.store_lock(out_s, "sml sweep"):
        return _drive(sw, sweep, out, out_s, record, address=address, workers=workers, local=local,
                      progress=progress, device_resource=device_resource, threads=threads,
                      placement_timeout=placement_timeout, retry_failed=retry_failed)


def _drive(sw: Sweep, sweep, out, out_s: str, record: dict, *, address, workers, local, progress, device_resource,
           threads, placement_timeout, retry_failed) -> dict[str, Any]:
    """run_sweep's body, under the store's lease."""
    root = results.open_store(out_s, "a")
    results.check_store(root)  # a store of another format is refused before the sweep's record is touched
    record = bind_store(root, record, str(out), str(sweep))
    models = [dict(m) for m in record["models"]]
    runs = record["runs"]
    needs_cpu = any(r.spec.spec.name in sw.cpu_attacks for r in sw.runs)
    owned = False
    t_start = time.perf_counter()
    if local:
        if workers not in (None, 1):
            log.warning("--local runs one in-process worker; --workers %s ignored", workers)
        pools = [PoolSpec("cpu", 1, {}, None, sw.device)]
        backend: Any = LocalBackend(out_s, models, runs)
    else:
        owned = connect(address)
        import ray  # connect() loaded it; kept local so that --local never does

        pools = plan_pools(ray.cluster_resources(), workers=workers, needs_cpu_pool=needs_cpu, device=sw.device,
                           cpu_actor_cpus=sw.cpu_actor_cpus, device_resource=device_resource)
        if threads is not None:
            for pool in pools:
                pool.threads = threads
        backend = RayBackend(out_s, models, runs)
    n_actors = sum(p.size for p in pools)
    try:
        with tqdm(total=0, desc=f"sweep {sw.name}", unit="sample", disable=not progress, dynamic_ncols=True,
                  smoothing=0.1) as bar:
            sched = _Scheduler(backend, pools, sw, root, bar, max_deaths=2 * n_actors + 2,
                               placement_timeout=placement_timeout or sw.settings.placement_timeout,
                               retry_failed=retry_failed)
            sched.run()
    finally:
        if owned:
            import ray  # loaded by connect()

            ray.shutdown()
    seconds = time.perf_counter() - t_start
    s = sched.stats
    done = sched.shards_done_before + s["shards_run"] + s["shards_skipped"] + s.get("shards_failed", 0)
    shard_phase = (sched.t_last_shard - sched.t_first_shard) if sched.t_last_shard and sched.t_first_shard else 0.0
    return {"store": str(out), "sweep": sw.name, "fingerprint": record["fingerprint"], "runs": len(sw.runs),
            "models": len(sw.models), "shards_total": sched.shards_total, "shards_done": done,
            "shards_run": s["shards_run"], "shards_done_before": sched.shards_done_before,
            "shards_skipped": s["shards_skipped"], "samples_run": s["samples_run"], "seconds": seconds,
            "samples_per_s": s["samples_run"] / seconds if seconds > 0 else math.nan,
            "shard_phase_s": shard_phase,
            "samples_per_s_shard_phase": s["samples_run"] / shard_phase if shard_phase > 0 else math.nan,
            "actors": {p.name: p.size for p in pools}, "threads_per_actor": {p.name: p.threads for p in pools},
            "actor_deaths": s["actor_deaths"], "actors_not_placed": s.get("actors_not_placed", 0),
            "shards_failed": s.get("shards_failed", 0),
            "shards_by_pool": s["shards_by_pool"], "pids": s["pids"],
            "shard_seconds": s["shard_seconds"],
            "driver_busy_s_per_shard": s["driver_busy_s"] / max(1, s["shards_run"] + s["plans"]),
            "roundtrip_overhead_s_per_shard": s["roundtrip_overhead_s"] / max(1, s["shards_run"]),
            "driver_peak_rss_mb": _peak_rss_mb(),
            "mode": "local" if local else "ray"}


def _peak_rss_mb() -> float:
    """Peak resident memory of this process image, in MiB.

    Linux carries ru_maxrss across execve, so a driver started by a big parent
    (e.g. the bench) would report the parent's peak; VmHWM belongs to the
    current address space only.  ru_maxrss is the fallback elsewhere.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
