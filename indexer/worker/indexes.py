"""Building the HNSW index of a model once its fill is done, beside the worker.

A model added to a large corpus has no index while the daemon fills it (migration
0011, :mod:`indexer.store.indexes`).  A thread of its own looks every
:data:`CHECK_SECONDS` for a model whose index is due (filled, or active) and builds it
with ``CREATE INDEX CONCURRENTLY``: minutes, during which the worker, searches and new
rows go on.  One build at a time per model across every daemon (an advisory lock), and
one at a time in each daemon.

When the server runs on this machine, the building backend is niced to 19, like the
fill's model calls and statements (:mod:`indexer.priority`): searches and new rows take
the cores first.

``run --once`` builds what is due before it exits, so a script that fills a model with
``--once`` can activate it next.  Stopping the daemon cancels a build in progress; the
next daemon builds it again from the start.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Protocol

import psycopg

from indexer.exceptions import DatabaseUnavailable, first_line
from indexer.store.indexes import IndexBuild, IndexWork

logger = logging.getLogger(__name__)

#: Seconds between two looks for a model whose index is due.
CHECK_SECONDS = 2.0


class IndexStore(Protocol):
    def models_to_index(self, slack: int = ...) -> list[IndexWork]: ...

    def index_build(self, work: IndexWork) -> IndexBuild: ...

    def index_lock_holder(self, model_id: int) -> tuple[str, int] | None: ...


class IndexBuilder:
    """Builds due model indexes in a daemon thread (:meth:`start`), or now
    (:meth:`build_due`)."""

    def __init__(
        self, store: IndexStore, *, memory: str | None = None, every: float = CHECK_SECONDS
    ) -> None:
        self.store = store
        #: The builds' maintenance_work_mem (INDEXER_INDEX_BUILD_MEMORY; None: the server's).
        self.memory = memory
        self.every = every
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._build: IndexBuild | None = None
        self._thread = threading.Thread(target=self._run, name="index-builder", daemon=True)
        self._refused_nice = False
        self._warned: set[int] = set()
        self._taken: set[int] = set()

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop looking, and cancel a build in progress."""
        self._stop.set()
        build = self._build
        if build is not None:
            build.cancel()
        if self._thread.is_alive():
            self._thread.join(10)

    def build_due(self) -> int:
        """Build every index that is due now (one at a time); how many this call built."""
        built = 0
        with self._lock:
            for work in self.store.models_to_index():
                if self._stop.is_set():
                    break
                built += self._one(work)
        return built

    def _one(self, work: IndexWork) -> int:
        build = self.store.index_build(work)
        self._build = build
        start = time.perf_counter()

        def started() -> None:
            if work.state == "broken":
                logger.info("model %s: replacing the invalid index a cut-off build left", work.name)
            else:
                logger.info("model %s: building its HNSW index", work.name)

        try:
            built = build.run(memory=self.memory, started=started)
            if build.refused is not None and not self._refused_nice:
                self._refused_nice = True
                logger.info("index builds run at the server's priority (%s)", build.refused)
            if not built:
                self._held_by_another(work)
                return 0  # another daemon builds it, or has
        except psycopg.errors.QueryCanceled:
            logger.info("model %s: the build of its index was cancelled", work.name)
            return 0
        except psycopg.errors.DuplicateTable:
            self._name_taken(work)
            return 0
        except (psycopg.errors.UndefinedTable, psycopg.errors.UndefinedObject):
            logger.info("model %s: dropped while its index was being built", work.name)
            return 0
        finally:
            self._build = None
        logger.info(
            "model %s: HNSW index built in %.1f s; the model can be activated",
            work.name,
            time.perf_counter() - start,
        )
        return 1

    def _held_by_another(self, work: IndexWork) -> None:
        """Say once when a session of another role holds the model's build lock (the
        build waits for it: any role that may connect can take an advisory lock)."""
        if work.model_id in self._warned:
            return
        holder = self.store.index_lock_holder(work.model_id)
        if holder is not None:
            self._warned.add(work.model_id)
            logger.warning(
                "model %s: its index waits for the build lock, held by a session of role "
                "%s (pid %d) that is not a daemon's",
                work.name,
                holder[0],
                holder[1],
            )

    def _name_taken(self, work: IndexWork) -> None:
        """Say once that a relation that is not the model's index holds its name (a
        role that may create in the indexer's schema made it): no build until it is
        gone."""
        if work.model_id in self._taken:
            return
        self._taken.add(work.model_id)
        logger.warning(
            "model %s: its index cannot be built: another relation is named %s (a role "
            "that may create in the indexer's schema made it: drop it, and revoke CREATE)",
            work.name,
            work.index,
        )

    def _run(self) -> None:
        while not self._stop.wait(self.every):
            try:
                self.build_due()
            except DatabaseUnavailable as exc:
                logger.warning("index build postponed (database unavailable): %s", exc)
            except Exception as exc:  # a bug here must not stop the daemon's work
                logger.error(
                    "index build failed (next try in %g s): %s", self.every, first_line(exc)
                )
