"""The background thread a daemon fills models on: the lowest CPU priority, for that
thread and the threads it starts only."""

from __future__ import annotations

import os
import threading

import pytest

from indexer.embedding.background import NICE, Background, thread_nice


def test_calls_run_on_one_thread_at_the_lowest_priority_and_the_caller_keeps_its_own() -> None:
    mine = thread_nice()
    with Background() as background:
        first = background.call(threading.get_native_id)
        assert background.call(threading.get_native_id) == first != threading.get_native_id()
        assert background.call(thread_nice) == NICE
        # A thread it starts (as ONNX Runtime starts a session's pool) inherits it.
        seen: list[int] = []

        def start_one() -> None:
            child = threading.Thread(target=lambda: seen.append(thread_nice()))
            child.start()
            child.join()

        background.call(start_one)
        assert seen == [NICE]
    assert thread_nice() == mine


def test_an_error_reaches_the_caller_and_the_thread_goes_on() -> None:
    def fail(what: str) -> None:
        raise ValueError(what)

    with Background() as background:
        with pytest.raises(ValueError, match="a bad text"):
            background.call(fail, "a bad text")

        def add(a: int, *, b: int) -> int:
            return a + b

        assert background.call(add, 1, b=2) == 3


def test_a_refused_nice_value_leaves_the_work_at_normal_priority(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def refuse(which: int, who: int, prio: int) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "setpriority", refuse)
    mine = thread_nice()
    with Background() as background:
        assert background.call(thread_nice) == mine
    assert "background model work runs at normal CPU priority" in caplog.text
