"""`indexer bench --quick` through the real CLI: every section reports plausible figures.

No timing is asserted (the machine is shared); only that each figure exists and makes
sense, that the scratch schemas are gone afterwards, and that the sentence-transformers
comparison either ran or says why it did not (and the model target still judges the
GEMM half without it).  The documents section runs alone too (``--only documents``), with
the checks that are behaviour, not timing: the daemon's chunks are the texts the raw model
ran on, a re-import reuses every vector, an edit of one paragraph re-embeds only the
windows over it.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import psycopg

from tests.helpers import cli_env, run_cli

SECTIONS = (
    "model",
    "reference",
    "backfill",
    "latency",
    "search",
    "memory",
    "claim",
    "cache",
    "documents",
    "switch",
    "remote",
)


def positive(section: dict[str, Any], *keys: str) -> None:
    for key in keys:
        value = section[key]
        assert isinstance(value, (int, float)), (key, value)
        assert value > 0, (key, value)


def test_quick_bench_reports_every_section(
    database: str, model_cache: Path, tmp_path: Path
) -> None:
    out = tmp_path / "bench.json"
    env = cli_env(database, model_cache)
    result = run_cli(["bench", "--quick", "--json", str(out)], env, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "targets:" in result.stdout
    report = json.loads(out.read_text())

    machine, versions = report["machine"], report["versions"]
    assert machine["usable_cores"] >= 1
    assert machine["cpu"]
    assert versions["onnxruntime"]
    assert versions["postgresql"]
    assert versions["pgvector"]

    results = report["results"]
    assert set(SECTIONS) <= set(results), sorted(results)
    for name in SECTIONS:
        assert "error" not in results[name], (name, results[name])

    model = results["model"]
    positive(model, "gemm_peak_gflops")
    for kind in ("short", "mixed"):
        positive(model[kind], "texts", "tokens", "seconds", "texts_per_s", "tokens_per_s")
    assert 10 <= model["short"]["mean_tokens"] <= 25
    assert model["mixed"]["mean_tokens"] > 50
    int8 = model["int8"]
    assert int8["model"].endswith("-int8"), int8
    for kind in ("short", "mixed"):
        positive(int8[kind], "texts_per_s", "tokens_per_s", "x_fp32")
        # Close to fp32, not equal: the quality the opt-in variant trades for speed.
        assert 0.95 <= int8[kind]["min_cosine_fp32"] < 0.99999
    # A text's int8 vector is the same alone and in any batch, to the last bit.
    assert int8["batch_texts"] == 24 and int8["batch_max_abs_diff"] == 0.0
    assert 0.0 <= int8["fp32_batch_max_abs_diff"] < 1e-5
    assert 0.5 <= int8["neighbours"]["recall_at_10"] <= 1.0

    reference = results["reference"]
    if importlib.util.find_spec("sentence_transformers") is None:
        assert "not installed" in reference["skipped"]
    else:
        for kind in ("short", "mixed"):
            positive(reference[kind], "texts_per_s", "speedup")
        assert reference["min_cosine"] >= 0.9999

    backfill = results["backfill"]
    positive(backfill, "rows", "rows_per_s", "raw_texts_per_s", "ratio_to_raw")
    assert backfill["median_run"]["batches"] >= 1

    latency = results["latency"]
    for kind in ("chunk", "short"):
        positive(latency[kind], "p50_ms", "p95_ms")
        assert latency[kind]["p95_ms"] >= latency[kind]["p50_ms"]

    search = results["search"]
    positive(search, "rows", "p50_ms", "p95_ms", "embed_p50_ms", "sql_p50_ms")
    assert 0.0 <= search["recall_at_10"] <= 1.0
    assert search["ef_search"] >= search["k"] == 10
    assert search["index"] == {
        "type": "hnsw",
        "ops": "vector_cosine_ops",
        "m": 16,
        "ef_construction": 64,
    }

    memory = results["memory"]
    assert memory["peak_rss_mib"] > 50  # a Python process with the model loaded

    claim = results["claim"]
    positive(claim, "small_ms", "large_ms", "ratio")
    assert claim["large_rows"] > claim["small_rows"]

    cache = results["cache"]
    positive(
        cache,
        "first_ingest_rows_per_s",
        "reingest_rows_per_s",
        "reingest_speedup",
        "duplicates_speedup",
        "no_repeat_ratio",
        "no_repeat_ratio_from_stages",
        "claim_hits_small_ms",
        "claim_hits_large_ms",
        "disk_gb_per_million",
    )
    assert cache["insert_cached"]["reused_rows"] >= cache["insert_cached"]["samples"]
    assert cache["lookup_large_entries"] > cache["lookup_small_entries"]

    remote = results["remote"]
    assert remote["rows"] == 192
    for path in ("local", "remote", "throttled"):
        positive(remote[path], "rows_per_s")
        assert remote[path]["failed"] == 0
    assert remote["throttled"]["deferrals"] >= 1

    targets = {t["name"]: t for t in report["targets"]}
    assert len(targets) == 21  # every target but the opt-in halfvec row's
    assert all(t["met"] in (True, False, None) for t in targets.values())
    int8_checks = {c["label"]: c for c in targets["int8 (opt-in) vs fp32"]["checks"]}
    assert int8_checks["batch |diff|"] == {
        "label": "batch |diff|",
        "figure": 0.0,
        "op": "<=",
        "threshold": 0,
        "met": True,
    }
    model_target = next(t for name, t in targets.items() if name.startswith("model fp32"))
    checks = {c["label"]: c for c in model_target["checks"]}
    gemm = checks["of GEMM peak"]
    assert gemm["figure"] == model["mixed"]["of_gemm_peak"]
    assert gemm["threshold"] == 0.75
    assert gemm["met"] is (gemm["figure"] >= 0.75)
    ratio = checks["vs sentence-transformers"]
    assert ratio["threshold"] == 1.25
    if "skipped" in reference:
        assert ratio["figure"] is None and ratio["met"] is None
        assert "vs sentence-transformers skipped" in model_target["value"]
        assert model_target["verdict"] in ("partly met", "MISSED")
    assert f"{model_target['verdict']:<12} {model_target['name']}" in result.stdout

    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'indexer_bench%'"
        ).fetchall()
    assert left == []


DOCUMENT_TARGETS = (
    "chunked ingestion vs raw model (same chunk texts)",
    "re-import of unchanged documents vs first import",
    "one-paragraph update: model inputs vs allowed",
)


def test_quick_bench_documents_alone(database: str, model_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "bench.json"
    env = cli_env(database, model_cache)
    result = run_cli(
        ["bench", "--quick", "--only", "documents", "--json", str(out)], env, timeout=600
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"documents"}
    documents = report["results"]["documents"]
    assert "error" not in documents, documents
    positive(
        documents,
        "documents",
        "chunks",
        "first_import_rows_per_s",
        "raw_texts_per_s",
        "ratio_to_raw",
        "reimport_rows_per_s",
        "reimport_speedup",
    )
    # Long documents (over 2,000 characters each) make several chunks each, at the
    # default window; the section checked the daemon's chunks against the raw model's.
    assert documents["chunks"] >= 2 * documents["documents"]
    assert (documents["chunk_tokens"], documents["chunk_overlap"]) == (128, 16)
    assert 0 < documents["distinct_chunks"] <= documents["chunks"]
    assert documents["median_run"]["batches"] >= 1
    runs = documents["runs_s"]
    assert len(runs["first"]) == len(runs["raw"]) == len(runs["again"]) == 2
    # The re-import found every chunk's vector in the cache, in each run.
    assert documents["reimport_reused"] == documents["chunks"]

    update = documents["update"]
    assert update["chunks"] >= 50
    assert update["paragraph_chunks"] >= 1
    # The edited windows went through the model, nothing far from the edit did, and
    # every other chunk reused its vector.
    assert 1 <= update["model_inputs"] <= update["allowed_inputs"]
    assert update["inputs_away_from_paragraph"] == 0
    assert update["reused"] + update["model_inputs"] == update["chunks"]

    targets = {t["name"]: t for t in report["targets"]}
    assert tuple(targets) == DOCUMENT_TARGETS
    ingestion = targets[DOCUMENT_TARGETS[0]]["checks"][0]
    assert ingestion["figure"] == documents["ratio_to_raw"]
    assert ingestion["met"] is (documents["ratio_to_raw"] >= 0.95)
    paragraph = targets[DOCUMENT_TARGETS[2]]
    assert paragraph["checks"][0]["figure"] == update["inputs_over_allowed"]
    assert paragraph["met"] is True
    assert f"{update['model_inputs']} inputs of {update['chunks']} chunks" in paragraph["note"]
    for name in DOCUMENT_TARGETS:
        assert f"{targets[name]['verdict']:<12} {name}" in result.stdout
    assert "one-paragraph update of a" in result.stdout

    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'indexer_bench%'"
        ).fetchall()
    assert left == []


SWITCH_TARGETS = (
    "model switch: empty, mixed or failed answers",
    "model switch: search latency vs before (incl. query embedding)",
    "model switch: INSERT -> searchable p50 vs idle",
)


def test_quick_bench_switch_alone(database: str, model_cache: Path, tmp_path: Path) -> None:
    """The model switch at a tiny size: every figure there, every answer checked and
    none empty, mixed or failed, both models complete at the end."""
    out = tmp_path / "bench.json"
    env = cli_env(database, model_cache)
    result = run_cli(
        ["bench", "--quick", "--only", "switch", "--switch-rows", "300", "--json", str(out)],
        env,
        timeout=600,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"switch"}
    switch = report["results"]["switch"]
    assert "error" not in switch, switch
    assert switch["rows"] == 300
    assert (switch["from_model"], switch["to_model"]) == (
        "all-MiniLM-L6-v2",
        "all-MiniLM-L6-v2-int8",
    )
    positive(switch, "corpus_embed_s", "add_model_ms", "fill_s", "fill_chunks_per_s")
    positive(switch, "activate_ms", "activate_tries", "probes", "answers")
    # The fill covered the corpus and the probes' rows embedded before the switch.
    assert 300 <= switch["fill_chunks"] <= 300 + switch["probes"]
    for phase in ("before", "fill", "after"):
        search, insert = switch["search"][phase], switch["insert"][phase]
        positive(search, "queries", "p50_ms", "p95_ms", "embed_p50_ms", "sql_p50_ms")
        assert search["p95_ms"] >= search["p50_ms"]
        positive(insert, "samples", "p50_ms", "p95_ms")
        assert insert["p95_ms"] >= insert["p50_ms"]
    assert switch["search"]["fill"]["queries"] >= 20
    assert switch["insert"]["fill"]["samples"] >= 5
    # The fill and the index build after it are also reported apart (a tiny corpus's
    # index is built with its table: its build phase may have no sample).
    parts = {"filling_p50", "filling_p95", "indexing_p50", "indexing_p95"}
    search_ratios = {"fill_p50", "fill_p95", "after_p50", "after_p95"}
    assert search_ratios <= set(switch["search_ratio"]) <= search_ratios | parts
    insert_ratios = {"fill_p50", "after_p50"}
    assert insert_ratios <= set(switch["insert_ratio"]) <= insert_ratios | parts
    assert "index_s" in switch
    positive(switch["search_ratio"], *switch["search_ratio"])
    positive(switch["insert_ratio"], *switch["insert_ratio"])

    # Every answer was checked, hit by hit, and each answer's top hit embedded again.
    by_phase = switch["answers_by_phase"]
    assert sum(by_phase.values()) == switch["answers"]
    timed = sum(switch["search"][p]["queries"] for p in ("before", "fill", "after"))
    assert switch["answers"] - by_phase["warm-up"] == timed
    assert switch["hits_checked"] == 10 * switch["answers"]
    assert switch["top_hits_embedded_again"] == switch["answers"]
    assert (switch["empty"], switch["mixed"], switch["failed"]) == (0, 0, 0)
    assert switch["violations"] == 0 and switch["examples"] == []
    assert switch["top_hits_agreeing"] == switch["answers"]
    # The previous model was kept current: both cover every chunk at the end.
    assert switch["missing_at_end"] == {"all-MiniLM-L6-v2": 0, "all-MiniLM-L6-v2-int8": 0}

    targets = {t["name"]: t for t in report["targets"]}
    assert tuple(targets) == SWITCH_TARGETS
    answers = targets[SWITCH_TARGETS[0]]
    assert answers["met"] is True and answers["checks"][0]["figure"] == 0
    assert answers["note"].startswith("at 300 rows, not 100k; ")
    search = targets[SWITCH_TARGETS[1]]
    assert [c["figure"] for c in search["checks"]] == [
        switch["search_ratio"][k] for k in ("fill_p50", "fill_p95", "after_p50", "after_p95")
    ]
    assert targets[SWITCH_TARGETS[2]]["checks"][0]["figure"] == switch["insert_ratio"]["fill_p50"]
    for name in SWITCH_TARGETS:
        assert f"{targets[name]['verdict']:<12} {name}" in result.stdout
    assert "answers checked: empty / mixed / failed" in result.stdout

    with psycopg.connect(database) as conn:
        left = conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname LIKE 'indexer_bench%'"
        ).fetchall()
    assert left == []
