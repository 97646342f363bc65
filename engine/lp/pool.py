"""LPPool: many (A, b) problems solved in parallel on CPU worker processes, A passed in shared memory."""

from __future__ import annotations

import collections
import concurrent.futures as cf
import multiprocessing
import os
import threading
import weakref
from multiprocessing import shared_memory

import numpy as np

from engine.lp.common import _as_problem
from engine.lp.solve import solve_linf_lp

_THREAD_ENV = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "BLIS_NUM_THREADS",
               "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS")
# Worker initialiser, run through the builtin exec: unpickling it imports nothing, so the environment is in
# place before engine.lp (and numpy with its BLAS) is first imported by a task.  If the parent's __main__
# already pulled numpy into the spawned child, threadpoolctl caps the loaded BLAS at run time instead.
_WORKER_INIT = """
import os
for _k in {keys!r}:
    os.environ[_k] = {n!r}
try:
    from threadpoolctl import threadpool_limits
    threadpool_limits({n})
except Exception:
    pass
"""
_SHM_MIN_BYTES = 1 << 20  # below this, pickling A through the pipe is cheaper than a shared segment


def _pool_task(ref, b, bound, threads, kwargs):
    """Worker side: map A from its shared segment (no copy), solve, unmap."""
    kind, payload = ref
    if kind != "shm":
        return solve_linf_lp(payload, b, bound=bound, threads=threads, **kwargs)
    name, shape, dtype = payload
    seg = shared_memory.SharedMemory(name=name)
    try:
        A = np.ndarray(shape, dtype=np.dtype(dtype), buffer=seg.buf)
        out = solve_linf_lp(A, b, bound=bound, threads=threads, **kwargs)
        del A
        return out
    finally:
        try:
            seg.close()
        except BufferError:  # a view survived (only on error paths); the parent still unlinks the name
            pass


def _release_segment(seg: shared_memory.SharedMemory) -> None:
    try:
        seg.close()
    except BufferError:  # pragma: no cover
        pass
    try:
        seg.unlink()
    except FileNotFoundError:  # pragma: no cover - already gone
        pass


class _Segments:
    """Shared segments owned by a pool; separate object so that a finalizer can release them without keeping
    the pool alive."""

    def __init__(self):
        self.lock = threading.Lock()
        self.live: set = set()

    def add(self, seg) -> None:
        with self.lock:
            self.live.add(seg)

    def release(self, seg) -> None:
        with self.lock:
            if seg not in self.live:
                return
            self.live.discard(seg)
        _release_segment(seg)

    def release_all(self) -> None:
        with self.lock:
            segs, self.live = list(self.live), set()
        for seg in segs:
            _release_segment(seg)


def _shm_has_room(nbytes: int) -> bool:
    # Containers often mount a 64 MB /dev/shm; writing past it would SIGBUS instead of raising.
    try:
        st = os.statvfs("/dev/shm")
    except (OSError, AttributeError):
        return True  # no /dev/shm (not Linux): SharedMemory uses another backing
    return st.f_bavail * st.f_frsize > nbytes + (64 << 20)


def _finalize_pool(segments: _Segments, executor) -> None:
    if executor is not None:
        executor.shutdown(wait=True, cancel_futures=True)
    segments.release_all()


class LPPool:
    """Solve many (A, b) problems in parallel on CPU worker processes.

    LPPool(workers=None, threads_per_worker=None): by default workers * threads_per_worker = os.cpu_count()
    (all cores as single-threaded workers).  workers=0 solves inline in the caller (tests, debugging).
    Workers are started with "spawn" (the parent runs torch with threads: fork is unsafe); each caps HiGHS
    and its BLAS at threads_per_worker.  A is handed over through a POSIX shared-memory segment (one copy in
    the parent, none in the worker) that is unlinked as soon as the task finishes, fails or is cancelled, and
    by close()/garbage collection at the latest.  solver_kwargs are passed on to solve_linf_lp;
    arrays smaller than shm_min_bytes are simply pickled.

        with LPPool(workers=2) as pool:
            fut = pool.submit(A, b, bound=1.0)          # Future of (r, objective, status)
            results = pool.map([(A1, b1), (A2, b2)])    # list of (r, objective, status), in order
    """

    def __init__(self, workers: int | None = None, threads_per_worker: int | None = None, *,
                 start_method: str = "spawn", solver_kwargs: dict | None = None,
                 shm_min_bytes: int = _SHM_MIN_BYTES):
        cpu = os.cpu_count() or 1
        if workers is not None and workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        if threads_per_worker is not None and threads_per_worker < 1:
            raise ValueError(f"threads_per_worker must be >= 1, got {threads_per_worker}")
        if workers is None:
            threads = threads_per_worker or 1
            workers = max(1, cpu // threads)
        else:
            threads = threads_per_worker or (max(1, cpu // workers) if workers else 1)
        self.workers = int(workers)
        self.threads_per_worker = int(threads)
        self._kwargs = dict(solver_kwargs or {})
        self._shm_min_bytes = int(shm_min_bytes)
        self._segments = _Segments()
        self._executor = None
        self._closed = False
        if self.workers > 0:
            init = _WORKER_INIT.format(keys=_THREAD_ENV, n=str(self.threads_per_worker))
            self._executor = cf.ProcessPoolExecutor(
                max_workers=self.workers,
                mp_context=multiprocessing.get_context(start_method),
                initializer=exec,
                initargs=(init, {"__name__": "lp_pool_worker_init"}),
            )
        self._finalizer = weakref.finalize(self, _finalize_pool, self._segments, self._executor)

    def submit(self, A, b, bound: float | None = None) -> cf.Future:
        """Queue one problem; returns a Future of (r, objective, status).  Input errors raise here."""
        if self._closed:
            raise RuntimeError("LPPool is closed")
        A, b = _as_problem(A, b)
        if self._executor is None:
            fut: cf.Future = cf.Future()
            try:
                fut.set_result(solve_linf_lp(A, b, bound=bound, threads=self.threads_per_worker,
                                             **self._kwargs))
            except Exception as e:  # same contract as a worker: the error comes out of result()
                fut.set_exception(e)
            return fut
        if A.nbytes < self._shm_min_bytes or not _shm_has_room(A.nbytes):
            return self._executor.submit(_pool_task, ("array", A), b, bound, self.threads_per_worker,
                                         self._kwargs)
        seg = shared_memory.SharedMemory(create=True, size=max(1, A.nbytes))
        self._segments.add(seg)
        try:
            view = np.ndarray(A.shape, dtype=A.dtype, buffer=seg.buf)
            view[...] = A
            del view  # no exported buffer may outlive the copy, or close() fails
            fut = self._executor.submit(_pool_task, ("shm", (seg.name, A.shape, A.dtype.str)), b, bound,
                                        self.threads_per_worker, self._kwargs)
        except BaseException:
            self._segments.release(seg)
            raise
        # runs on success, exception, cancellation or a dead worker alike; immediately if already done
        fut.add_done_callback(lambda _f, seg=seg: self._segments.release(seg))
        return fut

    def map(self, problems, bound: float | None = None) -> list[tuple[np.ndarray, float, str]]:
        """Solve an iterable of (A, b) or (A, b, bound) tuples; results in input order.  At most 2 x workers
        problems are in flight, so a long list does not put every A into shared memory at once."""
        window = max(1, 2 * self.workers)
        pending: collections.deque = collections.deque()
        out = []
        try:
            for item in problems:
                A, b = item[0], item[1]
                pending.append(self.submit(A, b, item[2] if len(item) > 2 else bound))
                if len(pending) >= window:
                    out.append(pending.popleft().result())
            while pending:
                out.append(pending.popleft().result())
        except BaseException:
            for f in pending:
                f.cancel()
            raise
        return out

    def close(self, cancel: bool = False) -> None:
        """Wait for (or with cancel=True drop) queued work, stop the workers, release all shared memory."""
        if self._closed:
            return
        self._closed = True
        if self._executor is not None:
            self._executor.shutdown(wait=True, cancel_futures=cancel)
        self._segments.release_all()
        self._finalizer.detach()

    def __enter__(self) -> LPPool:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.close(cancel=exc_type is not None)
