"""What the Store's query mixins need of it.

Each mixin (:mod:`~indexer.store.queue`, :mod:`~indexer.store.documents`,
:mod:`~indexer.store.sources`, :mod:`~indexer.store.cache`) types ``self`` with
:class:`Executes`: it runs named queries only through the Store's ``_execute``, so
``store.py`` stays the one module that executes them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from psycopg.rows import DictRow


class Executes(Protocol):
    def _execute(
        self, name: str, params: dict[str, Any] | None = None, *, binary: bool = False
    ) -> list[DictRow]: ...

    def _one(self, name: str, params: dict[str, Any] | None = None) -> DictRow: ...

    def _execute_all(
        self,
        steps: Sequence[tuple[str, dict[str, Any]]],
        *,
        then: Callable[[list[DictRow]], Sequence[tuple[str, dict[str, Any]]]] | None = None,
    ) -> list[list[DictRow]]: ...
