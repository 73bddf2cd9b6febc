"""GET /models: the registered models (migration 0009), the active one marked."""

from __future__ import annotations

import anyio
from fastapi import FastAPI
from pydantic import BaseModel

from indexer.http.resources import Resources


class ModelInfo(BaseModel):
    name: str
    active: bool
    dimension: int
    halfvec: bool
    stored_in: str
    fingerprint: str | None
    created_at: str
    activated_at: str | None


class ModelList(BaseModel):
    models: list[ModelInfo]


def add_models(app: FastAPI, res: Resources) -> None:
    @app.get("/models", response_model=ModelList)
    async def models() -> ModelList:
        """The registered models: a search names one with ``"model"`` (default: the
        active one).  Their coverage is in ``indexer models list``."""
        rows = await anyio.to_thread.run_sync(res.store.models, limiter=res.search_threads)
        return ModelList(
            models=[
                ModelInfo(
                    name=m.name,
                    active=m.active,
                    dimension=m.dimension,
                    halfvec=m.halfvec,
                    stored_in="chunks.embedding" if m.in_column else f"model_{m.id}_vectors",
                    fingerprint=m.fingerprint,
                    created_at=m.created_at.isoformat(),
                    activated_at=None if m.activated_at is None else m.activated_at.isoformat(),
                )
                for m in rows
            ]
        )
