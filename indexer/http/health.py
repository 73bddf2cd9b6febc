"""/health and /metrics: the database's state, read through the deadline probe."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

import psycopg
from fastapi import FastAPI
from fastapi.responses import JSONResponse, Response

from indexer.exceptions import (
    DatabaseRefused,
    DatabaseUnavailable,
    ExtensionMissing,
    IndexerError,
    SchemaNotMigrated,
    first_line,
)
from indexer.http.resources import PROBE_TIMEOUT, Resources
from indexer.http.schemas import Health
from indexer.metrics import CONTENT_TYPE

logger = logging.getLogger(__name__)


def add_health(app: FastAPI, res: Resources) -> None:
    @app.get("/health", response_model=Health, responses={503: {"model": Health}})
    async def health() -> JSONResponse:
        """Database reachable and migrated, model loaded, backlog; 503 with a reason if not."""
        reachable = migrated = False
        reason: str | None = None
        status: dict[str, Any] = {}
        away: list[str] = []
        try:
            status = await res.probe.status()
            reachable = migrated = True
            away = [str(m["model"]) for m in await res.probe.models() if m.get("away_since")]
        except (SchemaNotMigrated, ExtensionMissing) as exc:
            reachable, reason = True, str(exc)
        except (DatabaseUnavailable, DatabaseRefused) as exc:
            reason = str(exc)
        except IndexerError as exc:  # a privilege the API's role lacks, say
            reachable, reason = True, str(exc)
        except psycopg.Error as exc:
            reachable, reason = True, f"database error: {first_line(exc)}"
        body = Health(
            status="ok" if reason is None else "unavailable",
            reason=reason,
            database_reachable=reachable,
            schema_migrated=migrated,
            model_loaded=True,
            model=res.embedder.name,
            dim=res.embedder.dim,
            backlog=status.get("backlog"),
            pending=status.get("pending"),
            failed=status.get("failed"),
            oldest_pending_age_seconds=_seconds(status.get("oldest_pending_age")),
            documents_backlog=status.get("documents_backlog"),
            documents_failed=status.get("documents_failed"),
            search_role=status.get("search_role"),
            servers_away=away,
        )
        return JSONResponse(body.model_dump(), status_code=200 if reason is None else 503)


def _seconds(value: Any) -> float | None:
    return value.total_seconds() if isinstance(value, timedelta) else None


def add_metrics(app: FastAPI, res: Resources) -> None:
    @app.get(
        "/metrics",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE: {}}, "description": "Prometheus text"}},
    )
    async def metrics_text() -> Response:
        """Prometheus metrics; the backlog, per-source and per-model gauges are read from
        the database first (the models' coverage at most once a minute)."""
        try:
            res.metrics.observe_status(await res.probe.status())
            res.metrics.observe_sources(await res.probe.sources())
            res.metrics.observe_models(await res.probe.models())
            coverage = await res.coverage.read(PROBE_TIMEOUT)
            if coverage is not None:
                res.metrics.observe_coverage(coverage)
            res.metrics.database_up.set(1)
        except (IndexerError, psycopg.Error) as exc:
            logger.debug("metrics: database gauges not refreshed: %s", exc)
            res.metrics.database_up.set(0)
        return Response(res.metrics.render(), media_type=CONTENT_TYPE)
