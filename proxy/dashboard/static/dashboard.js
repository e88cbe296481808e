"use strict";
// nocp dashboard: polls v1/nocp/stats and draws it. No library; every text goes in through
// textContent (model and tool names are the clients' choice), charts are hand-drawn SVG.
(function () {
  const REFRESH_MS = 5000;
  const SVG = "http://www.w3.org/2000/svg";
  const params = new URLSearchParams(window.location.search);
  const key = params.get("key");
  const query = new URLSearchParams();
  for (const name of ["limit", "since"]) {
    if (params.get(name)) query.set(name, params.get(name));
  }
  const statsUrl = "v1/nocp/stats" + (query.toString() ? "?" + query.toString() : "");

  // --- formatting ---------------------------------------------------------------------------
  const intFmt = new Intl.NumberFormat("en-US", { maximumFractionDigits: 0 });
  const fmt = {
    int: (v) => (v === null || v === undefined ? "-" : intFmt.format(v)),
    pct: (v) => (v === null || v === undefined ? "-" : (v * 100).toFixed(1) + "%"),
    usd: (v) => (v === null || v === undefined ? "-" : "$" + v.toFixed(4)),
    ms: (v) => (v === null || v === undefined ? "-" : v.toFixed(1) + " ms"),
    rate: (v) => (v === null || v === undefined ? "-" : v.toFixed(2) + "/s"),
    num: (v) => (v === null || v === undefined ? "-" : String(Math.round(v * 1000) / 1000)),
    time: (iso) => (iso ? iso.replace("T", " ").slice(0, 19) : "-"),
    text: (v) => (v === null || v === undefined || v === "" ? "-" : String(v)),
  };
  const compact = (v) => {
    const a = Math.abs(v);
    if (a >= 1e9) return (v / 1e9).toFixed(1) + "G";
    if (a >= 1e6) return (v / 1e6).toFixed(1) + "M";
    if (a >= 1e3) return (v / 1e3).toFixed(1) + "k";
    if (a === 0 || a >= 1) return String(Math.round(v * 100) / 100);
    return String(Number(v.toPrecision(2)));
  };

  function el(tag, attrs, text) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(attrs || {})) {
      if (value !== null && value !== undefined) node.setAttribute(name, String(value));
    }
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function svg(tag, attrs, text) {
    const node = document.createElementNS(SVG, tag);
    for (const [name, value] of Object.entries(attrs || {})) node.setAttribute(name, String(value));
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- figures ------------------------------------------------------------------------------
  function kpi(id, label, value, format, detail) {
    const card = el("div", { class: "kpi", id: "kpi-" + id });
    card.appendChild(el("div", { class: "label" }, label));
    const shown = el("div", { class: "value", "data-value": value === null ? "" : value }, format(value));
    if (typeof value === "number" && value < 0) shown.classList.add("neg");
    card.appendChild(shown);
    if (detail) card.appendChild(el("div", { class: "detail" }, detail));
    return card;
  }

  function renderKpis(s) {
    const t = s.total;
    const box = document.getElementById("kpis");
    const measured = s.cohorts && s.cohorts.measured ? s.cohorts.measured : null;
    box.replaceChildren(
      kpi("requests", "Requests", t.requests, fmt.int, "in the window shown"),
      kpi("sessions", "Sessions", s.sessions, fmt.int),
      kpi("rate", "Requests / s", s.rate.requests_per_s, fmt.rate, "last " + s.rate.window_s + " s"),
      kpi("tokens_saved", "Tokens saved (estimate)", t.tokens_saved, fmt.int, "net of overhead"),
      kpi("saved_share", "Saved share (estimate)", t.saved_share, fmt.pct, "of the raw prompts"),
      kpi("cost_usd", "Cost", t.cost_usd, fmt.usd, "estimated from prices"),
      kpi("cost_savings_usd", "Cost saved (estimate)", t.cost_savings_usd, fmt.usd, "vs. raw prompts"),
      kpi("measured_saving", "Saving (measured)", measured ? measured.saving_share : null, fmt.pct,
        measured ? "holdout cohort" : "needs a holdout cohort"),
      kpi("cache_hit_share", "Cache hit share", t.cache_hit_share, fmt.pct, "cached / prompt tokens"),
      kpi("retrieval_rate", "Retrieval rate", t.retrieval_rate, fmt.pct, "requests with a retrieval round"),
      kpi("error_rate", "Error rate", t.error_rate, fmt.pct, "upstream and proxy errors"),
      kpi("latency_p50_ms", "Latency p50", t.latency_p50_ms, fmt.ms),
      kpi("latency_p95_ms", "Latency p95", t.latency_p95_ms, fmt.ms),
    );
  }

  // --- charts -------------------------------------------------------------------------------
  function bucketName(seconds) {
    if (seconds % 86400 === 0) return seconds / 86400 + " day" + (seconds === 86400 ? "" : "s");
    if (seconds % 3600 === 0) return seconds / 3600 + " h";
    if (seconds % 60 === 0) return seconds / 60 + " min";
    return seconds + " s";
  }

  function chart(id, buckets, bucketS, lines) {
    const box = document.getElementById(id);
    box.replaceChildren();
    const W = 720, H = 220, L = 56, R = 32, T = 22, B = 26;
    const values = buckets.flatMap((b) => lines.map((l) => b[l.key]).filter((v) => typeof v === "number"));
    if (!values.length) {
      box.appendChild(svg("text", { x: W / 2, y: H / 2, "text-anchor": "middle" }, "no data yet"));
      return;
    }
    const hi = Math.max(0, ...values), lo = Math.min(0, ...values);
    const span = hi - lo || 1;
    const n = buckets.length;
    const x = (i) => L + (n === 1 ? (W - L - R) / 2 : (i * (W - L - R)) / (n - 1));
    const y = (v) => T + ((hi - v) * (H - T - B)) / span;
    for (let k = 0; k <= 4; k++) {
      const v = lo + (span * k) / 4;
      box.appendChild(svg("line", { class: "grid", x1: L, x2: W - R, y1: y(v), y2: y(v) }));
      box.appendChild(svg("text", { x: L - 6, y: y(v) + 3, "text-anchor": "end" }, compact(v)));
    }
    const step = Math.max(1, Math.ceil(n / 8));
    buckets.forEach((b, i) => {
      if (i % step) return;
      const label = bucketS >= 86400 ? b.key.slice(5, 10) : b.key.slice(11, bucketS < 60 ? 19 : 16);
      box.appendChild(svg("text", { x: x(i), y: H - 8, "text-anchor": "middle" }, label));
    });
    let legendX = L;
    for (const line of lines) {
      const points = buckets
        .map((b, i) => (typeof b[line.key] === "number" ? x(i) + "," + y(b[line.key]) : null))
        .filter((p) => p !== null);
      const attrs = { fill: "none", stroke: line.color, "stroke-width": 2, points: points.join(" ") };
      if (line.dash) attrs["stroke-dasharray"] = "5 4";
      box.appendChild(svg("polyline", attrs));
      for (const p of points) {
        const [px, py] = p.split(",");
        box.appendChild(svg("circle", { cx: px, cy: py, r: 2.5, fill: line.color }));
      }
      box.appendChild(svg("rect", { x: legendX, y: 6, width: 10, height: 10, fill: line.color }));
      const text = svg("text", { class: "legend", x: legendX + 14, y: 15 }, line.label);
      box.appendChild(text);
      legendX += 22 + line.label.length * 6;
    }
  }

  function renderCharts(s) {
    const { buckets, bucket_s: bucketS } = s.series;
    document.getElementById("bucket-tokens").textContent = bucketName(bucketS);
    document.getElementById("bucket-cost").textContent = bucketName(bucketS);
    chart("chart-tokens", buckets, bucketS, [
      { key: "raw_input_tokens", label: "raw prompt tokens", color: "#7f8fa0" },
      { key: "sent_input_tokens", label: "sent", color: "#4aa3ff" },
      { key: "tokens_saved", label: "saved (estimate)", color: "#3ecf8e", dash: true },
    ]);
    chart("chart-cost", buckets, bucketS, [
      { key: "cost_usd", label: "cost $", color: "#f0b429" },
      { key: "cost_savings_usd", label: "saved $ (estimate)", color: "#3ecf8e", dash: true },
    ]);
  }

  // --- tables -------------------------------------------------------------------------------
  // columns: [header, field, format, text?]
  function table(id, columns, rows, empty) {
    const box = document.getElementById(id);
    const head = el("tr");
    for (const [header, , , isText] of columns) head.appendChild(el("th", { class: isText ? "text" : null }, header));
    const body = [head];
    if (!rows.length) {
      const tr = el("tr");
      tr.appendChild(el("td", { class: "empty", colspan: columns.length }, empty));
      body.push(tr);
    }
    for (const row of rows) {
      const tr = el("tr");
      for (const [, field, format, isText] of columns) {
        const value = typeof field === "function" ? field(row) : row[field];
        const td = el("td", { "data-field": typeof field === "string" ? field : null,
          "data-value": typeof value === "number" ? value : null }, format(value));
        if (isText) td.classList.add("text");
        if (typeof value === "number" && value < 0) td.classList.add("neg");
        tr.appendChild(td);
      }
      body.push(tr);
    }
    box.replaceChildren(...body);
  }

  function renderTools(s) {
    const cols = [
      ["tool", "tool", fmt.text, true],
      ["outputs", "outputs", fmt.int],
      ["tokens", "tokens", fmt.int],
      ["saved tokens", "saved_tokens", fmt.int],
      ["saved %", "saved_share", fmt.pct],
      ["retrievals", "retrievals", fmt.int],
    ];
    const none = "no tool outputs compressed yet";
    table("table-tools-tokens", cols, s.tools.by_tokens, none);
    table("table-tools-saving", cols, s.tools.by_saving, none);
  }

  function renderCohorts(s) {
    const panel = document.getElementById("panel-cohorts");
    panel.hidden = !s.cohorts;
    if (!s.cohorts) return;
    const m = s.cohorts.measured;
    const line = document.getElementById("measured");
    if (m) {
      const ci = m.ci_low !== undefined && m.ci_low !== null
        ? " (95% CI " + fmt.pct(m.ci_low) + " to " + fmt.pct(m.ci_high) + ")" : "";
      const verdict = m.conclusive === false ? " - sample too small to conclude" : "";
      line.textContent = "Measured saving: " + fmt.pct(m.saving_share) + ci + verdict + (m.note ? " - " + m.note : "");
    } else {
      line.textContent = "Measured saving: not enough data yet";
    }
    table("table-cohorts", [
      ["cohort", "key", fmt.text, true],
      ["sessions", "sessions", fmt.int],
      ["requests", "requests", fmt.int],
      ["billed tokens", "billed_tokens", fmt.int],
      ["cost", "cost_usd", fmt.usd],
      ["saved % (estimate)", "saved_share", fmt.pct],
      ["cache hit", "cache_hit_share", fmt.pct],
      ["retrieval rate", "retrieval_rate", fmt.pct],
      ["error rate", "error_rate", fmt.pct],
    ], s.cohorts.groups || [], "no cohort data");
  }

  function renderPolicy(s) {
    const panel = document.getElementById("panel-policy");
    const rows = s.policy && Array.isArray(s.policy.arms) ? s.policy.arms : null;
    panel.hidden = !rows;
    if (!rows) return;
    const names = Array.from(new Set(rows.flatMap((r) => Object.keys(r))));
    table("table-policy", names.map((n) => [n, n, (v) => (typeof v === "number" ? fmt.num(v) : fmt.text(v)),
      typeof rows[0][n] !== "number"]), rows, "no arms yet");
  }

  function renderAlerts(s) {
    table("table-alerts", [
      ["since", "timestamp", fmt.time, true],
      ["model", (a) => a.model || "(all)", fmt.text, true],
      ["kind", "kind", fmt.text, true],
      ["severity", "severity", fmt.text, true],
      ["previous", "previous", fmt.num],
      ["recent", "recent", fmt.num],
      ["message", "message", fmt.text, true],
    ], s.alerts, "no open alerts");
    for (const td of document.querySelectorAll("#table-alerts td[data-field=severity]")) {
      td.classList.add(td.textContent);
    }
  }

  function renderRecent(s) {
    table("table-recent", [
      ["time", "timestamp", fmt.time, true],
      ["model", "model", fmt.text, true],
      ["session", "session_id", fmt.text, true],
      ["raw", "raw_input_tokens", fmt.int],
      ["sent", "sent_input_tokens", fmt.int],
      ["saved", "net_saved_tokens", fmt.int],
      ["saved %", "saved_share", fmt.pct],
      ["billed", "billed_tokens", fmt.int],
      ["rounds", "retrieval_rounds", fmt.int],
      ["latency", "latency_ms", fmt.ms],
      ["outcome", (r) => (r.outcome === "ok" ? "ok" : r.outcome + " " + r.status), fmt.text, true],
    ], s.recent, "no requests yet");
  }

  function render(s) {
    renderKpis(s);
    renderCharts(s);
    renderCohorts(s);
    renderPolicy(s);
    renderTools(s);
    renderAlerts(s);
    renderRecent(s);
    const w = s.window;
    document.getElementById("window").textContent = w.records
      ? "last " + intFmt.format(w.records) + " requests, " + fmt.time(w.first) + " to " + fmt.time(w.last) + " UTC"
        + (w.truncated ? " (older ones not read)" : "")
      : "no requests in the log yet";
    document.getElementById("updated").textContent = "updated " + fmt.time(s.generated_at) + " UTC";
    document.body.dataset.generated = s.generated_at;
    document.body.dataset.state = "ready";
  }

  async function refresh() {
    const error = document.getElementById("error");
    try {
      const resp = await fetch(statsUrl, {
        cache: "no-store",
        headers: key ? { Authorization: "Bearer " + key } : {},
      });
      if (!resp.ok) {
        const hint = resp.status === 401 ? " (open /dashboard?key=ADMIN_KEY)" : "";
        throw new Error("stats endpoint answered " + resp.status + hint);
      }
      render(await resp.json());
      error.hidden = true;
    } catch (exc) {
      error.textContent = String(exc.message || exc);
      error.hidden = false;
      if (document.body.dataset.state === "loading") document.body.dataset.state = "error";
    }
    window.setTimeout(refresh, REFRESH_MS);
  }

  refresh();
})();
