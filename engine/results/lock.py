"""One writer per store: a lease file that a driver takes atomically and keeps alive.

``sml sweep`` and ``sml attack`` hold ``<store>.lock`` (beside the store: a file inside it would be
an unknown object to zarr, which warns about it on every listing) while they write (their Ray
actors write under it): a JSON lease with host, pid, start time and a heartbeat that a thread renews
every ``HEARTBEAT_S``. A second driver refuses at once, naming the holder. A lease is stale, and
is taken over, when its holder is on this host and its pid is gone, or when its heartbeat is
older than ``STALE_S`` (a holder on another host, or a frozen one). Taking over renames the stale
file away first (atomic: of two drivers that both see it stale, only one rename succeeds) and then
creates the lease with O_EXCL, so two drivers can never both hold it.

This holds on local file systems and on shared ones with atomic rename and O_EXCL (NFSv3+, Lustre,
GPFS, CephFS). Object stores (``s3://`` ...) have neither: stores given as URLs are not locked
(a warning says so); keep one driver per such store yourself.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
import uuid
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime, timezone
from pathlib import Path

from engine.errors import UserError
from engine.results.format import is_url

log = logging.getLogger(__name__)

SUFFIX = ".lock"
HEARTBEAT_S = 10.0
STALE_S = 60.0


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # torn or foreign: judged by its age below


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stale(lease: dict, path: Path) -> bool:
    if lease.get("host") == socket.gethostname() and isinstance(lease.get("pid"), int):
        return not pid_alive(lease["pid"])
    try:
        age = time.time() - path.stat().st_mtime  # the heartbeat renews the file
    except FileNotFoundError:
        return True
    return age > STALE_S


class StoreLock:
    """``with StoreLock(store_path, "sml sweep"):`` holds the store's lease for the block."""

    def __init__(self, store: str | Path, command: str):
        store = Path(store)
        self.store = store
        self.path = store.with_name(store.name + SUFFIX)
        self.command = command
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _lease(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid(), "command": self.command, "token": self.token,
                "started": self.started, "heartbeat": datetime.now(timezone.utc).isoformat(timespec="seconds")}

    def acquire(self) -> StoreLock:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.started = datetime.now(timezone.utc).isoformat(timespec="seconds")
        for _ in range(5):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                lease = _read(self.path)
                if lease is None:
                    continue  # released meanwhile
                if not _stale(lease, self.path):
                    raise UserError(
                        f"{self.store}: another driver is writing this store ({lease.get('command', '?')} on "
                        f"host {lease.get('host', '?')}, pid {lease.get('pid', '?')}, started "
                        f"{lease.get('started', '?')}, last heartbeat {lease.get('heartbeat', '?')}); wait for it "
                        f"or stop it (`sml sweep --status {self.store}` shows its progress)") from None
                log.warning("%s: taking over the lease of a driver that is gone (host %s, pid %s, started %s)",
                            self.store, lease.get("host"), lease.get("pid"), lease.get("started"))
                try:
                    stale = self.path.with_name(f"{self.path.name}.stale-{self.token}")
                    os.replace(self.path, stale)
                    os.unlink(stale)
                except FileNotFoundError:
                    pass  # another driver took it over first: try again, and meet its lease
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._lease(), f)
            self._thread = threading.Thread(target=self._beat, name="sml-lock-heartbeat", daemon=True)
            self._thread.start()
            return self
        raise UserError(f"{self.path}: could not take the store's lease (it keeps changing hands); try again")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            lease = _read(self.path)
            if not lease or lease.get("token") != self.token:
                log.warning("%s: our lease was taken over by another driver", self.path)
                return
            tmp = self.path.with_name(f"{self.path.name}.{self.token}.tmp")
            tmp.write_text(json.dumps(self._lease()))
            os.replace(tmp, self.path)

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        lease = _read(self.path)
        if lease and lease.get("token") == self.token:
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def store_lock(store: str | Path, command: str) -> AbstractContextManager:
    """The lease of ``store`` for ``command``; stores given as URLs are not locked (module docstring)."""
    if is_url(store):
        log.warning("%s: object-store paths are not locked; make sure no other driver writes this store", store)
        return nullcontext()
    return StoreLock(Path(store).expanduser(), command)
