"""What a sentence-transformers folder says about its model, read as
sentence-transformers reads it (for :mod:`indexer.embedding.describe`).

``modules.json`` (a Transformer, a Pooling module, and a Normalize module or none: any
other module would change the vectors in a way the indexer does not reproduce),
the Pooling config (both the old ``pooling_mode_*_tokens`` flags and the newer
``pooling_mode``), the prompts of ``config_sentence_transformers.json``,
``sentence_bert_config.json`` and ``tokenizer_config.json``.  Every file is optional;
a broken one is a :class:`~indexer.exceptions.ModelNotFound` with one line.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from indexer.embedding.architectures import read_json
from indexer.embedding.graph import POOLINGS
from indexer.exceptions import ModelNotFound, first_line

__all__ = ["StConfig", "check_tokenizer", "read_st_config"]


@dataclass(frozen=True)
class StConfig:
    """What a sentence-transformers folder's own files say (all optional)."""

    pooling: str | None = None
    dimension: int | None = None
    include_prompt: bool = True
    normalize: bool = True
    query_prefix: str = ""
    document_prefix: str = ""
    max_seq_length: int | None = None
    tokenizer_max_length: int | None = None
    do_lower_case: bool = False


#: Modules of a sentence-transformers pipeline the indexer reproduces, by class name.
_SUPPORTED_MODULES = ("Transformer", "Pooling", "Normalize")
#: Old (bool per mode) and new (``pooling_mode``) Pooling configs, as mode names.
_LEGACY_POOLING_KEYS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len_tokens",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}


def read_st_config(folder: Path) -> StConfig:
    """What the folder's sentence-transformers files say (defaults where it has none)."""
    values: dict[str, Any] = {}
    modules_path = folder / "modules.json"
    pooling_dir = folder / "1_Pooling"
    if modules_path.is_file():
        pooling_dir, values["normalize"] = _read_modules(modules_path, folder)
    pooling_path = pooling_dir / "config.json"
    if pooling_path.is_file():
        values.update(_read_pooling(pooling_path))
    elif modules_path.is_file():
        raise ModelNotFound(f"{folder}: modules.json names a Pooling module without {pooling_path}")
    values.update(_read_prompts(folder / "config_sentence_transformers.json"))
    st_config = _object(folder / "sentence_bert_config.json")
    if "max_seq_length" in st_config:
        values["max_seq_length"] = _positive_int(st_config, "max_seq_length", folder)
    values["do_lower_case"] = bool(st_config.get("do_lower_case", False))
    tokenizer_config = _object(folder / "tokenizer_config.json")
    length = tokenizer_config.get("model_max_length")
    if isinstance(length, int) and length > 0:
        values["tokenizer_max_length"] = length
    return StConfig(**values)


def _object(path: Path) -> dict[str, Any]:
    """A JSON object file's content; {} if there is no such file."""
    if not path.is_file():
        return {}
    data = read_json(path)
    if not isinstance(data, dict):
        raise ModelNotFound(f"{path} is not a JSON object")
    return data


def _positive_int(data: dict[str, Any], key: str, where: Path) -> int:
    value = data[key]
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ModelNotFound(f"{where}: {key} must be a positive integer, not {value!r}")
    return value


def _read_modules(path: Path, folder: Path) -> tuple[Path, bool]:
    """The Pooling module's folder, and whether a Normalize module follows it."""
    modules = read_json(path)
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise ModelNotFound(f"{path} is not a list of modules")
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    unsupported = [k for k in kinds if k not in _SUPPORTED_MODULES]
    if unsupported:
        raise ModelNotFound(
            f"{path} has a {unsupported[0]} module; the indexer runs only "
            f"{', '.join(_SUPPORTED_MODULES)} modules"
        )
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise ModelNotFound(
            f"{path} lists {', '.join(kinds) or 'no module'}; expected Transformer, Pooling "
            "and optionally Normalize, in that order"
        )
    if modules[0].get("path", ""):
        raise ModelNotFound(
            f"{path} keeps the transformer in {modules[0]['path']}/, a layout the indexer "
            "does not read"
        )
    return folder / str(modules[1].get("path", "1_Pooling")), kinds[2:] == ["Normalize"]


def _read_pooling(path: Path) -> dict[str, Any]:
    config = _object(path)
    mode: Any = config.get("pooling_mode")
    if mode is None:
        modes = [m for key, m in _LEGACY_POOLING_KEYS.items() if config.get(key)]
        mode = modes[0] if len(modes) == 1 else modes
    if isinstance(mode, list) and len(mode) == 1:
        mode = mode[0]
    if mode not in POOLINGS:
        raise ModelNotFound(
            f"{path} asks for {mode!r} pooling; the indexer pools by mean or cls only"
        )
    values: dict[str, Any] = {"pooling": mode}
    for key in ("embedding_dimension", "word_embedding_dimension"):
        if key in config:
            values["dimension"] = _positive_int(config, key, path)
    values["include_prompt"] = bool(config.get("include_prompt", True))
    return values


def _read_prompts(path: Path) -> dict[str, str]:
    """The prefixes of queries and documents: the ``query`` prompt, and the first
    non-empty one of ``document``, ``passage`` and ``corpus``; else the default prompt.

    Not quite sentence-transformers 6's ``encode_document``: it fills a missing
    ``document`` prompt with "" when it loads a folder, and then never reaches
    ``passage`` (e5's documents would get no prefix, against the model's card).
    """
    config = _object(path)
    raw = config.get("prompts") or {}
    if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
        raise ModelNotFound(f"{path}: prompts must map names to strings")
    prompts: dict[str, str] = raw
    default = config.get("default_prompt_name")
    fallback = prompts.get(default, "") if isinstance(default, str) else ""
    documents = [prompts[k] for k in ("document", "passage", "corpus") if prompts.get(k)]
    return {
        "query_prefix": prompts.get("query", fallback),
        "document_prefix": documents[0] if documents else fallback,
    }


def check_tokenizer(path: Path, *, lowercase: bool) -> None:
    """Refuse a tokenizer.json that does not load, or one that does not lowercase for a
    folder whose sentence-transformers config asks for lowercasing (which
    sentence-transformers would switch on in the tokenizer it loads)."""
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelNotFound(f"cannot load {path}: {first_line(exc)}") from exc
    if lowercase and not _lowercases(json.loads(tokenizer.to_str()).get("normalizer")):
        raise ModelNotFound(
            f"{path.parent}: sentence_bert_config.json asks for lowercased text "
            "(do_lower_case), but its tokenizer.json does not lowercase"
        )


def _lowercases(normalizer: Any) -> bool:
    """Whether a tokenizer.json normalizer (a Sequence of them included) lowercases."""
    if not isinstance(normalizer, dict):
        return False
    if normalizer.get("type") == "Lowercase" or normalizer.get("lowercase") is True:
        return True
    return any(_lowercases(n) for n in normalizer.get("normalizers", []))
