"""`indexer run --once` on a real terminal (a pseudo-terminal): the progress bar stays one
line at the bottom and the per-batch log lines scroll above it; with JSON logs, no bar."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import termios
import threading
from pathlib import Path

from indexer.db.connect import Connection

from ..helpers import INDEXER, cli_env, run_cli

COLUMNS = 120
BAR = "rows/s  ETA"  # in the bar, in no log line


def screen(output: str) -> list[str]:
    """The lines a terminal shows for ``output``: carriage return, newline, erase to the
    end of the line, printable characters overwrite (no wrapping: a line longer than the
    terminal is one line here, so a glued log line shows)."""
    lines = [""]
    col = 0
    i = 0
    while i < len(output):
        if output.startswith("\x1b[K", i):
            lines[-1] = lines[-1][:col]
            i += 3
            continue
        char = output[i]
        if char == "\r":
            col = 0
        elif char == "\n":
            lines.append("")
            col = 0
        else:
            line = lines[-1].ljust(col)
            lines[-1] = line[:col] + char + line[col + 1 :]
            col += 1
        i += 1
    return lines


def run_on_terminal(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run the real CLI with stdout and stderr on a pseudo-terminal; its output."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 40, COLUMNS, 0, 0))
    chunks: list[bytes] = []

    def read() -> None:
        while True:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the other side is closed
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        process = subprocess.Popen(
            [*INDEXER, *args], env=env, stdin=subprocess.DEVNULL, stdout=slave, stderr=slave
        )
        os.close(slave)
        returncode = process.wait(timeout=180)
        reader.join(timeout=30)
    finally:
        os.close(master)
    return returncode, b"".join(chunks).decode(errors="replace")


def _insert(conn: Connection, n: int) -> None:
    conn.execute(
        "INSERT INTO chunks (content) SELECT 'sentence number ' || g FROM generate_series(1, %s) g",
        (n,),
    )


def test_the_bar_stays_one_line_below_the_log_lines(
    database: str, conn: Connection, model_cache: Path
) -> None:
    _insert(conn, 32)
    env = cli_env(database, model_cache, TERM="xterm")
    returncode, output = run_on_terminal(
        ["run", "--once", "--batch-size", "4", "--claim-size", "8"], env
    )
    assert returncode == 0, output
    lines = [line for line in screen(output) if line.strip()]
    batches = [line for line in lines if " INFO indexer.worker" in line and ": batch " in line]
    assert len(batches) == 8, output
    bars = [line for line in lines if BAR in line]
    # One bar, the last line, complete; no log line has a piece of it glued on.
    assert bars == [lines[-1]], lines
    assert "[##############################] 32/32 rows" in bars[0]
    assert all("rows/s" not in line and "[#" not in line for line in lines[:-1]), lines
    assert all(len(line) < COLUMNS for line in bars)
    # Every screen line is one log line (the start line names the database, redacted).
    assert all(" INFO " in line or " WARNING " in line for line in lines[:-1]), lines
    assert any(f"INFO indexer: using database {database} (DATABASE_URL)" in line for line in lines)
    row = conn.execute("SELECT count(*) AS n FROM chunks WHERE state = 'embedded'").fetchone()
    assert row is not None and row["n"] == 32


def test_no_bar_with_json_logs_on_a_terminal(
    database: str, conn: Connection, model_cache: Path
) -> None:
    _insert(conn, 8)
    env = cli_env(database, model_cache, TERM="xterm")
    returncode, output = run_on_terminal(
        ["run", "--once", "--batch-size", "4", "--log-format", "json"], env
    )
    assert returncode == 0, output
    assert BAR not in output and "\r\x1b[K" not in output
    lines = [line for line in screen(output) if line.strip()]
    assert all(line.startswith('{"time": ') for line in lines), lines


def test_no_bar_in_a_pipe(database: str, conn: Connection, model_cache: Path) -> None:
    _insert(conn, 8)
    result = run_cli(["run", "--once", "--batch-size", "4"], cli_env(database, model_cache))
    assert result.returncode == 0, result.stderr
    assert BAR not in result.stderr and "\r" not in result.stderr
