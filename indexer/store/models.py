"""The model registry (migration 0009): the models whose vectors the indexer keeps,
which one is active, and each model's queue of chunks still to embed.

A mixin of :class:`indexer.store.Store`, like :mod:`indexer.store.queue`.  A model's
vectors are kept in ``chunks.embedding`` (``storage`` ``column``: the model the
upgrade registered) or in a table of its own; ``store_model_vectors`` writes either,
so no caller needs to know which.
"""

from __future__ import annotations

import datetime
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import psycopg
from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from indexer.exceptions import InvalidInput, ModelNotFound, first_line
from indexer.store.indexes import IndexWork
from indexer.store.protocol import Executes
from indexer.store.queue import ClaimedRow, claimed_rows

#: From how many embedded chunks on a model's HNSW index is built after its fill rather
#: than at once (migration 0011): below it, the inserts into the graph cost little.
DEFER_INDEX_AT = 10_000
#: A model whose fill has queued the chunks up to this many ids short of the last one
#: counts as filled: under a steady stream of new rows, the fill's bookkeeping always
#: trails the last id a little, and new rows are queued for every model anyway.
FILL_SLACK = 1000


@dataclass(frozen=True)
class BatchFigures:
    """What a batch of a model's background work logs besides its vectors."""

    batch_id: uuid.UUID
    tokens: int
    embed_ms: float
    failed: int
    #: More for the event's detail (a remote model's usage: ``provider``).
    detail: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RegisteredModel:
    """A row of ``models``.  ``record`` and ``fingerprint`` are None for the model the
    upgrade registered until a daemon that runs it has adopted it."""

    id: int
    name: str
    kind: str
    dimension: int
    halfvec: bool
    storage: str
    record: dict[str, Any] | None
    fingerprint: str | None
    active: bool
    created_at: datetime.datetime
    activated_at: datetime.datetime | None

    @property
    def in_column(self) -> bool:
        """Its vectors are ``chunks.embedding`` (else a table of its own)."""
        return self.storage == "column"


class ModelQueries:
    """The Store's model registry (see the module docstring)."""

    def models(self: Executes) -> list[RegisteredModel]:
        """Every registered model, oldest first."""
        return [RegisteredModel(**dict(r)) for r in self._execute("models")]

    def model_status(self: Executes) -> list[dict[str, Any]]:
        """``indexer_model_status``: per model, chunks covered and missing, work queued
        and parked (exact counts: one pass over chunks per model)."""
        return [dict(r) for r in self._execute("model_status")]

    def model_queue_status(self: Executes) -> list[dict[str, Any]]:
        """Per model: active, work queued and parked (cheap at any size: /metrics)."""
        return [dict(r) for r in self._execute("model_queue_status")]

    def add_model(
        self: Executes,
        name: str,
        *,
        dimension: int,
        record: dict[str, Any],
        fingerprint: str,
        halfvec: bool = False,
        defer_index_at: int = DEFER_INDEX_AT,
    ) -> int:
        """Register a model; its id.  Its table is made now, and its HNSW index too
        unless at least ``defer_index_at`` chunks are embedded: a daemon then builds it
        once the fill is done (:mod:`indexer.store.indexes`).  InvalidInput with one
        line for a name taken or a model already registered."""
        params = {
            "name": name,
            "dimension": dimension,
            "record": Jsonb(record),
            "fingerprint": fingerprint,
            "halfvec": halfvec,
            "defer_index_at": defer_index_at,
        }
        try:
            row = _waiting_for_chunks(self, "add_model", params, f"add model {name}")
        except (psycopg.errors.UniqueViolation, psycopg.errors.CheckViolation) as exc:
            raise InvalidInput(_model_error(exc, name)) from exc
        return int(row["id"])

    def adopt_model(
        self: Executes, model_id: int, name: str, record: dict[str, Any], fingerprint: str
    ) -> None:
        """Fill in the record of the model the upgrade registered (once)."""
        self._execute(
            "adopt_model",
            {
                "model_id": model_id,
                "name": name,
                "record": Jsonb(record),
                "fingerprint": fingerprint,
            },
        )

    def activate_model(self: Executes, name: str, *, force: bool = False) -> int:
        """Make ``name`` the active model (one transaction); how many embedded chunks
        lacked its vector (0 unless ``force``).  ModelNotFound for an unknown name;
        InvalidInput, saying how many are missing, while some are and not ``force``."""
        try:
            return int(self._one("activate_model", {"name": name, "force": force})["missing"])
        except psycopg.errors.UndefinedObject as exc:
            raise ModelNotFound(first_line(exc)) from exc
        except psycopg.errors.InvalidParameterValue as exc:
            raise InvalidInput(first_line(exc)) from exc

    def drop_model(self: Executes, name: str) -> None:
        """Drop a model that is not active, and its vectors."""
        try:
            _waiting_for_chunks(self, "drop_model", {"name": name}, f"drop model {name}")
        except psycopg.errors.UndefinedObject as exc:
            raise ModelNotFound(first_line(exc)) from exc
        except psycopg.errors.InvalidParameterValue as exc:
            raise InvalidInput(first_line(exc)) from exc

    def models_to_index(self: Executes, slack: int = FILL_SLACK) -> list[IndexWork]:
        """The models whose HNSW index is due: without a valid one, and active or
        filled (to within ``slack`` chunk ids of the last chunk); active ones first."""
        return [IndexWork(**dict(r)) for r in self._execute("models_to_index", {"slack": slack})]

    def model_index_state(self: Executes, name: str) -> str | None:
        """The state of a model's HNSW index: ready, building, broken or none (None: no
        such model).  Cheap at any size."""
        rows = self._execute("model_index_state", {"name": name})
        return str(rows[0]["state"]) if rows else None

    def index_lock_holder(self: Executes, model_id: int) -> tuple[str, int] | None:
        """The role and pid of a session of another role than the indexer's owner that
        holds the model's build lock (None: none does)."""
        rows = self._execute("index_lock_holder", {"model_id": model_id})
        return (str(rows[0]["role"]), int(rows[0]["pid"])) if rows else None

    def nothing_embedded(self: Executes) -> bool:
        """No chunk has a vector yet."""
        return bool(self._one("nothing_embedded")["empty"])

    # -- the daemon's side --------------------------------------------------------------

    def fill_model(self: Executes, model_id: int, batch: int = 1000) -> int:
        """Queue the next range of chunks embedded before the model could see them;
        how many chunk ids it spanned (0: none left, enough queued already, or another
        daemon is at it)."""
        return int(self._one("fill_model", {"model_id": model_id, "batch": batch})["spanned"])

    def claim_model_work(
        self: Executes,
        model_id: int,
        worker_id: uuid.UUID,
        limit: int,
        lease_seconds: float,
        max_chars: int,
        cache_key: str | None,
    ) -> list[ClaimedRow]:
        """Lease up to ``limit`` chunks the model has to embed (newest work first)."""
        rows = self._execute(
            "claim_model_work",
            {
                "model_id": model_id,
                "worker_id": worker_id,
                "limit": limit,
                "lease_seconds": lease_seconds,
                "max_chars": max_chars,
                "cache_key": cache_key,
            },
            binary=True,
        )
        return claimed_rows(rows)

    def finish_model_work(
        self: Executes,
        model: tuple[int, str],
        worker_id: uuid.UUID,
        rows: Sequence[ClaimedRow],
        vectors: Sequence[np.ndarray],
        *,
        cache_key: str | None,
        fresh: Sequence[bool],
        batch: BatchFigures,
        max_chars: int,
    ) -> list[int]:
        """Write a model's vectors for leased chunks (those still at the version read),
        end that work, log the batch (a ``model_batch`` event) and keep the fresh
        vectors in the cache: one transaction.  ``model``: its id and name.  Returns the
        chunks written."""
        model_id, name = model
        ids = [r.id for r in rows]
        new = [i for i, is_fresh in enumerate(fresh) if is_fresh]

        def then(stored: list[DictRow]) -> list[tuple[str, dict[str, Any]]]:
            written = list(stored[0]["written"])
            steps: list[tuple[str, dict[str, Any]]] = [
                ("finish_model_work", {"model_id": model_id, "ids": ids, "worker_id": worker_id}),
                (
                    "model_batch",
                    {
                        "worker_id": worker_id,
                        "batch_id": batch.batch_id,
                        "written": written,
                        "reused": sum(
                            1 for i, r in enumerate(rows) if not fresh[i] and r.id in written
                        ),
                        "token_count": batch.tokens,
                        "embed_ms": batch.embed_ms,
                        "model": name,
                        "failed": batch.failed,
                        "detail": Jsonb(batch.detail),
                    },
                ),
            ]
            if cache_key is not None and new:
                steps.append(
                    (
                        "cache_vectors",
                        {
                            "cache_key": cache_key,
                            "hashes": [rows[i].hash for i in new],
                            "embeddings": [vectors[i] for i in new],
                        },
                    )
                )
            return steps

        stored = {
            "model_id": model_id,
            "ids": ids,
            "versions": [r.content_version for r in rows],
            "embeddings": list(vectors),
            "hashes": [r.hash for r in rows],
            "max_chars": max_chars,
        }
        results = self._execute_all([("store_model_vectors", stored)], then=then)
        return list(results[0][0]["written"])

    def fail_model_work(
        self: Executes,
        model_id: int,
        worker_id: uuid.UUID,
        failures: Sequence[tuple[ClaimedRow, str]],
        *,
        max_attempts: int,
        retry_base_seconds: float,
    ) -> None:
        """Chunks the model could not embed: retried later, or parked with the error."""
        self._execute(
            "fail_model_work",
            {
                "model_id": model_id,
                "worker_id": worker_id,
                "ids": [r.id for r, _ in failures],
                "errors": [e for _, e in failures],
                "max_attempts": max_attempts,
                "retry_base_seconds": retry_base_seconds,
            },
        )

    def release_model_work(
        self: Executes, model_id: int, worker_id: uuid.UUID, ids: Sequence[int]
    ) -> None:
        """Give back leased chunks not embedded yet (a fill claim cut short for new
        work): claimable again at once, no attempt counted."""
        self._execute(
            "release_model_work", {"model_id": model_id, "worker_id": worker_id, "ids": list(ids)}
        )


#: How long add_model and drop_model wait, each try, for their lock on chunks (their
#: vectors' foreign key), and how many times they try: the application's statements
#: queue behind a waiting lock, so it is never held up longer than one wait.
LOCK_WAIT = "200ms"
LOCK_TRIES = 50


def _waiting_for_chunks(store: Executes, name: str, params: dict[str, Any], doing: str) -> DictRow:
    for attempt in range(LOCK_TRIES):
        try:
            return store._one(name, {**params, "lock_wait": LOCK_WAIT})
        except psycopg.errors.LockNotAvailable:
            time.sleep(min(0.05 * 2**attempt, 0.5))
    raise InvalidInput(
        f"cannot {doing}: transactions kept a lock on chunks for {LOCK_TRIES} tries of "
        f"{LOCK_WAIT} each (an open transaction that wrote chunks?); try again"
    )


def _model_error(exc: psycopg.Error, name: str) -> str:
    if isinstance(exc, psycopg.errors.CheckViolation):
        return (
            f"{name!r} is not a model name: 1 to 200 characters, no control characters, "
            "no space at either end"
        )
    return first_line(exc)
