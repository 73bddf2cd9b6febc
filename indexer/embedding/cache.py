"""The model cache: graphs built once, written atomically, verified on every load.

Both graphs the package builds (the fp32 conversion in :mod:`indexer.embedding.resolve`
and the int8 variant in :mod:`indexer.embedding.quantize`) go through
:func:`cached_build`.  A cached file is trusted only if it hashes to a pinned sha256 or
to the one in its sidecar file, so a truncated or corrupted copy is rebuilt rather
than loaded.  Several daemons may share one cache directory and build the same file
at once; atomic renames mean none of them ever reads a torn file.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import tempfile
from collections.abc import Callable
from pathlib import Path

from indexer.exceptions import ConfigurationError, ModelNotFound

__all__ = [
    "atomic_write",
    "cache_error",
    "cached_build",
    "cached_file_is_valid",
    "cached_path",
    "ensure_cache_dir",
    "file_sha256",
    "read_source",
    "sidecar_path",
]

log = logging.getLogger(__name__)

#: Hex digits of the source's sha256 in a cache file name: enough to tell sources
#: apart, short enough for a readable name.
_HASH_CHARS = 16
_SIDECAR_SUFFIX = ".sha256"


def cached_path(cache_dir: Path, name: str, tag: str, source_sha256: str) -> Path:
    """The cache file for a graph built from a source with ``source_sha256``.

    ``name`` is made safe for a file name; ``tag`` carries whatever else selects the
    build (builder version, recipe), so a change to either never reuses a stale file.
    """
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", name).strip("._") or "model"
    return cache_dir / f"{slug}{tag}-{source_sha256[:_HASH_CHARS]}.onnx"


def read_source(path: Path) -> bytes:
    """The bytes a cached graph is built from (and named after, by their sha256)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelNotFound(f"cannot read {path}: {exc.strerror or exc}") from exc


def file_sha256(path: Path) -> str:
    """The sha256 (hex) of a file, read in pieces (a graph can be hundreds of MB)."""
    try:
        with path.open("rb") as fh:
            return hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError as exc:
        raise ModelNotFound(f"cannot read {path}: {exc.strerror or exc}") from exc


def cached_build(
    target: Path,
    pinned: str | None,
    build: Callable[[], bytes],
    cache_dir: Path,
    *,
    what: str,
    producer: str,
    built_from: str,
) -> None:
    """Make sure ``target`` holds a verified graph, running ``build`` if it does not.

    A cached file is accepted if it hashes to ``pinned`` (the known bytes for the
    packaged model) or to the sha256 in its sidecar; otherwise it is rebuilt.  A build
    whose bytes differ from ``pinned`` (another ``producer`` version serialised it
    differently) is still correct: it is logged and accepted through the sidecar, so a
    later load still detects a truncated or corrupted copy.
    """
    if target.is_file():
        if cached_file_is_valid(target, pinned):
            return
        log.warning("cached %s %s failed its sha256 check; rebuilding it", what, target)
    data = build()
    built_sha = hashlib.sha256(data).hexdigest()
    if pinned is not None and built_sha != pinned:
        log.warning(
            "the %s built for the packaged model has sha256 %s, not the pinned %s "
            "(different %s version?); using it anyway",
            what,
            built_sha,
            pinned,
            producer,
        )
    atomic_write(target, data, cache_dir)
    atomic_write(sidecar_path(target), (built_sha + "\n").encode(), cache_dir)
    log.info("%s to %s", built_from, target)


def sidecar_path(path: Path) -> Path:
    """The file next to a cached graph that records the sha256 it was written with.

    Needed where the bytes cannot be pinned in advance (a user's weights, or a different
    onnx/onnxruntime version serialising differently): a later load still detects a
    truncated or corrupted copy.
    """
    return path.with_name(path.name + _SIDECAR_SUFFIX)


def cached_file_is_valid(path: Path, pinned: str | None) -> bool:
    """True if ``path`` hashes to ``pinned`` or to the sha256 in its sidecar file."""
    try:
        with path.open("rb") as fh:
            actual = hashlib.file_digest(fh, "sha256").hexdigest()
    except OSError:
        return False
    if pinned is not None and actual == pinned:
        return True
    try:
        recorded = sidecar_path(path).read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return False
    return actual == recorded


def cache_error(cache_dir: Path, exc: OSError) -> ConfigurationError:
    """The one-line error for a cache directory that cannot be written."""
    reason = exc.strerror or str(exc)
    return ConfigurationError(
        f"model cache directory {cache_dir} is not writable ({reason}); "
        "set INDEXER_MODEL_CACHE to a writable directory"
    )


def ensure_cache_dir(cache_dir: Path) -> None:
    """Create ``cache_dir``; an unusable one is a :class:`ConfigurationError`."""
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise cache_error(cache_dir, exc) from exc


def atomic_write(target: Path, data: bytes, cache_dir: Path) -> None:
    """Write ``data`` to ``target`` so that readers see the old file or the new one.

    Each writer makes its own temporary file in the target's directory (same
    filesystem) and renames it into place, so concurrent builders never collide.
    """
    tmp_name: str | None = None
    try:
        fd, tmp_name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp_name, 0o644)
        os.replace(tmp_name, target)
        tmp_name = None
    except OSError as exc:
        raise cache_error(cache_dir, exc) from exc
    finally:
        if tmp_name is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp_name)
