"""SIGINT/SIGTERM handling for the daemon: the first signal asks for a graceful stop.

The handler only sets an event; the worker notices it between batches (or within a
quarter of a second when idle), finishes or releases its in-flight batch, records
``worker_stopped`` and returns, so the process exits 0.  A second signal interrupts
at once (KeyboardInterrupt); rows it held return to the queue when their lease ends.
The previous handlers are restored on exit.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from types import FrameType

logger = logging.getLogger(__name__)

SIGNALS = (signal.SIGINT, signal.SIGTERM)


@contextlib.contextmanager
def stop_on_signals(stop_event: threading.Event) -> Iterator[None]:
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handle(signum: int, frame: FrameType | None) -> None:
        name = signal.Signals(signum).name
        if stop_event.is_set():
            logger.warning("%s again: stopping now", name)
            raise KeyboardInterrupt
        logger.info("%s received: finishing the current batch, then stopping", name)
        stop_event.set()

    previous = {sig: signal.signal(sig, handle) for sig in SIGNALS}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
