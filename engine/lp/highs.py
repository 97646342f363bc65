"""The thin layer around highspy: one place that builds a quiet, configured ``highspy.Highs``."""

from __future__ import annotations

import os
import sys
import threading

import highspy

_INF = highspy.kHighsInf
_BS = highspy.HighsBasisStatus
_MS = highspy.HighsModelStatus

# Process-wide HiGHS state, guarded by one lock: solves may run on several threads of one process.
_highs_threads = [None]  # thread count HiGHS' process-global scheduler was started with
_highs_lock = threading.Lock()
_banner_shown = [False]  # only the first Highs() of a process prints the banner


def _construct_highs() -> highspy.Highs:
    """highspy.Highs(), with the copyright banner that the first instance of a process writes to fd 1
    sent to /dev/null: it is printed in C before any option can be set, and it would corrupt output
    such as ``sml evaluate --json``."""
    with _highs_lock:
        if _banner_shown[0]:
            return highspy.Highs()
        _banner_shown[0] = True
        sys.stdout.flush()
        saved, null = os.dup(1), os.open(os.devnull, os.O_WRONLY)
        try:
            os.dup2(null, 1)
            return highspy.Highs()
        finally:
            os.dup2(saved, 1)
            os.close(saved)
            os.close(null)


def _new_highs(threads: int, tol: float, time_limit: float | None = None) -> highspy.Highs:
    threads = max(1, int(threads))
    with _highs_lock:
        # HiGHS starts one scheduler per process on the first run(); a later instance asking for another
        # thread count fails with status "Not Set" unless the scheduler is restarted.
        if _highs_threads[0] is not None and _highs_threads[0] != threads:
            highspy.Highs.resetGlobalScheduler(True)
        _highs_threads[0] = threads
    h = _construct_highs()
    h.setOptionValue("output_flag", False)  # first, so that nothing below prints
    h.setOptionValue("log_to_console", False)
    h.setOptionValue("threads", threads)
    ftol = float(min(1e-7, max(1e-10, tol)))  # HiGHS accepts [1e-10, inf); looser than 1e-7 buys nothing
    h.setOptionValue("primal_feasibility_tolerance", ftol)
    h.setOptionValue("dual_feasibility_tolerance", ftol)
    if time_limit is not None:
        h.setOptionValue("time_limit", float(time_limit))
    return h
