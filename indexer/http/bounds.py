"""The bounds the HTTP API keeps against slow, idle, large or many clients.

One frozen dataclass, :class:`HttpLimits`, handed to :func:`~indexer.http.create_app`;
its defaults are what ``indexer run --http`` uses (README's "Limits" table lists them),
and tests pass smaller ones so that a timeout is seconds, not minutes.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class HttpLimits:
    """Every bound of the HTTP layer, in one place.

    - ``head_timeout``: seconds a connection may take to send a complete request head,
      counted from its connection (or from the end of its previous answer); a
      connection that has not is closed.  Idle and slow-header sockets cannot pile up.
    - ``body_timeout``: seconds a request may take to send its body, once the head is
      in; over it: 408.
    - ``max_connections``: open sockets; a new one over it closes the oldest socket that
      has no request in progress (idle, or still sending its head), so that /health
      always gets through.
    - ``max_requests``: requests in progress at once, /health excepted; more get 503.
    - ``max_body_bytes``: bytes in one request body (413).
    - ``max_answer_bytes``: bytes of one /search answer: results, best first, as many
      whole ones as fit; when some had to be left out the answer says
      ``"truncated": true``.  Every request in progress may hold one answer (a slow
      client keeps its answer until it has read it), so ``max_requests`` answers of this
      size are what answers can take in all.
    - ``memory_budget``: bytes that the bodies of all requests in progress may hold
      together, each body counted ``BODY_COST`` times (the bytes, then their parsed
      JSON); a request that would pass it gets 503 before its body is read.
    - ``max_filter_bytes``: bytes of a /search ``filter`` written as compact JSON (422).
    - ``max_json_items``: values (strings, numbers, objects, ...) in one body (413);
      counted on the raw bytes before any JSON is parsed.
    - ``max_depth``: nesting of arrays and objects in one body (422).
    - ``embed_threads`` / ``search_threads``: threads /embed and /search each have of
      their own (parsing, model, database); further requests queue.
    - ``statement_timeout``: seconds any SQL statement of the HTTP API may run
      (PostgreSQL's ``statement_timeout`` on its connections).
    - ``pool_wait``: seconds a /search waits for one of its database connections.
    - ``search_deadline``: seconds a /search may take in all (queueing included); past
      it the client gets 503 even if the database never answers.
    """

    head_timeout: float = 5.0
    body_timeout: float = 30.0
    max_connections: int = 1024
    max_requests: int = 64
    max_body_bytes: int = 8 * 1024 * 1024
    # 4 MiB holds 1,000 rows of a row search (each cut to 1,000 characters) and 1,000
    # documents of ordinary text with their 3 best passages (about 2.1 MB); 64 requests
    # holding one each are 256 MiB, as much as the bodies' budget.
    max_answer_bytes: int = 4 * 1024 * 1024
    memory_budget: int = 256 * 1024 * 1024
    max_filter_bytes: int = 64 * 1024
    max_json_items: int = 4096
    max_depth: int = 32
    embed_threads: int = 4
    search_threads: int = 8
    statement_timeout: float = 10.0
    pool_wait: float = 5.0
    search_deadline: float = 20.0


#: How many times its size a body is charged against ``memory_budget``: the bytes
#: themselves, plus what parsing them may build (a str per text, up to 4 bytes a
#: character for text beyond Latin-1).
BODY_COST = 3
