"""The HTTP API of ``indexer run --http HOST:PORT``: health, metrics, embed and search.

A FastAPI app (:func:`create_app`) served by uvicorn in a background thread of the
daemon (:class:`HttpServer`).  Layers, each a module: ``schemas`` (the JSON bodies),
``middleware`` (body limit, catch-all, request counting), ``resources`` (what the
requests share), ``routes`` (the app) and ``server`` (uvicorn and the address).
"""

from __future__ import annotations

from indexer.http.routes import create_app
from indexer.http.server import HttpServer, parse_address

__all__ = ["HttpServer", "create_app", "parse_address"]
