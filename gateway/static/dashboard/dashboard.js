// LLM gateway live dashboard. Reads /admin/stats/stream (one event per second) and renders it.
// No build step and no inline code (the page's CSP allows scripts from this origin only).
// Every figure goes into the DOM with textContent; nothing from the feed is parsed as HTML.
(() => {
  "use strict";

  const WINDOW_S = 900;
  const CHART_HEIGHT = 220;
  const MIN_SPAN_S = 30;
  const state = { rows: [], summary: null, paused: false, charts: {}, source: null };

  // ---- formatting --------------------------------------------------------------------------
  const DASH = "–";
  const isNum = (v) => typeof v === "number" && isFinite(v);
  const fmtInt = (v) => (isNum(v) ? Math.round(v).toLocaleString("en-US") : DASH);
  const fmtRate = (v) => (isNum(v) ? (v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)) : DASH);
  const fmtPct = (v) => (isNum(v) ? (v * 100).toFixed(1) + "%" : DASH);
  const fmtUsd = (v) => (isNum(v) ? "$" + (v >= 100 ? v.toFixed(2) : v >= 1 ? v.toFixed(3) : v.toFixed(4)) : DASH);
  function fmtMs(v) {
    if (!isNum(v)) return DASH;
    if (v < 10) return v.toFixed(1) + " ms";
    if (v < 1000) return Math.round(v) + " ms";
    return (v / 1000).toFixed(v < 10000 ? 2 : 1) + " s";
  }
  function fmtFor(seconds) {
    if (!isNum(seconds)) return DASH;
    if (seconds < 60) return Math.round(seconds) + " s";
    if (seconds < 3600) return Math.floor(seconds / 60) + " min " + Math.round(seconds % 60) + " s";
    return Math.floor(seconds / 3600) + " h " + Math.round((seconds % 3600) / 60) + " min";
  }
  const fmtTime = (t) => new Date(t * 1000).toLocaleTimeString([], { hour12: false });

  function setStat(name, text) {
    for (const el of document.querySelectorAll('[data-stat="' + name + '"]')) {
      if (el.textContent !== text) el.textContent = text;
    }
  }

  function setConn(kind, text) {
    const el = document.getElementById("conn");
    el.dataset.state = kind;
    el.textContent = text;
  }

  // ---- the feed -----------------------------------------------------------------------------
  function connect() {
    const source = new EventSource("/admin/stats/stream");
    state.source = source;
    source.onmessage = (msg) => {
      let event;
      try { event = JSON.parse(msg.data); } catch (e) { return; }
      if (event.full) state.rows = event.rows;
      else state.rows.push(...event.rows);
      if (state.rows.length > WINDOW_S) state.rows.splice(0, state.rows.length - WINDOW_S);
      state.summary = event.summary;
      if (!state.paused) {
        render();
        setConn("live", "Live");
      }
    };
    source.onerror = () => {
      if (source.readyState === EventSource.CLOSED) {
        setConn("lost", "Disconnected: reload the page (sign in again if asked)");
      } else {
        setConn("connecting", "Reconnecting…");
      }
    };
  }

  // ---- rendering ----------------------------------------------------------------------------
  function render() {
    const s = state.summary;
    if (!s) return;
    renderScope(s);
    renderTiles(s);
    renderModels(s.models);
    renderTenants(s.tenants);
    renderMcpTools(s.mcp_tools);
    renderCache(s);
    renderResilience(s.resilience);
    renderBreakers(s.breakers);
    renderRateLimit(s.rate_limit);
    renderRecent(s.recent);
    renderCharts();
  }

  function renderScope(s) {
    setStat("scope", s.scope || "worker");
    const banner = document.getElementById("scope-banner");
    const text = s.shared && s.shared.banner;
    banner.hidden = !text;
    if (text && banner.textContent !== text) banner.textContent = text;
    fillTable("replicas", s.replicas || [], (r) => [
      [r.replica + (r.self ? " (this)" : ""), "text"], [fmtInt(r.requests)], [fmtInt(r.errors)],
      [fmtInt(r.inflight)], [r.age_s + " s ago"]]);
  }

  function renderTiles(s) {
    const r = s.requests;
    setStat("requests-total", fmtInt(r.total));
    setStat("requests-per-s", fmtRate(r.per_s));
    setStat("success-rate", fmtPct(r.success_rate));
    setStat("error-rate", fmtPct(r.error_rate));
    setStat("client-errors", fmtInt(r.client_errors));
    setStat("latency-p50", fmtMs(s.latency_ms.p50));
    setStat("latency-p95", fmtMs(s.latency_ms.p95));
    setStat("ttft-p50", fmtMs(s.ttft_ms.p50));
    setStat("ttft-p95", fmtMs(s.ttft_ms.p95));
    setStat("inflight", fmtInt(s.inflight));
    const t = s.tokens;
    setStat("tokens-per-s", fmtRate(t.per_s.prompt + t.per_s.completion));
    setStat("tokens-total", fmtInt(t.prompt + t.completion));
    setStat("cost", s.cost_usd === null ? "n/a" : fmtUsd(s.cost_usd));
    setStat("cache-hit-rate", fmtPct(s.cache.hit_rate));
    setStat("cache-hits", fmtInt(s.cache.hits));
    setStat("cache-lookups", fmtInt(s.cache.lookups));
    setStat("tokens-saved", fmtInt(s.cache.tokens_saved + s.compression.tokens_saved));
    setStat("retries", fmtInt(s.resilience.retried_requests));
    setStat("fallbacks-tile", fmtInt(s.resilience.fallbacks));
    setStat("timeouts-tile", fmtInt(s.resilience.timeouts));
  }

  function cell(text, cls) {
    const td = document.createElement("td");
    td.textContent = text;
    if (cls) td.className = cls;
    return td;
  }

  function fillTable(id, items, columns, makeRow) {
    const body = document.querySelector("#" + id + " tbody");
    const rows = items.map((item) => {
      const tr = document.createElement("tr");
      if (makeRow) makeRow(tr, item);
      for (const [value, cls] of columns(item)) tr.appendChild(cell(value, cls));
      return tr;
    });
    if (!rows.length) {
      const tr = document.createElement("tr");
      const empty = { breakers: "n/a", replicas: "This worker only", "mcp-tools": "No tool calls yet" }[id]
        || "No requests yet";
      const td = cell(empty, "empty");
      td.colSpan = document.querySelectorAll("#" + id + " thead th").length;
      tr.appendChild(td);
      rows.push(tr);
    }
    body.replaceChildren(...rows);
  }

  function renderModels(models) {
    fillTable("models", models, (m) => [
      [m.model, "text"], [fmtInt(m.requests)], [fmtInt(m.errors)],
      [fmtMs(m.ttft_ms.p50)], [fmtMs(m.ttft_ms.p95)], [fmtMs(m.itl_ms.p50)], [fmtMs(m.itl_ms.p95)],
      [fmtMs(m.latency_ms.p95)], [fmtInt(m.prompt_tokens)], [fmtInt(m.completion_tokens)],
      [fmtInt(m.cached_tokens)], [state.summary.cost_usd === null ? "n/a" : fmtUsd(m.cost_usd)],
    ], (tr, m) => { tr.dataset.model = m.model; });
  }

  function renderTenants(tenants) {
    fillTable("tenants", tenants, (t) => [
      [t.tenant, "text"], [fmtInt(t.requests)], [fmtInt(t.errors)], [fmtInt(t.prompt_tokens)],
      [fmtInt(t.completion_tokens)], [fmtInt(t.cached_tokens)],
      [state.summary.cost_usd === null ? "n/a" : fmtUsd(t.cost_usd)],
    ], (tr, t) => { tr.dataset.tenant = t.tenant; });
  }

  function renderMcpTools(tools) {
    // null: no MCP server configured (older gateways send no field at all: the same)
    const none = tools === null || tools === undefined;
    document.querySelector('[data-stat="mcp-na"]').hidden = !none;
    document.getElementById("mcp-region").hidden = none;
    fillTable("mcp-tools", tools || [], (t) => [
      [t.server, "text"], [t.tool, "text"], [fmtInt(t.calls)], [fmtInt(t.errors)],
      [fmtMs(t.latency_ms.p50)], [fmtMs(t.latency_ms.p95)],
    ], (tr, t) => { tr.dataset.tool = t.server + "/" + t.tool; });
  }

  function renderCache(s) {
    const c = s.cache;
    const rate = (kind) => (c.lookups ? fmtPct(c.rate_by_kind[kind]) : "n/a");
    setStat("cache-rate-hit", rate("hit"));
    setStat("cache-rate-semantic-hit", rate("semantic-hit"));
    setStat("cache-rate-coalesced", rate("coalesced"));
    setStat("cache-misses", fmtInt(c.by_result.miss || 0));
    setStat("cache-tokens-saved", fmtInt(c.tokens_saved));
    setStat("compression-requests", fmtInt(s.compression.requests));
    setStat("compression-tokens-saved", fmtInt(s.compression.tokens_saved));
  }

  function renderResilience(r) {
    setStat("retried", fmtInt(r.retried_requests));
    setStat("extra-attempts", fmtInt(r.extra_attempts));
    setStat("fallbacks", fmtInt(r.fallbacks));
    setStat("hedged", fmtInt(r.hedged));
    setStat("timeouts", fmtInt(r.timeouts));
  }

  function renderBreakers(breakers) {
    const na = document.querySelector('[data-stat="breakers-na"]');
    na.hidden = breakers !== null;
    document.getElementById("breakers-region").hidden = breakers === null;
    fillTable("breakers", breakers || [], (b) => [[b.upstream, "text"], [""], [fmtFor(b.for_s)]], (tr, b) => {
      tr.dataset.upstream = b.upstream;
      tr.dataset.state = b.state;
    });
    // The state cell carries a badge: colour and text, never colour alone.
    for (const tr of document.querySelectorAll("#breakers tbody tr[data-state]")) {
      const badge = document.createElement("span");
      badge.className = "badge " + tr.dataset.state;
      badge.textContent = tr.dataset.state.replace("_", "-");
      tr.children[1].replaceChildren(badge);
    }
  }

  function renderRateLimit(r) {
    setStat("queue-depth", r.queue_depth === null ? "n/a" : fmtInt(r.queue_depth));
    const items = [];
    for (const [upstream, depth] of Object.entries(r.queues || {})) {
      const dt = document.createElement("dt");
      dt.textContent = "queue " + upstream;
      const dd = document.createElement("dd");
      dd.textContent = fmtInt(depth);
      dd.dataset.queue = upstream;
      items.push(dt, dd);
    }
    document.getElementById("queues").replaceChildren(...items);
    setStat("waited", fmtInt(r.waited_requests));
    setStat("wait-p50", fmtMs(r.wait_p50_ms));
    setStat("wait-p95", fmtMs(r.wait_p95_ms));
    setStat("wait-total", isNum(r.wait_total_s) ? fmtMs(r.wait_total_s * 1000) : DASH);
  }

  function statusClass(row) {
    if (row.status >= 500 || row.status === 0 || row.error) return "status-error";
    return row.status >= 400 ? "status-client" : "status-ok";
  }

  function renderRecent(recent) {
    fillTable("recent", recent, (r) => [
      [fmtTime(r.time), "text"], [r.tenant, "text"], [r.model, "text"], [r.upstream, "text"],
      [String(r.status) + (r.error ? " " + r.error : ""), statusClass(r)], [fmtMs(r.ttft_ms)],
      [fmtMs(r.duration_ms)],
      [r.prompt_tokens === null ? DASH : fmtInt(r.prompt_tokens) + " → " + fmtInt(r.completion_tokens)],
      [r.cache, "text"], [fmtInt(r.attempts)],
    ], (tr, r) => { tr.dataset.status = String(r.status); });
  }

  // ---- charts (uPlot) -----------------------------------------------------------------------
  const cssVar = (name) => getComputedStyle(document.documentElement).getPropertyValue(name).trim();
  const color = (i) => cssVar("--c" + ((i % 6) + 1));

  function modelsIn(field) {
    const names = new Set();
    for (const row of state.rows) if (row[field]) for (const name of Object.keys(row[field])) names.add(name);
    return [...names].sort();
  }

  function chartSpecs() {
    const rows = state.rows;
    const xs = rows.map((r) => r.t);
    const col = (f) => rows.map(f);
    const ttftModels = modelsIn("ttft");
    const itlModels = modelsIn("itl");
    const ttftSeries = [];
    const ttftData = [];
    ttftModels.forEach((m, i) => {
      ttftSeries.push({ label: m + " p50", stroke: color(i), width: 2, spanGaps: true });
      ttftSeries.push({ label: m + " p95", stroke: color(i), width: 1.5, dash: [6, 4], spanGaps: true });
      ttftData.push(col((r) => (r.ttft && r.ttft[m] ? r.ttft[m][0] : null)));
      ttftData.push(col((r) => (r.ttft && r.ttft[m] ? r.ttft[m][1] : null)));
    });
    return {
      "chart-requests": {
        series: [{ label: "requests/s", stroke: color(0), width: 2, fill: color(0) + "22" },
          { label: "errors/s", stroke: cssVar("--bad"), width: 2 }],
        data: [xs, col((r) => r.requests || 0), col((r) => r.errors || 0)], fmt: fmtRate,
      },
      "chart-ttft": { series: ttftSeries, data: [xs, ...ttftData], fmt: fmtMs },
      "chart-itl": {
        series: itlModels.map((m, i) => ({ label: m, stroke: color(i), width: 2, spanGaps: true })),
        data: [xs, ...itlModels.map((m) => col((r) => (r.itl && isNum(r.itl[m]) ? r.itl[m] : null)))], fmt: fmtMs,
      },
      "chart-tokens": {
        series: [{ label: "prompt", stroke: color(0), width: 2 }, { label: "completion", stroke: color(1), width: 2 },
          { label: "cached", stroke: color(2), width: 2 }],
        data: [xs, col((r) => r.prompt || 0), col((r) => r.completion || 0), col((r) => r.cached || 0)], fmt: fmtRate,
      },
    };
  }

  // The x axis spans the data (the gateway's lifetime, up to 15 min), at least MIN_SPAN_S wide.
  function xRange(u, min, max) {
    if (min === null || max === null) return [min, max];
    return [Math.min(min, max - MIN_SPAN_S), max];
  }

  function makeChart(el, spec) {
    const muted = cssVar("--muted");
    const grid = cssVar("--grid");
    const axis = { stroke: muted, grid: { stroke: grid, width: 1 }, ticks: { stroke: grid, width: 1 } };
    const opts = {
      width: Math.max(200, el.clientWidth), height: CHART_HEIGHT,
      scales: { x: { time: true, range: xRange } },
      series: [{}, ...spec.series.map((s) => ({ ...s, value: (u, v) => spec.fmt(v) }))],
      axes: [axis, { ...axis, size: 64, values: (u, vals) => vals.map((v) => spec.fmt(v)) }],
      cursor: { drag: { x: false, y: false } },
      legend: { live: true },
    };
    return new uPlot(opts, spec.data, el);
  }

  function renderCharts() {
    if (typeof uPlot === "undefined") return;
    const specs = chartSpecs();
    for (const [id, spec] of Object.entries(specs)) {
      const el = document.getElementById(id);
      const key = spec.series.map((s) => s.label).join("|");
      let entry = state.charts[id];
      if (entry && entry.key !== key) {
        entry.chart.destroy();
        entry = null;
      }
      if (!entry) {
        el.replaceChildren();
        entry = state.charts[id] = { key, chart: makeChart(el, spec) };
      } else {
        entry.chart.setData(spec.data);
      }
    }
  }

  function resetCharts() {
    for (const entry of Object.values(state.charts)) entry.chart.destroy();
    state.charts = {};
    renderCharts();
  }

  function watchSize() {
    if (typeof ResizeObserver === "undefined") return;
    const observer = new ResizeObserver((entries) => {
      for (const e of entries) {
        const entry = state.charts[e.target.id];
        if (entry) entry.chart.setSize({ width: Math.max(200, e.target.clientWidth), height: CHART_HEIGHT });
      }
    });
    for (const el of document.querySelectorAll(".chart")) observer.observe(el);
  }

  // ---- controls -----------------------------------------------------------------------------
  function setupPause() {
    const button = document.getElementById("pause");
    button.addEventListener("click", () => {
      state.paused = !state.paused;
      button.setAttribute("aria-pressed", String(state.paused));
      button.textContent = state.paused ? "Resume" : "Pause";
      if (state.paused) setConn("paused", "Paused");
      else { render(); setConn("live", "Live"); }
    });
  }

  function start() {
    setupPause();
    watchSize();
    const dark = window.matchMedia("(prefers-color-scheme: dark)");
    if (dark.addEventListener) dark.addEventListener("change", resetCharts);
    connect();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
