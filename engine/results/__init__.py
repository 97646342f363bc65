"""The result store: the on-disk format, its writer and reader, and the Python API's ``write_run``.

    from engine import results
    results.write_run("runs/mine.zarr", res, model="mine", dataset="demo", attack="pgd",
                      sample_index=ids, labels_true=y, label_names=model.label_names)

Modules: ``format`` (the layout, as data, and the format version), ``writer`` (open a store, create
a run group, write a shard), ``reader`` (read arrays, done chunks, runs, success rates), ``attrs``
(the one builder of a run's attributes and fingerprint), ``lock`` (one writer per store), ``api``
(``write_run``), ``export`` (``sml export``'s CSV).
"""

from engine.results.api import write_run
from engine.results.format import (
                                   FORMAT,
                                   NORMS,
                                   RESULT_FIELDS,
                                   check_format,
                                   check_name,
                                   is_url,
                                   param_label,
                                   result_shape,
                                   run_key,
)
from engine.results.lock import store_lock
from engine.results.reader import check_store, done_chunks, done_flags, done_rows, iter_runs, read, summarize
from engine.results.writer import create_run, model_group, open_store, reopen_chunk, write_chunk

__all__ = ["FORMAT", "NORMS", "RESULT_FIELDS", "check_format", "check_name", "check_store", "create_run", "done_chunks",
           "done_flags", "done_rows", "is_url", "iter_runs", "model_group", "open_store", "param_label", "read",
           "reopen_chunk", "result_shape", "run_key", "store_lock", "summarize", "write_chunk", "write_run"]
