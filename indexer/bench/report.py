"""The printed report: the machine, one row per figure, then the targets.

Each section's rows come from a function of its own (:data:`ROWS`); a section that
was skipped or failed gets one row saying so.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

Row = tuple[str, str, str]
Results = dict[str, Any]


def _throughput_rows(section: str, r: dict[str, Any], results: Results) -> list[Row]:
    """Texts/s, tokens/s and GFLOP/s of fp32 or of the reference, and its GEMM peak."""
    label = "onnxruntime fp32" if section == "model" else "sentence-transformers"
    rows: list[Row] = []
    for name in ("short", "mixed"):
        m = r[name]
        extra = (
            f", ONNX {m['speedup']:.2f}x faster"
            if section == "reference"
            else f", {m['of_gemm_peak']:.0%} of GEMM peak"
        )
        tokens = results["model"][name]["mean_tokens"] if "model" in results else "?"
        rows.append(
            (
                section,
                f"{label}, {name} (~{tokens} tok)",
                f"{m['texts_per_s']:,.1f} texts/s  {m['tokens_per_s']:,.0f} tok/s  "
                f"({m['useful_gflops']:.0f} GFLOP/s{extra})",
            )
        )
    engine = "onnxruntime" if section == "model" else "torch"
    rows.append((section, f"fp32 GEMM peak, {engine}", f"{r['gemm_peak_gflops']:.0f} GFLOP/s"))
    return rows


def _model_rows(r: dict[str, Any], results: Results) -> list[Row]:
    rows = _throughput_rows("model", r, results)
    int8 = r.get("int8", {})
    if "skipped" in int8:
        rows.append(("model", "onnxruntime int8 (opt-in)", f"skipped: {int8['skipped']}"))
        return rows
    for name in ("short", "mixed") if int8 else ():
        m = int8[name]
        rows.append(
            (
                "model",
                f"onnxruntime int8 (opt-in), {name}",
                f"{m['texts_per_s']:,.1f} texts/s  {m['x_fp32']:.2f}x fp32  "
                f"(cosine to fp32: min {m['min_cosine_fp32']:.4f}, "
                f"median {m['median_cosine_fp32']:.4f})",
            )
        )
    if "batch_max_abs_diff" in int8:
        rows.extend(_variant_rows(int8))
    return rows


def _variant_rows(int8: dict[str, Any]) -> list[Row]:
    """Batch independence (int8 and fp32) and int8's recall of fp32's neighbours."""
    sizes = "/".join(map(str, int8["batch_sizes"]))
    n = int8["neighbours"]
    return [
        (
            "model",
            f"  same text alone vs in batches of {sizes} ({int8['batch_texts']} texts)",
            f"max |diff| int8 {int8['batch_max_abs_diff']:.2g}, "
            f"fp32 {int8['fp32_batch_max_abs_diff']:.2g}",
        ),
        (
            "model",
            f"  int8 neighbours vs fp32 ({n['queries']} queries, exact top 10)",
            f"recall@1 {n['recall_at_1']:.3f}  recall@10 {n['recall_at_10']:.3f}",
        ),
    ]


def _reference_rows(r: dict[str, Any], results: Results) -> list[Row]:
    rows = _throughput_rows("reference", r, results)
    rows.append(("reference", "min cosine onnx vs reference", f"{r['min_cosine']:.7f}"))
    for name in ("short", "mixed"):
        m = r[name]
        if "int8_speedup" in m:
            rows.append(
                (
                    "reference",
                    f"int8 (opt-in) vs reference, {name}",
                    f"{m['int8_speedup']:.2f}x faster, min cosine {m['int8_min_cosine']:.4f}",
                )
            )
    return rows


def _backfill_rows(r: dict[str, Any], results: Results) -> list[Row]:
    s = r["median_run"]
    extra = r["padded_tokens_worker"] / r["padded_tokens_raw"] - 1
    return [
        ("backfill", f"worker, {r['rows']} mixed rows", f"{r['rows_per_s']:,.1f} rows/s"),
        (
            "backfill",
            "raw model, same texts",
            f"{r['raw_texts_per_s']:,.1f} texts/s  (ratio {r['ratio_to_raw']:.1%})",
        ),
        (
            "backfill",
            f"  padded tokens: {r['claim_size']}-row claims, {r['batch_size']}-row "
            "batches / all sorted at once",
            f"{r['padded_tokens_worker']:,} / {r['padded_tokens_raw']:,} (+{extra:.1%})",
        ),
        (
            "backfill",
            "median run: wall/claim/embed/write",
            f"{s['wall_ms']:.0f} / {s['claim_ms']:.0f} / {s['embed_ms']:.0f} / "
            f"{s['write_ms']:.0f} ms ({s['batches']} batches; "
            f"{r['outside_model_share']:.1%} outside the model)",
        ),
    ]


def _latency_rows(r: dict[str, Any], results: Results) -> list[Row]:
    rows: list[Row] = []
    for kind, label in (("chunk", "~1 KB chunk"), ("short", "short line")):
        k = r[kind]
        st = k["median_stages_ms"] or {}
        stages = " / ".join(f"{st.get(x, float('nan')):.1f}" for x in ("claim", "embed", "write"))
        rows.append(
            (
                "latency",
                f"INSERT -> vector committed, {label} ({k['median_tokens']} tok)",
                f"p50 {k['p50_ms']:.1f} ms  p95 {k['p95_ms']:.1f} ms  ({r['samples']} rows)",
            )
        )
        rows.append(("latency", "  daemon claim / embed / write (median)", f"{stages} ms"))
    return rows


def _search_rows(r: dict[str, Any], results: Results) -> list[Row]:
    idx = r["index"]
    curve = r["recall_by_ef_search"]
    return [
        (
            "search",
            f"top-{r['k']} of {r['rows']:,} rows, incl. embedding",
            f"p50 {r['p50_ms']:.1f} ms  p95 {r['p95_ms']:.1f} ms",
        ),
        (
            "search",
            "  query embedding / SQL p50",
            f"{r['embed_p50_ms']:.1f} / {r['sql_p50_ms']:.1f} ms",
        ),
        (
            "search",
            f"recall@10 (ef_search {r['ef_search']}, m {idx['m']}, "
            f"ef_construction {idx['ef_construction']})",
            f"{r['recall_at_10']:.3f}  (min {r['min_recall_at_10']:.1f})",
        ),
        (
            "search",
            "  recall@10 at ef_search " + " / ".join(curve),
            " / ".join(f"{v:.3f}" for v in curve.values()),
        ),
        (
            "search",
            "load (COPY binary) / HNSW build",
            f"{r['load_s']:.1f} / {r['index_build_s']:.1f} s",
        ),
    ]


def _gb(size: float) -> str:
    return f"{size / 1e9:.2f} GB" if size >= 1e8 else f"{size / 1e6:.1f} MB"


def _halfvec_rows(r: dict[str, Any], results: Results) -> list[Row]:
    """vector then halfvec in each row, and halfvec's ratio to vector."""
    v, h, x = r["types"]["vector"], r["types"]["halfvec"], r["ratios"]
    fit = " ".join(
        f"({t}: the graph outgrew maintenance_work_mem after {r['types'][t]['spilled_after']:,} "
        "rows)"
        for t in ("vector", "halfvec")
        if not r["types"][t]["graph_fit"]
    )
    return [
        (
            "halfvec",
            f"vector({r['dim']}) vs halfvec({r['dim']}), {r['rows']:,} rows: table",
            f"{_gb(v['table_bytes'])} vs {_gb(h['table_bytes'])} ({x['table']:.1%})",
        ),
        (
            "halfvec",
            "  HNSW index ("
            + "; ".join(
                f"{t} m {o['m']}, ef_construction {o['ef_construction']}"
                for t, o in r["index"].items()
            )
            + ")",
            f"{_gb(v['hnsw_bytes'])} vs {_gb(h['hnsw_bytes'])} ({x['hnsw_index']:.1%})",
        ),
        (
            "halfvec",
            f"  HNSW build (maintenance_work_mem {r['maintenance_work_mem']}, "
            f"max_parallel_maintenance_workers {r['max_parallel_maintenance_workers']})",
            f"{v['build_s']:.1f} s vs {h['build_s']:.1f} s ({x['build']:.2f}x; median of "
            f"{len(v['builds_s'])}, order swapped each round; workers launched "
            f"{v['workers']} / {h['workers']}) {fit}".rstrip(),
        ),
        (
            "halfvec",
            f"  top-{r['k']} SQL, ef_search {r['ef_search']} ({r['queries']} queries x "
            f"{r['runs']})",
            f"p50 {v['p50_ms']:.2f} vs {h['p50_ms']:.2f} ms ({x['p50']:.2f}x), "
            f"p95 {v['p95_ms']:.2f} vs {h['p95_ms']:.2f} ms ({x['p95']:.2f}x)",
        ),
        (
            "halfvec",
            f"  recall@10 against exact float32, mean of {len(v['recall_by_build'])} graphs",
            f"{v['recall_at_10']:.4f} vs {h['recall_at_10']:.4f} ({r['recall_diff']:+.4f}; "
            f"rounding alone, exact scan: {r['rounding_recall_at_10']:.4f})",
        ),
    ]


def _memory_rows(r: dict[str, Any], results: Results) -> list[Row]:
    return [
        (
            "memory",
            f"peak RSS, `run --once`, {r['rows']} rows x 1 MB",
            f"{r['peak_rss_mib']:.0f} MiB  (drain {r['process_s']:.1f} s incl. start)",
        )
    ]


def _claim_rows(r: dict[str, Any], results: Results) -> list[Row]:
    return [
        (
            "claim",
            f"claim {r['claim_size']} rows, {r['small_rows']:,} embedded",
            f"{r['small_ms']:.2f} ms  (p95 {r['small_p95_ms']:.2f})",
        ),
        (
            "claim",
            f"claim {r['claim_size']} rows, {r['large_rows']:,} embedded",
            f"{r['large_ms']:.2f} ms  (p95 {r['large_p95_ms']:.2f}, ratio {r['ratio']:.2f})",
        ),
    ]


def _cache_rows(r: dict[str, Any], results: Results) -> list[Row]:
    latency = r["insert_cached"]
    db = r["no_repeat_db_ms"]
    return [
        (
            "cache",
            f"re-ingest of {r['rows']} rows, all cached",
            f"{r['reingest_rows_per_s']:,.1f} rows/s  ({r['reingest_speedup']:.1f}x the "
            f"first ingest, {r['first_ingest_rows_per_s']:,.1f} rows/s)",
        ),
        ("cache", "50% duplicate rows vs distinct", f"{r['duplicates_speedup']:.2f}x rows/s"),
        (
            "cache",
            "no repeats: cache on vs off",
            f"{r['no_repeat_ratio']:.1%} of the rows/s (from the daemon's timings: "
            f"{r['no_repeat_ratio_from_stages']:.1%}; claim+write "
            f"{db['cache_on']:.0f} vs {db['cache_off']:.0f} ms)",
        ),
        (
            "cache",
            "INSERT of a cached text -> embedded",
            f"p50 {latency['p50_ms']:.1f} ms, p95 {latency['p95_ms']:.1f} ms",
        ),
        (
            "cache",
            f"claim of {r['claim_size']} cache hits, {r['lookup_small_entries']:,} "
            f"vs {r['lookup_large_entries']:,} cached",
            f"{r['claim_hits_small_ms']:.2f} vs {r['claim_hits_large_ms']:.2f} ms "
            f"(ratio {r['lookup_ratio']:.2f})",
        ),
        ("cache", "disk per million cached vectors", f"{r['disk_gb_per_million']:.2f} GB"),
    ]


def _documents_rows(r: dict[str, Any], results: Results) -> list[Row]:
    s = r["median_run"]
    u = r["update"]
    return [
        (
            "documents",
            f"first import, {r['documents']} documents, {r['chunks']} chunks "
            f"({r['chunk_tokens']}:{r['chunk_overlap']})",
            f"p50 {r['first_import_rows_per_s']:,.1f} chunk rows/s",
        ),
        (
            "documents",
            f"raw model, same chunk texts, {r['batch_size']}-text batches",
            f"p50 {r['raw_texts_per_s']:,.1f} texts/s  (ratio {r['ratio_to_raw']:.1%})",
        ),
        (
            "documents",
            "  median run: wall/claim/embed/write",
            f"{s['wall_ms']:.0f} / {s['claim_ms']:.0f} / {s['embed_ms']:.0f} / "
            f"{s['write_ms']:.0f} ms ({s['batches']} batches; "
            f"{r['outside_model_share']:.1%} outside the model)",
        ),
        (
            "documents",
            "re-import of the same documents, all cached",
            f"p50 {r['reimport_rows_per_s']:,.1f} chunk rows/s  ({r['reimport_speedup']:.1f}x the "
            f"first import; {r['reimport_reused']} of {r['chunks']} chunks reused)",
        ),
        (
            "documents",
            f"one-paragraph update of a {u['chunks']}-chunk document",
            f"{u['model_inputs']} model inputs (allowed {u['allowed_inputs']}: "
            f"{u['paragraph_chunks']} chunks over the paragraph + 1 each side; "
            f"{u['reused']} reused)",
        ),
    ]


def _phases(by_phase: dict[str, Any], show: Callable[[dict[str, Any]], str]) -> str:
    """Before / fill / after, each as ``show`` prints it ("-" for a phase with no sample)."""
    return " | ".join(
        show(by_phase[p]) if "p50_ms" in by_phase[p] else "-" for p in ("before", "fill", "after")
    )


def _switch_rows(r: dict[str, Any], results: Results) -> list[Row]:
    def latency(x: dict[str, Any]) -> str:
        return f"{x['p50_ms']:.1f} / {x['p95_ms']:.1f}"

    def ratio(ratios: dict[str, float], name: str) -> str:
        return f"{ratios[name]:.2f}" if name in ratios else "-"

    search, insert = r["search_ratio"], r["insert_ratio"]
    tries = "1 try" if r["activate_tries"] == 1 else f"{r['activate_tries']} tries"
    return [
        (
            "switch",
            f"{r['from_model']} -> {r['to_model']}, {r['rows']:,} chunks",
            f"fill {r['fill_chunks_per_s']:,.1f} chunks/s ({r['fill_s']:.1f} s); "
            f"index {r.get('index_s', 0):.1f} s after; "
            f"activate_model {r['activate_ms']:.1f} ms ({tries}); "
            f"add_model {r['add_model_ms']:.0f} ms",
        ),
        (
            "switch",
            "search p50 / p95 ms, before | fill | after",
            f"{_phases(r['search'], latency)}  (x before: fill {ratio(search, 'fill_p50')} / "
            f"{ratio(search, 'fill_p95')}, after {ratio(search, 'after_p50')} / "
            f"{ratio(search, 'after_p95')})",
        ),
        (
            "switch",
            "  SQL p50 / p95 ms, before | fill | after",
            _phases(r["search"], lambda x: f"{x['sql_p50_ms']:.1f} / {x['sql_p95_ms']:.1f}"),
        ),
        (
            "switch",
            "INSERT -> searchable p50 / p95 ms, before | fill | after",
            f"{_phases(r['insert'], latency)}  (p50 x before: fill "
            f"{ratio(insert, 'fill_p50')}, after {ratio(insert, 'after_p50')})",
        ),
        (
            "switch",
            "  the fill | its index build: search p50 / p95, INSERT p50 ms",
            " | ".join(
                f"{latency(r['search'][p])}, {r['insert'][p]['p50_ms']:.1f}"
                if "p50_ms" in r["search"].get(p, {}) and "p50_ms" in r["insert"].get(p, {})
                else "-"
                for p in ("filling", "indexing")
            ),
        ),
        (
            "switch",
            "answers checked: empty / mixed / failed",
            f"{r['answers']:,}: {r['empty']} / {r['mixed']} / {r['failed']}  "
            f"({r['hits_checked']:,} hits' scores; {r['top_hits_agreeing']:,} of "
            f"{r['top_hits_embedded_again']:,} top hits embedded again agree)",
        ),
    ]


def _fill_rows(r: dict[str, Any], results: Results) -> list[Row]:
    rss = r["peak_rss_mib"]
    return [
        (
            "fill",
            f"{r['model']} filled in the background, {r['rows']:,} lines",
            f"{r['fill_rows_per_s']:,.1f} rows/s on {r['fill_threads']} thread(s) "
            f"({r['fill_batches']} batches)",
        ),
        (
            "fill",
            "  raw model, same texts: fill's threads | every core",
            f"{r['raw_fill_threads_per_s']:,.1f} | {r['raw_every_core_per_s']:,.1f} texts/s  "
            f"(ratio {r['ratio_to_raw']:.1%} | {r['ratio_to_every_core']:.1%})",
        ),
        (
            "fill",
            "daemon peak RSS: fp32 alone | int8 alone | both (the fill)",
            f"{rss['fp32']:.0f} | {rss['int8']:.0f} | {rss['both']:.0f} MiB  "
            f"(both / sum {r['rss_ratio']:.2f})",
        ),
    ]


def _remote_rows(r: dict[str, Any], results: Results) -> list[Row]:
    local, remote, throttled = r["local"], r["remote"], r["throttled"]
    run = remote["median_run"]
    return [
        (
            "remote",
            f"in-process model, {r['rows']:,} mixed rows",
            f"{local['rows_per_s']:,.1f} rows/s",
        ),
        (
            "remote",
            "remote model (another indexer's /v1/embeddings), same rows",
            f"{remote['rows_per_s']:,.1f} rows/s  (ratio {r['ratio_to_local']:.1%}; "
            f"{run['requests']} requests of up to {r['batch_size']} inputs, "
            f"in_flight {r['in_flight']}; {remote['failed']} failed)",
        ),
        (
            "remote",
            f"  throttled: {throttled['throttle']}",
            f"{throttled['rows_per_s']:,.1f} rows/s  (ratio to unthrottled "
            f"{r['throttled_ratio']:.1%}; {throttled['deferrals']} deferrals counted, "
            f"{throttled['proxy_throttled']} 429s sent; {throttled['failed']} failed)",
        ),
    ]


#: The sections in the order they are printed, each with its rows.
ROWS: dict[str, Callable[[dict[str, Any], Results], list[Row]]] = {
    "model": _model_rows,
    "reference": _reference_rows,
    "backfill": _backfill_rows,
    "latency": _latency_rows,
    "search": _search_rows,
    "halfvec": _halfvec_rows,
    "memory": _memory_rows,
    "claim": _claim_rows,
    "cache": _cache_rows,
    "documents": _documents_rows,
    "switch": _switch_rows,
    "fill": _fill_rows,
    "remote": _remote_rows,
}


def table(results: Results) -> list[Row]:
    """(section, measure, value) rows of the printed table."""
    out: list[Row] = []
    for section, rows in ROWS.items():
        r = results.get(section)
        if r is None:
            continue
        if "skipped" in r:
            out.append((section, "skipped", str(r["skipped"])))
        elif "error" in r:
            out.append((section, "FAILED", str(r["error"])))
        else:
            out.extend(rows(r, results))
    return out


def _header(report: dict[str, Any]) -> list[str]:
    m = report["machine"]
    v = report["versions"]
    return [
        f"machine: {m['cpu']} (family/model {m['cpu_family_model']}), {m['usable_cores']} of "
        f"{m['cores']} cores usable, {m['simd']}, {m['ram_gib']} GiB RAM; {m['os']}",
        f"load average (1 min) at start {m['loadavg_start']}, at end {m.get('loadavg_end')}: "
        "other work on the machine slows every figure",
        f"versions: Python {m['python']}, onnxruntime {v['onnxruntime']}, PostgreSQL "
        f"{v['postgresql']}, pgvector {v['pgvector']} (shared_buffers {v['shared_buffers']})",
        f"mode: {'quick' if report['plan']['quick'] else 'full'}, each figure the median of "
        f"{report['plan']['repeats']} runs",
        "",
    ]


def render(report: dict[str, Any]) -> str:
    """The whole report as printed; ``report['targets']`` as :func:`evaluate` made them
    (in their JSON form)."""
    lines = _header(report)
    rows = table(report["results"])
    w1 = max((len(r[0]) for r in rows), default=8)
    w2 = max((len(r[1]) for r in rows), default=8)
    lines.append(f"{'section':<{w1}}  {'measure':<{w2}}  value")
    lines.append(f"{'-' * w1}  {'-' * w2}  {'-' * 40}")
    lines.extend(f"{s:<{w1}}  {k:<{w2}}  {val}" for s, k, val in rows)
    lines.append("")
    lines.append("targets:")
    for t in report["targets"]:
        note = f"  [{t['note']}]" if t["note"] else ""
        lines.append(f"  {t['verdict']:<12} {t['name']}: {t['value']} (target {t['wanted']}){note}")
    for section in ("search", "halfvec"):
        found = report["results"].get(section, {})
        if "vectors" in found:
            lines.append(f"{section} vectors: {found['vectors']}")
    return "\n".join(lines)
