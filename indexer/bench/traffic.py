"""The traffic beside a model switch (:mod:`indexer.bench.switch`): a query loop and an
INSERT probe, each in a thread of the bench's process, and the check of every answer.

Both tag each sample with the phase the section is in when the sample starts
(:class:`Phases`): one pair of threads runs from the baseline through the fill to after
the switch, so no phase change pauses the traffic, which is what "no downtime" means.

- :class:`QueryLoop` searches as :meth:`indexer.Indexer.search` does: it reads the
  registry, embeds the query with the model that names (the active one), and names that
  model to the database, so a switch between the two steps cannot mix models.  A think
  time after each query keeps it from taking a core the daemon needs.
- :class:`InsertProbe` inserts rows of text no other row has (no vector cache hit), at
  random moments, and polls their state every 2 ms until the daemon has written the
  active model's vector (``state = 'embedded'``: the vector and the state change are
  one transaction, whichever model is active), as the latency section does.
- :func:`check_answers` runs after the traffic: every hit of every answer must have a
  vector of the model the answer names, and its score must be that vector's cosine with
  the query, else the answer was scored on another model's vectors or on none (*mixed*);
  and each answer's top hit is embedded again from its text by the named model, whose
  cosine with the query must give the same score.
"""

from __future__ import annotations

import abc
import random
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg import sql

from indexer.bench.common import SEED, TOP_K, Floats, normalise
from indexer.db import connect as db
from indexer.exceptions import IndexerError, first_line
from indexer.registry import Embedders
from indexer.store import Store
from indexer.store.models import RegisteredModel

#: Seconds between two queries of the loop (one query at a time).
THINK_S = 0.05
#: A score and the cosine recomputed from the stored vectors agree to this much; two
#: models' scores of one text differ by about 1e-2 (int8 against fp32).
SCORE_TOLERANCE = 1e-4
#: Seconds between two polls of the probe rows' state, and how long one may wait.
PROBE_POLL_S = 0.002
PROBE_TIMEOUT_S = 60.0


class Phases:
    """The phase every sample is tagged with (set by the section's thread), and the
    event that stops both loops."""

    def __init__(self, first: str) -> None:
        self.current = first
        self.stop = threading.Event()


@dataclass
class Answer:
    """One search: the model it named, its query vector and its hits (id, score)."""

    phase: str
    model: str
    query: Floats
    hits: list[tuple[int, float]]
    error: str | None = None


@dataclass
class QueryTiming:
    total_ms: float
    embed_ms: float
    sql_ms: float


class _Loop(abc.ABC):
    """A thread that runs ``step`` until the phases' stop; its failure is raised by
    :meth:`join`."""

    def __init__(self, phases: Phases, name: str) -> None:
        self.phases = phases
        self.failure: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)

    def start(self) -> None:
        self.thread.start()

    def join(self) -> None:
        self.thread.join()
        if self.failure is not None:
            raise IndexerError(f"{self.thread.name}: {first_line(self.failure)}") from self.failure

    @property
    def failed(self) -> bool:
        return self.failure is not None

    def _run(self) -> None:
        try:
            while not self.phases.stop.is_set():
                self.step()
        except Exception as exc:  # reported by join(), in the section's thread
            self.failure = exc

    @abc.abstractmethod
    def step(self) -> None:
        """One unit of the loop's traffic (a search, a probe)."""


class QueryLoop(_Loop):
    """Searches one query text after another (see the module docstring)."""

    def __init__(
        self, store: Store, embedders: Embedders, texts: Sequence[str], phases: Phases
    ) -> None:
        super().__init__(phases, "bench-queries")
        self.store = store
        self.embedders = embedders
        self.texts = texts
        self.timings: dict[str, list[QueryTiming]] = defaultdict(list)
        self.answers: list[Answer] = []
        self._next = 0

    def step(self) -> None:
        text = self.texts[self._next % len(self.texts)]
        self._next += 1
        phase = self.phases.current
        t0 = time.perf_counter()
        try:
            embedder, name = self.embedders.for_query(self.store.models(), None)
            t1 = time.perf_counter()
            query = embedder.embed_queries([text])[0]
            t2 = time.perf_counter()
            hits = self.store.search(query, TOP_K, model=name)
            t3 = time.perf_counter()
        except (IndexerError, psycopg.Error) as exc:
            # A failed search is an answer too: the switch must not cause one.
            empty = np.zeros(0, dtype=np.float32)
            self.answers.append(Answer(phase, "", empty, [], error=first_line(exc)))
        else:
            self.timings[phase].append(
                QueryTiming((t3 - t0) * 1000, (t2 - t1) * 1000, (t3 - t2) * 1000)
            )
            self.answers.append(Answer(phase, name, query, [(h.id, h.score) for h in hits]))
        self.phases.stop.wait(THINK_S)


class InsertProbe(_Loop):
    """Inserts rows at random moments and times each until it is searchable (see the
    module docstring).

    An open loop: the next INSERT comes 0.1-0.3 s after the previous one, whether or not
    the daemon has embedded it, as an application's would.  A probe that waited for its
    row before pausing would insert just after each of the daemon's batches, and so
    wait for nearly a whole one when the daemon is busy.  Rows still waiting are polled
    together, every 2 ms."""

    def __init__(
        self, conn: db.Connection, texts: Sequence[str], phases: Phases, check: Callable[[], None]
    ) -> None:
        super().__init__(phases, "bench-inserts")
        self.conn = conn
        self.texts = texts
        self.check = check
        self.rng = random.Random(SEED)
        self.latencies: dict[str, list[float]] = defaultdict(list)
        self.ids: list[int] = []
        #: Rows inserted and not yet searchable: when (perf_counter) and in which phase.
        self.waiting: dict[int, tuple[float, str]] = {}
        self._next_at = time.perf_counter() + self.rng.uniform(0.1, 0.3)

    def step(self) -> None:
        if time.perf_counter() >= self._next_at:
            self._insert()
            self._next_at = time.perf_counter() + self.rng.uniform(0.1, 0.3)
        if not self.waiting:
            self.phases.stop.wait(max(0.0, self._next_at - time.perf_counter()))
            return
        done = self.conn.execute(
            "SELECT id FROM chunks WHERE id = ANY(%s) AND state = 'embedded'",
            (list(self.waiting),),
        ).fetchall()
        now = time.perf_counter()
        for row in done:
            inserted, phase = self.waiting.pop(int(row["id"]))
            self.latencies[phase].append((now - inserted) * 1000)
        oldest = min((t for t, _ in self.waiting.values()), default=now)
        if now - oldest > PROBE_TIMEOUT_S:
            self.check()  # the daemon's exit, with its log, if that is why
            raise IndexerError(f"a row inserted {PROBE_TIMEOUT_S:.0f} s ago is not embedded")
        self.phases.stop.wait(PROBE_POLL_S)

    def _insert(self) -> None:
        number = len(self.ids)
        text = f"{self.texts[number % len(self.texts)]}  [probe {number}]"
        phase = self.phases.current
        row = self.conn.execute(
            "INSERT INTO chunks (content) VALUES (%s) RETURNING id", (text,)
        ).fetchone()
        assert row is not None  # autocommit: the INSERT has committed here
        self.ids.append(int(row["id"]))
        self.waiting[int(row["id"])] = (time.perf_counter(), phase)


@dataclass
class Verdicts:
    """What :func:`check_answers` found, answer by answer."""

    answers: int = 0
    by_phase: dict[str, int] = field(default_factory=dict)
    empty: int = 0
    mixed: int = 0
    failed: int = 0
    hits: int = 0
    #: Hits whose score is also the other model's cosine (the check cannot tell them).
    indistinct_hits: int = 0
    text_checks: int = 0
    text_agree: int = 0
    examples: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        return self.empty + self.mixed + self.failed

    def as_dict(self) -> dict[str, Any]:
        return {
            "answers": self.answers,
            "answers_by_phase": self.by_phase,
            "empty": self.empty,
            "mixed": self.mixed,
            "failed": self.failed,
            "violations": self.violations,
            "hits_checked": self.hits,
            "indistinct_hits": self.indistinct_hits,
            "top_hits_embedded_again": self.text_checks,
            "top_hits_agreeing": self.text_agree,
            "examples": self.examples[:5],
        }


def stored_vectors(
    conn: db.Connection, model: RegisteredModel, ids: Sequence[int]
) -> dict[int, Floats]:
    """The model's vectors of ``ids`` that search may serve (of the chunk's current
    text), normalised: from ``chunks.embedding`` or the model's own table."""
    query: sql.Composable
    if model.in_column:
        query = sql.SQL(
            "SELECT id, embedding::real[] AS v FROM chunks "
            "WHERE id = ANY(%s) AND embedding IS NOT NULL"
        )
    else:
        query = sql.SQL(
            "SELECT v.chunk_id AS id, v.embedding::real[] AS v FROM {} v "
            "JOIN chunks c ON c.id = v.chunk_id AND c.content_version = v.content_version "
            "WHERE v.chunk_id = ANY(%s)"
        ).format(sql.Identifier(f"model_{model.id}_vectors"))
    rows = conn.execute(query, (list(ids),)).fetchall()
    if not rows:
        return {}
    vectors = normalise(np.array([r["v"] for r in rows], dtype=np.float32))
    return {int(r["id"]): vectors[i] for i, r in enumerate(rows)}


def check_answers(
    conn: db.Connection,
    answers: Sequence[Answer],
    models: Sequence[RegisteredModel],
    embedders: Embedders,
) -> Verdicts:
    """Every answer: not failed, not empty (the corpus always has k matches), scored on
    the named model's vectors alone (see the module docstring)."""
    by_name = {m.name: m for m in models}
    ids = sorted({i for a in answers for i, _ in a.hits})
    vectors = {m.name: stored_vectors(conn, m, ids) for m in models}
    out = Verdicts(answers=len(answers))
    passed: list[Answer] = []
    for answer in answers:
        out.by_phase[answer.phase] = out.by_phase.get(answer.phase, 0) + 1
        if answer.error is not None:
            out.failed += 1
            out.examples.append(f"{answer.phase}: failed: {answer.error}")
        elif len(answer.hits) < TOP_K:
            out.empty += 1
            out.examples.append(f"{answer.phase}: {len(answer.hits)} hits by {answer.model}")
        elif not scored_by(answer, vectors, out):
            out.mixed += 1
            out.examples.append(f"{answer.phase}: a score is not {answer.model}'s")
        else:
            passed.append(answer)
    _check_top_texts(conn, passed, by_name, embedders, out)
    return out


def scored_by(answer: Answer, vectors: dict[str, dict[int, Floats]], out: Verdicts) -> bool:
    """Every hit's score is the cosine of the query with the named model's vector."""
    query = normalise(answer.query[None, :])[0]
    named = vectors.get(answer.model, {})
    others = [v for name, v in vectors.items() if name != answer.model]
    good = True
    for chunk_id, score in answer.hits:
        out.hits += 1
        vector = named.get(chunk_id)
        if vector is None or abs(float(query @ vector) - score) > SCORE_TOLERANCE:
            good = False
            continue
        if any(
            chunk_id in other and abs(float(query @ other[chunk_id]) - score) <= SCORE_TOLERANCE
            for other in others
        ):
            out.indistinct_hits += 1
    return good


def _check_top_texts(
    conn: db.Connection,
    passed: Sequence[Answer],
    models: dict[str, RegisteredModel],
    embedders: Embedders,
    out: Verdicts,
) -> None:
    """The top hit of each answer that passed, embedded again by the named model from
    its text: its cosine with the query is the answer's score (each text embedded once
    per model)."""
    tops = [(a, a.hits[0]) for a in passed]
    ids = sorted({chunk_id for _, (chunk_id, _) in tops})
    rows = conn.execute("SELECT id, content FROM chunks WHERE id = ANY(%s)", (ids,)).fetchall()
    texts = {int(r["id"]): str(r["content"]) for r in rows}
    vectors: dict[tuple[str, int], Floats] = {}
    for name in {a.model for a, _ in tops}:
        wanted = sorted({i for a, (i, _) in tops if a.model == name and i in texts})
        embedded = embedders.get(models[name]).embed([texts[i] for i in wanted])
        vectors.update({(name, i): v for i, v in zip(wanted, normalise(embedded), strict=True)})
    for answer, (chunk_id, score) in tops:
        out.text_checks += 1
        vector = vectors.get((answer.model, chunk_id))
        query = normalise(answer.query[None, :])[0]
        if vector is not None and abs(float(query @ vector) - score) <= SCORE_TOLERANCE:
            out.text_agree += 1
        else:
            out.mixed += 1
            out.examples.append(f"{answer.phase}: top hit {chunk_id} is not {answer.model}'s")
