// The indexer's web console: reads the daemon's JSON endpoints with the bearer token
// kept in this tab's sessionStorage, and writes everything it gets as text (never as
// HTML: errors, keys and passages come from the database).
"use strict";
(() => {
  const KEY = "indexer.token";
  const TICK_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";

  let token = sessionStorage.getItem(KEY) || "";
  let connected = false;
  let busy = false;
  let again = false;
  let ticks = 0;
  let failedSeen = null; // the failed counts the failures list was read for
  let sources = [];

  const $ = (id) => document.getElementById(id);

  // -- DOM helpers: text goes in as text nodes ---------------------------------------
  function make(ns, tag, attrs, children) {
    const node = ns ? document.createElementNS(ns, tag) : document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === "text") node.textContent = value;
      else if (name === "class") node.setAttribute("class", value);
      else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
      else node.setAttribute(name, value === true ? "" : String(value));
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }
  const el = (tag, attrs, ...children) => make(null, tag, attrs, children);
  const svg = (tag, attrs, ...children) => make(SVG, tag, attrs, children);

  // -- formats ---------------------------------------------------------------------------
  function duration(seconds) {
    if (seconds < 60) return `${Math.round(seconds)} s`;
    if (seconds < 3600) return `${Math.round(seconds / 60)} min`;
    if (seconds < 172800) return `${(seconds / 3600).toFixed(1)} h`;
    return `${(seconds / 86400).toFixed(1)} d`;
  }
  function format(value, kind) {
    if (value === null || value === undefined) return "–";
    if (kind === "duration") return duration(value);
    if (kind === "rate") return `${Number(value).toLocaleString("en-US", { maximumFractionDigits: 2 })}/s`;
    if (kind === "percent") return `${(value * 100).toFixed(1)} %`;
    return Number(value).toLocaleString("en-US");
  }
  function ago(iso) {
    const at = Date.parse(iso);
    return Number.isNaN(at) ? "–" : `${duration(Math.max(0, (Date.now() - at) / 1000))} ago`;
  }
  const plural = (n, word) => `${n.toLocaleString("en-US")} ${word}${n === 1 ? "" : "s"}`;
  // A figure in a cell: shown formatted, its raw value kept in data-value.
  function figure(tag, field, value, kind, extra) {
    const raw = value === null || value === undefined ? "" : String(value);
    return el(tag, { class: "n", "data-field": field, "data-value": raw, ...extra, text: format(value, kind) });
  }
  const emptyRow = (columns, text) => el("tr", {}, el("td", { colspan: columns, class: "empty", text }));

  // -- requests ----------------------------------------------------------------------------
  class Unauthorized extends Error {}

  async function call(path, body) {
    const headers = {};
    if (token) headers.Authorization = `Bearer ${token}`;
    const init = { headers, cache: "no-store" };
    if (body !== undefined) {
      init.method = "POST";
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const controller = new AbortController();
    const timer = setTimeout(() => controller.abort(), 60000);
    init.signal = controller.signal;
    let response;
    try {
      response = await fetch(path, init);
    } catch (error) {
      if (error instanceof TypeError && token && !/^[\x21-\x7e]+$/.test(token)) {
        throw new Unauthorized(); // a token no header can carry
      }
      throw new Error(error.name === "AbortError" ? "no answer within 60 s" : "the daemon cannot be reached");
    } finally {
      clearTimeout(timer);
    }
    if (response.status === 401) throw new Unauthorized();
    let data = null;
    try {
      data = await response.json();
    } catch (error) {
      data = null;
    }
    if (!response.ok) throw new Error((data && data.error) || `HTTP ${response.status}`);
    return data;
  }

  function setConnection(text, bad) {
    $("connection").textContent = text;
    $("connection").classList.toggle("bad", Boolean(bad));
  }

  // -- the token -----------------------------------------------------------------------
  function clearData() {
    for (const dd of document.querySelectorAll("dd[data-field]")) {
      dd.textContent = "–";
      delete dd.dataset.value;
      dd.classList.remove("bad");
    }
    $("model").textContent = "";
    $("source-rows").replaceChildren(emptyRow(11, "–"));
    $("failed-rows").replaceChildren(emptyRow(5, "–"));
    $("failed-documents").replaceChildren(emptyRow(5, "–"));
    $("retry-sources").replaceChildren();
    $("chart").replaceChildren(el("p", { class: "empty", text: "–" }));
    $("results").replaceChildren();
    $("search-message").textContent = "";
    $("retry-message").textContent = "";
    failedSeen = null;
    sources = [];
  }

  function askToken(message) {
    connected = false;
    clearData();
    document.body.classList.add("locked");
    $("login-message").textContent = message;
    $("login").hidden = false;
    $("forget").hidden = !token;
    setConnection("Not connected", true);
    $("token").focus();
  }

  function unauthorized() {
    askToken(token ? "The token was not accepted." : "This API needs a token.");
  }

  $("login").addEventListener("submit", (event) => {
    event.preventDefault();
    token = $("token").value.trim();
    $("token").value = "";
    sessionStorage.setItem(KEY, token);
    refresh(true);
  });

  $("forget").addEventListener("click", () => {
    token = "";
    sessionStorage.removeItem(KEY);
    clearData();
    refresh(true);
  });

  // -- reading -------------------------------------------------------------------------
  async function refresh(all) {
    if (busy) {
      again = again || all;
      return;
    }
    busy = true;
    try {
      const overview = await call("console/api/overview");
      if (!connected) all = true;
      connected = true;
      document.body.classList.remove("locked");
      $("login").hidden = true;
      $("forget").hidden = !token;
      showOverview(overview);
      const failed = `${overview.status.failed}/${overview.status.documents_failed}`;
      const reads = [];
      if (all || ticks % 6 === 0) reads.push(call("console/api/throughput").then(showThroughput));
      if (all || failed !== failedSeen || ticks % 6 === 0) {
        reads.push(call("console/api/failures").then((data) => {
          showFailures(data);
          failedSeen = failed;
        }));
      }
      await Promise.all(reads);
      setConnection(`Connected · updated ${new Date().toLocaleTimeString()}`);
    } catch (error) {
      if (error instanceof Unauthorized) unauthorized();
      else setConnection(`Cannot read the status: ${error.message}; trying again`, true);
    } finally {
      busy = false;
      if (again) {
        const full = again;
        again = false;
        refresh(full);
      }
    }
  }

  function showOverview(data) {
    const status = data.status;
    for (const dd of document.querySelectorAll("dd[data-field]")) {
      const value = status[dd.dataset.field];
      dd.dataset.value = value === null || value === undefined ? "" : String(value);
      dd.textContent = format(value, dd.dataset.format);
      dd.classList.toggle("bad", /failed$/.test(dd.dataset.field) && value > 0);
    }
    $("model").textContent = `${data.model}, ${data.dim} dimensions`;
    sources = data.sources;
    showSources();
  }

  function showSources() {
    const rows = sources.map((s) => {
      const coverage = s.documents ? s.indexed / s.documents : null;
      const table = s.table_present === false ? `${s.source_table} (gone)` : s.source_table;
      const backfill = s.backfilled ? "done" : `${plural(s.backfilled_rows, "row")} so far`;
      return el("tr", { "data-source": s.source },
        el("td", { text: s.source }),
        el("td", { text: table, class: s.table_present === false ? "bad" : null }),
        figure("td", "documents", s.documents, "count"),
        figure("td", "indexed", s.indexed, "count"),
        figure("td", "coverage", coverage, "percent"),
        figure("td", "pending", s.pending, "count"),
        figure("td", "in_flight", s.in_flight, "count"),
        figure("td", "failed", s.failed, "count", { class: s.failed ? "n bad" : "n" }),
        figure("td", "lag", s.lag, "duration"),
        figure("td", "chunks", s.chunks, "count"),
        el("td", { text: backfill }));
    });
    $("source-rows").replaceChildren(...(rows.length ? rows : [emptyRow(11, "No sources.")]));
    const options = [el("option", { value: "", text: "All sources" })];
    for (const s of sources) options.push(el("option", { value: s.source, text: s.source }));
    const chosen = $("source").value;
    $("source").replaceChildren(...options);
    $("source").value = sources.some((s) => s.source === chosen) ? chosen : "";
    const buttons = sources.filter((s) => s.failed > 0).map((s) => el("button", {
      type: "button",
      "data-retry-source": s.source,
      text: `Retry the ${plural(s.failed, "failed document")} of ${s.source}`,
      onclick: (event) => retry({ source: s.source }, event.currentTarget),
    }));
    $("retry-sources").replaceChildren(...buttons);
  }

  function showFailures(data) {
    const rows = data.rows.map((r) => el("tr", { "data-row": r.id },
      figure("td", "id", r.id, "count"),
      figure("td", "attempts", r.attempts, "count"),
      el("td", { class: "error", text: r.last_error || "" }),
      el("td", { title: r.updated_at, text: ago(r.updated_at) }),
      el("td", {}, el("button", {
        type: "button",
        "data-retry-row": r.id,
        text: "Retry",
        onclick: (event) => retry({ rows: [r.id] }, event.currentTarget),
      }))));
    if (data.rows.length === data.limit) {
      rows.push(emptyRow(5, `The first ${data.limit} failed rows; \`indexer retry --failed\` re-queues them all.`));
    }
    $("failed-rows").replaceChildren(...(rows.length ? rows : [emptyRow(5, "No failed rows.")]));
    const documents = data.documents.map((d) => el("tr", { "data-source": d.source, "data-key": d.key },
      el("td", { text: d.source }),
      el("td", { text: d.key }),
      figure("td", "attempts", d.attempts, "count"),
      el("td", { class: "error", text: d.last_error || "" }),
      el("td", { title: d.queued_at, text: ago(d.queued_at) }),
      el("td", {}, el("button", {
        type: "button",
        "data-retry-document": d.key,
        text: "Retry",
        onclick: (event) => retry({ source: d.source, keys: [d.key] }, event.currentTarget),
      }))));
    if (data.documents.length === data.limit) {
      documents.push(emptyRow(6, `The first ${data.limit} failed documents.`));
    }
    $("failed-documents").replaceChildren(...(documents.length ? documents : [emptyRow(6, "No failed documents.")]));
  }

  async function retry(body, button) {
    button.disabled = true;
    try {
      const done = await call("console/api/retry", body);
      let text;
      if (body.rows) {
        text = done.rows.length ? `Re-queued row ${done.rows.join(", ")}.` : `Row ${body.rows[0]} is no longer failed.`;
      } else if (body.keys) {
        const count = Object.values(done.documents).reduce((a, b) => a + b, 0);
        text = count ? `Re-queued document ${body.keys[0]} of ${body.source}.` : `Document ${body.keys[0]} of ${body.source} is no longer failed.`;
      } else {
        const count = Object.values(done.documents).reduce((a, b) => a + b, 0);
        text = `Re-queued ${plural(count, "document")} of ${body.source}.`;
      }
      $("retry-message").textContent = text;
      refresh(true);
    } catch (error) {
      if (error instanceof Unauthorized) unauthorized();
      else $("retry-message").textContent = `Not re-queued: ${error.message}`;
    } finally {
      button.disabled = false;
    }
  }

  // -- the chart: rows and passages written per minute ---------------------------------
  function showThroughput(data) {
    const minutes = data.minutes;
    const W = 720, H = 220, L = 46, R = 12, T = 12, B = 28;
    const peak = Math.max(1, ...minutes.map((m) => Math.max(m.rows, m.passages)));
    const step = 10 ** Math.floor(Math.log10(peak));
    const top = Math.ceil(peak / step) * step;
    const x = (i) => L + (i * (W - L - R)) / Math.max(1, minutes.length - 1);
    const y = (v) => T + (H - T - B) * (1 - v / top);
    const chart = svg("svg", { viewBox: `0 0 ${W} ${H}`, role: "img", "aria-label": "Rows and passages written per minute over the last hour" });
    for (const share of [0, 0.5, 1]) {
      chart.append(
        svg("line", { class: "axis", x1: L, x2: W - R, y1: y(top * share), y2: y(top * share) }),
        svg("text", { x: L - 6, y: y(top * share) + 4, "text-anchor": "end", text: format(top * share, "count") }));
    }
    const last = minutes.length - 1;
    for (const [i, label] of [[0, `−${last} min`], [Math.round(last / 2), `−${last - Math.round(last / 2)} min`], [last, "now"]]) {
      chart.append(svg("text", { x: x(i), y: H - 8, "text-anchor": i === 0 ? "start" : i === last ? "end" : "middle", text: label }));
    }
    const points = (key) => minutes.map((m, i) => `${x(i).toFixed(1)},${y(m[key]).toFixed(1)}`).join(" ");
    chart.append(svg("polyline", { class: "rows", points: points("rows") }));
    chart.append(svg("polyline", { class: "passages", points: points("passages") }));
    const width = (W - L - R) / Math.max(1, minutes.length - 1);
    minutes.forEach((m, i) => {
      if (m.failed_batches > 0) chart.append(svg("circle", { class: "failed", cx: x(i), cy: y(0), r: 3.5 }));
      const time = new Date(m.minute).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
      const text = `${time}: ${plural(m.rows, "row")}, ${plural(m.passages, "passage")}, ${plural(m.batches, "batch")}` +
        `${m.failed_batches ? `, ${plural(m.failed_batches, "failed batch")}` : ""}`;
      chart.append(svg("rect", { class: "hover", x: x(i) - width / 2, y: T, width, height: H - T - B }, svg("title", { text })));
    });
    const sum = (key) => minutes.reduce((a, m) => a + m[key], 0);
    const legend = el("p", { class: "legend" },
      el("span", { class: "rows", text: `rows/min (${plural(sum("rows"), "row")} this hour)` }),
      el("span", { class: "passages", text: `passages/min (${plural(sum("passages"), "passage")})` }),
      el("span", { class: "failed", text: `failed batches (${sum("failed_batches").toLocaleString("en-US")})` }));
    $("chart").replaceChildren(chart, legend);
  }

  // -- search ----------------------------------------------------------------------------
  $("group").addEventListener("change", () => {
    $("source").hidden = $("group").value !== "document";
  });

  $("search-form").addEventListener("submit", async (event) => {
    event.preventDefault();
    const group = $("group").value;
    const body = { query: $("query").value, k: Number($("k").value) || 10, group };
    if (group === "document" && $("source").value) body.source = $("source").value;
    $("search-message").textContent = "Searching…";
    $("results").replaceChildren();
    try {
      const data = await call("search", body);
      const found = data.results.length;
      $("search-message").textContent = `${plural(found, group === "document" ? "document" : "row")} found` +
        `${data.truncated ? " (the answer was cut to its size limit)" : ""}.`;
      $("results").replaceChildren(...data.results.map((hit) => (group === "document" ? documentHit(hit) : rowHit(hit))));
      if (group === "document" && found) await addContext(data.results);
    } catch (error) {
      if (error instanceof Unauthorized) unauthorized();
      else $("search-message").textContent = `Search failed: ${error.message}`;
    }
  });

  const score = (value) => el("span", { class: "score", "data-value": String(value), text: value.toFixed(3) });
  const metadata = (value) => el("p", { class: "meta", text: JSON.stringify(value) });

  function rowHit(hit) {
    return el("li", { class: "hit", "data-id": hit.id },
      el("div", { class: "hit-head" }, score(hit.score), el("span", { text: `row ${hit.id}` })),
      el("p", { class: "passage", text: hit.content }),
      metadata(hit.metadata));
  }

  function documentHit(hit) {
    const others = hit.passages.slice(1).map((p) =>
      `passage ${p.position + 1} (${p.score.toFixed(3)}, characters ${p.char_start}–${p.char_end})`);
    return el("li", { class: "hit", "data-source": hit.source, "data-key": hit.key },
      el("div", { class: "hit-head" },
        score(hit.score),
        el("span", { text: `${hit.source} / key ${hit.key}` }),
        el("span", { text: `passage ${hit.position + 1}, characters ${hit.char_start}–${hit.char_end}` })),
      el("p", { class: "passage" }, el("mark", { "data-start": hit.char_start, "data-end": hit.char_end, text: hit.content })),
      metadata(hit.metadata),
      others.length ? el("p", { class: "note", text: `Also: ${others.join("; ")}` }) : null);
  }

  async function addContext(results) {
    const passages = results.map((r) => ({ source: r.source, key: r.key, char_start: r.char_start, char_end: r.char_end }));
    let data;
    try {
      data = await call("console/api/context", { passages });
    } catch (error) {
      if (error instanceof Unauthorized) return unauthorized();
      $("search-message").append(` The text around the passages cannot be shown: ${error.message}`);
      return;
    }
    const items = $("results").children;
    data.contexts.forEach((context, i) => {
      if (!context || !items[i]) return;
      const hit = results[i];
      const mark = el("mark", { "data-start": hit.char_start, "data-end": hit.char_end, text: context.passage });
      items[i].querySelector(".passage").replaceChildren(
        context.from_start ? "" : "…",
        el("span", { class: "context", text: context.before }),
        mark,
        el("span", { class: "context", text: context.after }),
        context.to_end ? "" : "…");
      if (context.passage !== hit.content) {
        items[i].append(el("p", { class: "note bad", text: "The document has changed since this passage was indexed." }));
      }
    });
  }

  // -- start -----------------------------------------------------------------------------
  setInterval(() => {
    if (!connected || document.hidden) return;
    ticks += 1;
    refresh(false);
  }, TICK_MS);
  document.addEventListener("visibilitychange", () => {
    if (!document.hidden && connected) refresh(false);
  });
  refresh(true);
})();
