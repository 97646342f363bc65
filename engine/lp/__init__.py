"""Exact solver of the MLA-LP step  ``min ||r||_inf  s.t.  A r <= b``, in rooms:

- ``solve``: ``solve_linf_lp``, the exact solver: checks, the final verification, the direct fallback (its
  docstring has the derivation);
- ``sifting``: its multilevel sifting, one named step per method of ``_Sifting``;
- ``problem``: one call's data and counters (the passes over A, their rounding bound, the Farkas test);
- ``master``: the restricted LP of the sifting, one warm HiGHS model;
- ``primal``: ``solve_linf_lp_primal``, the textbook primal LP, the reference for tests and benchmarks;
- ``pool``: ``LPPool``, many problems on CPU worker processes, A passed in shared memory;
- ``highs``: building a quiet, configured ``highspy.Highs``;
- ``common``: input validation and the dense helpers of the passes over A.
"""

from engine.lp.pool import LPPool
from engine.lp.primal import solve_linf_lp_primal
from engine.lp.solve import solve_linf_lp

__all__ = ["LPPool", "solve_linf_lp", "solve_linf_lp_primal"]
