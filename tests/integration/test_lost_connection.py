"""A connection lost at any statement is an outage (DatabaseUnavailable), never a crash.

A server restart can cut a connection between its handshake and its first statements,
or between two statements of a check.  A small proxy in front of the real server
forwards the handshake and then drops the connection at the n-th statement, for every
n that the code under test reaches.
"""

from __future__ import annotations

import contextlib
import socket
import struct
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from indexer.db.connect import connect
from indexer.exceptions import DatabaseUnavailable
from indexer.store import Listener, Store

STATEMENT_TYPES = {b"Q", b"P"}  # a simple query, or the Parse of an extended one


class CuttingProxy:
    """A PostgreSQL Unix-socket proxy that closes a connection (both ways) instead of
    forwarding its ``cut_at``-th statement; 0 never cuts."""

    def __init__(self, target: str, cut_at: int) -> None:
        self.target = target
        self.cut_at = cut_at
        self.cuts = 0
        self.dir = tempfile.mkdtemp(prefix="pgcut-", dir="/tmp")
        self.path = str(Path(self.dir) / ".s.PGSQL.5432")
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._listener.bind(self.path)
        self._listener.listen(16)
        threading.Thread(target=self._accept, daemon=True).start()

    def close(self) -> None:
        self._listener.close()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            upstream = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            upstream.connect(self.target)
            threading.Thread(target=self._down, args=(upstream, client), daemon=True).start()
            threading.Thread(target=self._up, args=(client, upstream), daemon=True).start()

    @staticmethod
    def _down(upstream: socket.socket, client: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := upstream.recv(65536):
                client.sendall(data)
        with contextlib.suppress(OSError):
            client.shutdown(socket.SHUT_RDWR)

    def _up(self, client: socket.socket, upstream: socket.socket) -> None:
        buffer = b""
        started = False  # the startup message has no type byte
        statements = 0
        try:
            while data := client.recv(65536):
                buffer += data
                while True:
                    header = 4 if not started else 5
                    if len(buffer) < header:
                        break
                    size = struct.unpack("!I", buffer[header - 4 : header])[0]
                    end = header - 4 + size
                    if len(buffer) < end:
                        break
                    message, buffer = buffer[:end], buffer[end:]
                    if started and message[:1] in STATEMENT_TYPES:
                        statements += 1
                        if statements == self.cut_at:
                            self.cuts += 1
                            raise ConnectionAbortedError
                    started = True
                    upstream.sendall(message)
        except OSError:
            pass
        for sock in (client, upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


@contextlib.contextmanager
def proxy(database: str, cut_at: int) -> Iterator[tuple[CuttingProxy, str]]:
    info = psycopg.conninfo.conninfo_to_dict(database)
    port = info.get("port", 5432)
    p = CuttingProxy(f"{info['host']}/.s.PGSQL.{port}", cut_at)
    info["host"] = p.dir
    info["port"] = 5432
    try:
        yield p, psycopg.conninfo.make_conninfo(**{k: str(v) for k, v in info.items()})
    finally:
        p.close()


def _check(dsn: str) -> None:
    with Store(dsn, "public", timeout=2.0) as store:
        store.check()


def _connect(dsn: str) -> None:
    connect(dsn, "public").close()


def _listen(dsn: str) -> None:
    listener = Listener(dsn, "public")
    try:
        listener.wait(0.01)
    finally:
        listener.close()


@pytest.mark.parametrize("action", [_connect, _check, _listen], ids=["connect", "check", "listen"])
def test_a_connection_cut_at_any_statement_is_an_outage(database: str, action: object) -> None:
    reached = 0
    for cut_at in range(1, 30):
        with proxy(database, cut_at) as (p, dsn):
            try:
                action(dsn)  # type: ignore[operator]
            except DatabaseUnavailable as exc:
                assert "\n" not in str(exc)
            if p.cuts == 0:  # every statement went through: all cut points were tried
                break
            reached = cut_at
    else:
        pytest.fail("the action sent more statements than the test expected")
    assert reached >= 1
