"""Where sweep workers run: in this process (``--local``) or as Ray actors; joining a cluster, and
how many actors of which kind its resources allow.

Both backends offer the same four calls to the scheduler (start, submit, wait, get/stop), so the
queueing, retry and bookkeeping logic is one piece of code; Ray is imported only when used, so
``--local`` and ``--help`` never load it.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from dataclasses import dataclass
from typing import Any

from engine.errors import UserError
from engine.runtime.sweep.worker import FORWARD_ENV, SweepWorker

log = logging.getLogger(__name__)


class WorkerDied(Exception):
    pass


@dataclass
class PoolSpec:
    name: str  # "device" | "cpu"
    size: int
    options: dict[str, Any]  # Ray actor options (resources)
    threads: int | None
    device: str
    pool_workers: int = 0


class LocalBackend:
    """The same scheduler, in this process, one worker: for debugging (``--local``)."""

    def __init__(self, store: str, models: list[dict], runs: list[dict]):
        self.args = (store, models, runs)

    def start(self, pool: PoolSpec):
        return SweepWorker(*self.args, threads=None, device=pool.device, pool_workers=pool.pool_workers)

    class Ticket:
        def __init__(self, fn, args):
            self.call, self.value, self.exc = (fn, args), None, None

    def submit(self, worker, method: str, *args):
        return self.Ticket(getattr(worker, method), args)  # run by wait(), like a remote call

    def wait(self, tickets: list, timeout: float) -> list:
        for t in tickets:
            if t.call is not None:
                (fn, args), t.call = t.call, None
                try:
                    t.value = fn(*args)
                except Exception as e:  # noqa: BLE001 - re-raised by get(), as Ray would
                    t.exc = e
        return tickets

    def get(self, ticket):
        if ticket.exc is not None:
            raise ticket.exc
        return ticket.value

    def stop(self, worker, graceful: bool) -> None:
        worker.close()


class RayBackend:
    def __init__(self, store: str, models: list[dict], runs: list[dict]):
        import ray  # heavy (~1 s); only sweeps on Ray need it

        self.ray = ray
        self.args = (store, models, runs)
        self.cls = ray.remote(SweepWorker)

    def start(self, pool: PoolSpec):
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        if pool.threads:
            env.update({v: str(pool.threads) for v in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")})
        opts = dict(pool.options, max_restarts=0, max_task_retries=0, runtime_env={"env_vars": env})
        return self.cls.options(**opts).remote(*self.args, threads=pool.threads, device=pool.device,
                                               pool_workers=pool.pool_workers)

    def submit(self, actor, method: str, *args):
        return getattr(actor, method).remote(*args)

    def wait(self, refs: list, timeout: float) -> list:
        ready, _ = self.ray.wait(refs, num_returns=1, timeout=timeout)
        if ready:  # collect everything else that is ready too, without waiting
            more, _ = self.ray.wait([r for r in refs if r not in ready], num_returns=len(refs) - len(ready),
                                    timeout=0)
            ready += more
        return ready

    def get(self, ref):
        from ray.exceptions import RayActorError, WorkerCrashedError  # ray is loaded by now; kept local with it

        try:
            return self.ray.get(ref)
        except (RayActorError, WorkerCrashedError) as e:
            raise WorkerDied(str(e).splitlines()[0] if str(e) else type(e).__name__) from None

    def stop(self, actor, graceful: bool) -> None:
        if graceful:  # idle: let it shut its solver worker processes down; otherwise no waiting
            try:
                self.ray.get(actor.close.remote(), timeout=10)
            except Exception:  # noqa: BLE001 - it is going away either way
                pass
        self.ray.kill(actor)


def _probe(address: str, timeout: float = 5.0) -> None:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"--address {address!r}: expected auto or HOST:PORT (e.g. 10.0.0.1:6379)")
    deadline = time.monotonic() + timeout
    err: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host.strip("[]"), int(port)), timeout=max(0.5, deadline - time.monotonic())):
                return
        except OSError as e:
            err = e
            time.sleep(0.5)
    raise _unreachable(address, str(err))


def _unreachable(address: str, detail: str) -> UserError:
    port = address.rpartition(":")[2]
    return UserError(f"cannot reach a Ray cluster at {address} ({detail}); start one there with `ray start --head "
                     f"--port {port}`, check the host, port and firewall, or drop --address to run on this machine")


def connect(address: str | None) -> bool:
    """Start Ray here, or join ``address``; True if this call started the session (and should stop it)."""
    import ray  # heavy; only sweeps on Ray need it

    if ray.is_initialized():
        if address not in (None, "", "local"):
            log.warning("Ray is already initialised in this process; --address %s is not used", address)
        return False
    kw = {"include_dashboard": False, "log_to_driver": False, "logging_level": logging.WARNING}
    if address in (None, "", "local"):
        # "local": a private instance even if someone else's `ray start` runs on this machine.
        ray.init(address="local", **kw)
        return True
    if address != "auto":
        _probe(address)  # refused / unroutable: fails in seconds, before Ray's own retries
    # Something answered (or "auto"): Ray retries ~20 x 1 s by default before giving up; keep the
    # whole attempt well under 30 s so that a wrong address is a quick, clear error.
    wait_var = "RAY_gcs_server_port_wait_time_s"
    old = os.environ.get(wait_var)
    os.environ.setdefault(wait_var, "10")
    try:
        ray.init(address=address, **kw)
    except Exception as e:  # noqa: BLE001 - ConnectionError, RuntimeError, auth errors: the user's cluster
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "uth" in type(e).__name__ or "token" in str(e).lower():
            msg += "; the cluster uses token authentication: set RAY_AUTH_MODE=token and RAY_AUTH_TOKEN as on the head"
        if address == "auto":
            raise UserError(f"no running Ray cluster found for --address auto ({msg}); start one with "
                            f"`ray start --head`, or drop --address to run on this machine") from None
        raise _unreachable(address, msg) from None
    finally:
        if old is None:
            os.environ.pop(wait_var, None)
    return True


def plan_pools(cluster: dict[str, float], *, workers: int | None, needs_cpu_pool: bool, device: str,
               cpu_actor_cpus: int, device_resource: str | None = None) -> list[PoolSpec]:
    """Actor pools for the cluster's resources.

    No GPUs: ``workers`` (default: one per CPU) CPU actors take every shard, each with
    max(1, C // K) torch threads so that K actors do not oversubscribe C cores. GPUs: one actor
    per GPU (``num_gpus=1``) for the model-bound attacks, plus, if the sweep routes attacks to CPUs,
    CPU-only actors (``num_cpus`` only) on the CPUs the GPU actors leave. ``device_resource``
    names a custom Ray resource that stands in for GPUs (tests of the routing on CPU machines).
    """
    cpus = max(1, int(cluster.get("CPU", os.cpu_count() or 1)))
    accel = int(cluster.get(device_resource or "GPU", 0))
    if accel == 0:
        k = workers or cpus
        threads = max(1, cpus // k)
        ncpu = threads if k * threads <= cpus else cpus / k  # fractional: all K fit, as asked
        return [PoolSpec("cpu", k, {"num_cpus": ncpu}, threads, "cpu" if device == "auto" else device)]
    k = workers or accel
    res = {"num_gpus": 1} if device_resource is None else {"resources": {device_resource: 1}}
    dev = ("cuda" if device_resource is None else "cpu") if device == "auto" else device
    # A device actor mostly waits on its GPU: one CPU each, fewer (fractions) if the CPUs are short,
    # keeping at least one for the CPU pool when there is one.
    reserve = 1 if needs_cpu_pool else 0
    dev_cpus = 1.0 if cpus >= k + reserve else (cpus / 2 if reserve else cpus) / k
    free = cpus - k * dev_cpus
    pools = []
    if needs_cpu_pool:
        per = max(1, min(cpu_actor_cpus, int(free)))
        n = max(1, int(free // per))
        # Each CPU actor runs its solver work in `per` worker processes (solvers are single-threaded).
        pools.append(PoolSpec("cpu", n, {"num_cpus": per if free >= per else free}, per, "cpu",
                              pool_workers=per if per > 1 else 0))
        free -= n * per
    threads = max(1, int(cpus - sum(q.size * (q.threads or 1) for q in pools)) // k)
    # The CPUs a device actor has are idle while its GPU works: they run its solver work
    # when CPU-bound attacks are not routed to CPU actors.
    pools.insert(0, PoolSpec("device", k, {**res, "num_cpus": dev_cpus}, threads, dev,
                             pool_workers=threads if threads > 1 else 0))
    return pools
