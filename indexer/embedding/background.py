"""A thread at the lowest CPU priority, for model work that may wait.

A daemon fills a model added beside the active one (:class:`~indexer.worker.fill.ModelFill`)
while the application keeps inserting and searching, often on the cores its PostgreSQL
serves from.  That fill is work that may wait; the new rows, the searches and the
database's own queries may not.  So its model calls run on one thread niced to
:data:`NICE` (19, the lowest priority Linux has), and the ONNX Runtime session of a model
opened for it is created on that thread too, with half the cores' threads
(:func:`background_threads`): ONNX Runtime starts the session's intra-op threads when the
session is created, and a new thread takes its creator's nice value.
Whatever else wants a core then gets it first, and when nothing does, the fill runs as
fast as before (niceness only decides who runs when cores are contended).

Linux keeps a nice value per thread, so this lowers the fill's threads only, never the
daemon's others.  A nice value cannot be lowered again without privilege, which is why
the work moves to a thread of its own rather than the calling thread being niced for a
while.  Where the system refuses (another kernel, a sandbox), the work runs at normal
priority and a log line says so once.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import ParamSpec, TypeVar

from indexer.embedding.session import default_threads
from indexer.priority import NICE, lower

__all__ = ["NICE", "Background", "background_threads", "thread_nice"]

logger = logging.getLogger(__name__)


_P = ParamSpec("_P")
_T = TypeVar("_T")


def background_threads() -> int:
    """The intra-op threads of a session opened for background work: half the cores this
    process may run on, at least one, so that the rest are left to the work that may
    not wait."""
    return max(1, default_threads() // 2)


def thread_nice() -> int:
    """The calling thread's nice value (Linux keeps one per thread)."""
    return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())


class Background:
    """One thread at nice :data:`NICE` that runs what :meth:`call` gives it, one call at
    a time, while the caller waits for the result (an exception raised there is raised
    to the caller).  The caller does not run while it waits, so the two never compete
    for the GIL or the cores.  :meth:`close` ends the thread."""

    def __init__(self, nice: int = NICE) -> None:
        self._nice = nice
        self._executor = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="indexer-background", initializer=self._lower
        )

    def _lower(self) -> None:
        refused = lower(threading.get_native_id(), self._nice)
        if refused is not None:
            logger.warning("background model work runs at normal CPU priority (%s)", refused)

    def call(self, fn: Callable[_P, _T], /, *args: _P.args, **kwargs: _P.kwargs) -> _T:
        """``fn(*args, **kwargs)`` on the background thread."""
        return self._executor.submit(fn, *args, **kwargs).result()

    def close(self) -> None:
        self._executor.shutdown(wait=True)

    def __enter__(self) -> Background:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
