"""The lease keeper: renews the leases of a claim while its rows are embedded.

A claimed row returns to the queue when its lease expires (the daemon died); a slow
model call must therefore renew the leases of every row of the claim not yet written.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Sequence
from typing import Protocol

from indexer.exceptions import DatabaseUnavailable

logger = logging.getLogger(__name__)


class LeaseStore(Protocol):
    def extend_lease(
        self, worker_id: uuid.UUID, ids: Sequence[int], lease_seconds: float
    ) -> list[int]: ...


class LeaseKeeper:
    """Extends the leases it holds every lease/3 seconds on a thread of its own, while
    the model runs (ONNX Runtime releases the GIL).

    A database hiccup here is logged and retried at the next beat: the guarded write
    keeps the data right even if a lease does lapse.  Any other error stops the keeper
    and is raised again by :meth:`check` in the worker loop, so the daemon stops loudly
    rather than run without heartbeats.
    """

    def __init__(self, store: LeaseStore, worker_id: uuid.UUID, lease_seconds: float) -> None:
        self.store = store
        self.worker_id = worker_id
        self.lease_seconds = lease_seconds
        self.interval = lease_seconds / 3
        self._ids: list[int] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="lease-keeper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def hold(self, ids: Sequence[int]) -> None:
        """Renew exactly these rows from now on."""
        with self._lock:
            self._ids = list(ids)

    def drop(self) -> None:
        self.hold(())

    def check(self) -> None:
        if self._error is not None:
            raise RuntimeError(f"the lease keeper stopped: {self._error}") from self._error

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(5)

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.interval):
                with self._lock:
                    ids = list(self._ids)
                if not ids:
                    continue
                try:
                    self.store.extend_lease(self.worker_id, ids, self.lease_seconds)
                except DatabaseUnavailable as exc:
                    logger.warning("could not extend the lease of %d rows: %s", len(ids), exc)
        except BaseException as exc:
            self._error = exc
            logger.error("lease keeper failed: %s", exc)
