"""The --once progress bar, drawn on a string buffer."""

from __future__ import annotations

import io
import re
import uuid

from indexer.progress import Progress
from indexer.worker import BatchResult


def batch(written: int, failed: int = 0) -> BatchResult:
    return BatchResult(
        uuid.uuid4(),
        written + failed,
        list(range(written)),
        list(range(failed)),
        tokens=10 * written,
        embed_ms=5.0,
    )


def test_progress_bar_shows_rows_rate_and_eta() -> None:
    out = io.StringIO()
    progress = Progress(10, out)
    progress.update(batch(4))
    first = out.getvalue()
    assert first.startswith("\r\x1b[K[############..................] 4/10 rows")
    assert re.search(r"  \d+\.\d rows/s  ETA \d+s", first), first
    progress.update(batch(5, failed=1))
    last = out.getvalue().rsplit("\r\x1b[K", 1)[1]
    assert "[##############################] 10/10 rows" in last
    assert re.search(r"ETA 0s", last), last
    progress.finish()
    assert out.getvalue().endswith("\n")
    assert "\n" not in out.getvalue()[:-1]  # one line, redrawn in place


def test_text_written_above_the_bar_clears_it_and_redraws_it_below() -> None:
    out = io.StringIO()
    progress = Progress(10, out)
    above = progress.above()
    above.write("before the first batch\n")  # no bar yet: nothing to clear
    assert out.getvalue() == "before the first batch\n"
    progress.update(batch(4))
    bar = out.getvalue().rsplit("\r\x1b[K", 1)[1]
    above.write("a log line\n")
    assert out.getvalue().endswith("\r\x1b[Ka log line\n" + bar)
    progress.finish()
    above.write("after the end\n")
    assert out.getvalue().endswith(bar + "\nafter the end\n")
