/* Lamina console: plain JavaScript over the serving API (no build step, no framework).
 * Pages (hash routes): #/ views, #/view/NAME?key=&from=&to=&agg=&q=, #/streams,
 * #/deadletters, #/batch. The view page's plotted data is exposed as window.laminaChart
 * (the browser tests compare it with the API's answer). */
"use strict";

const TOKEN_KEY = "lamina.token";
const main = document.getElementById("main");

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else node.setAttribute(k, v === true ? "" : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined) continue;
    node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return node;
}

class ApiError extends Error {
  constructor(status, message, hint) { super(message); this.status = status; this.hint = hint; }
}

/* GET an API path; the API's {error, hint} answers are thrown as ApiError. */
async function api(path, params) {
  const qs = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === null || v === undefined || v === "") continue;
    for (const x of Array.isArray(v) ? v : [v]) qs.append(k, x);
  }
  const headers = {};
  const token = localStorage.getItem(TOKEN_KEY);
  if (token) headers.Authorization = "Bearer " + token;
  const url = path + (qs.toString() ? "?" + qs : "");
  let resp;
  try {
    resp = await fetch(url, { headers });
  } catch (e) {
    throw new ApiError(0, "the API did not answer: " + e.message, "is `lamina serve` running?");
  }
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (!resp.ok) {
    const msg = body && body.error ? body.error : `HTTP ${resp.status} from ${path}`;
    const hint = body && body.hint ? body.hint
      : resp.status === 401 ? "enter the API token (serving.read_token) at the top right" : "";
    throw new ApiError(resp.status, msg, hint);
  }
  return body;
}

function errorBox(err) {
  return el("div", { class: "error", id: "error" }, err.message,
    err.hint ? el("span", { class: "hint" }, err.hint) : null);
}

function fmtNum(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v !== "number") return String(v);
  return Number.isInteger(v) ? v.toLocaleString("en-US") : v.toLocaleString("en-US", { maximumFractionDigits: 3 });
}

function fmtAge(s) {
  if (s === null || s === undefined) return "–";
  s = Math.max(0, Math.round(s));
  const d = Math.floor(s / 86400), h = Math.floor((s % 86400) / 3600), m = Math.floor((s % 3600) / 60);
  if (d) return `${d}d ${h}h`;
  if (h) return `${h}h ${m}m`;
  if (m) return `${m}m ${s % 60}s`;
  return `${s}s`;
}

function fmtTime(epochS) {
  if (epochS === null || epochS === undefined) return "–";
  return new Date(epochS * 1000).toISOString().replace(".000Z", "Z");
}

function table(headers, rows, attrs) {
  return el("table", attrs || {},
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", h.num ? { class: "num" } : {}, h.label || h)))),
    el("tbody", {}, rows));
}

/* ---- pages ---- */

async function viewsPage() {
  const views = await api("/views");
  let streams = {};
  try {
    for (const s of await api("/streams")) streams[s.source] = s;
  } catch (e) { streams = null; } // the speed layer's status is optional here
  const described = await Promise.all(views.map((v) => api("/views/" + encodeURIComponent(v.view))
    .catch((e) => ({ view: v.view, failed: e }))));
  const rows = described.map((d, i) => {
    const v = views[i];
    if (d.failed) return el("tr", {}, el("td", {}, v.view), el("td", { colspan: 8 }, errorBox(d.failed)));
    const pub = d.published;
    const badge = !pub ? el("span", { class: "badge none", id: "stale-" + v.view }, "never published")
      : el("span", { class: "badge " + (pub.stale ? "stale" : "fresh"), id: "stale-" + v.view },
        pub.stale ? "stale" : "fresh");
    const aggs = Object.entries(d.aggregations).map(([n, a]) => `${n} = ${a.fn}${a.field ? "(" + a.field + ")" : ""}`);
    let pending = "–";
    const st = streams && streams[d.source];
    if (pub && st && st.complete_before_epoch !== null && st.complete_before_epoch !== undefined) {
      pending = Math.max(0, Math.ceil((st.complete_before_epoch - pub.cutoff) / st.epoch_seconds));
    }
    return el("tr", {},
      el("td", {}, el("a", { href: "#/view/" + encodeURIComponent(v.view) }, v.view)),
      el("td", {}, `${d.source} (topic ${d.topic})`, el("br"),
        el("span", { class: "muted" }, `keys ${d.keys.join(", ")} · bucket ${d.bucket}`),
        d.filter.length ? el("div", { class: "muted" }, "filter: " + d.filter.map((f) => `${f.field} ${f.op} ${JSON.stringify(f.value)}`).join(" and ")) : null),
      el("td", {}, aggs.map((a) => el("div", {}, el("code", {}, a)))),
      el("td", { class: "num" }, pub ? pub.version : "–"),
      el("td", {}, pub ? pub.cutoff_iso : "–"),
      el("td", { class: "num" }, pub ? fmtAge(pub.cutoff_age_s) : "–"),
      el("td", {}, badge, d.not_ready ? el("div", { class: "error" }, d.not_ready.error) : null),
      el("td", {}, d.realtime ? d.realtime.state : "–"),
      el("td", { class: "num", id: "pending-" + v.view }, pending));
  });
  return [el("h1", {}, "Views"),
    table(["view", "source and keys", "aggregations", { label: "published version", num: true }, "cutoff",
      { label: "cutoff age", num: true }, "staleness", "real-time table", { label: "real-time epochs pending", num: true }],
    rows, { id: "views" }),
    el("p", { class: "muted" }, "Real-time epochs pending: ingest epochs archived after the published cutoff, answered by the speed layer until the next batch. ",
      streams === null ? "(stream status unavailable)" : "")];
}

function chartData(answer, agg) {
  const buckets = answer.results[0].buckets;
  return buckets.map((b) => ({ bucket_start: b.bucket_start, value: b.values[agg], from_batch: b.from_batch,
    realtime_epochs: b.realtime_epochs }));
}

function drawChart(host, points, agg) {
  const xs = points.map((p) => p.bucket_start);
  const batch = points.map((p) => (p.from_batch ? p.value : null));
  const rt = points.map((p) => (p.from_batch ? null : p.value));
  const width = Math.max(480, Math.min(1200, host.clientWidth - 20 || 900));
  window.laminaChart.series = { x: xs, batch, realtime: rt };
  return new uPlot({
    width, height: 320,
    series: [{},
      { label: agg + " (batch)", stroke: "#2f6db5", fill: "rgba(47,109,181,0.08)", points: { show: true, size: 5 } },
      { label: agg + " (real time)", stroke: "#e08a1e", fill: "rgba(224,138,30,0.10)", points: { show: true, size: 5 } }],
    axes: [{}, { size: 80 }],
  }, [xs, batch, rt], host);
}

async function viewPage(name, params) {
  const d = await api("/views/" + encodeURIComponent(name));
  const aggNames = Object.keys(d.aggregations);
  const agg = params.get("agg") && d.aggregations[params.get("agg")] ? params.get("agg") : aggNames[0];
  const isQuantile = d.aggregations[agg].fn === "quantiles";
  const q = params.get("q") || "0.5";
  const from = params.get("from") || "", to = params.get("to") || "";
  const granularity = params.get("granularity") || "";
  let key = params.get("key");
  const out = [el("h1", {}, "View ", el("code", {}, name))];
  const pub = d.published;
  out.push(el("p", { class: "muted" },
    `${d.source} · keys ${d.keys.join(", ")} · bucket ${d.bucket} · `,
    pub ? `published version ${pub.version}, cutoff ${pub.cutoff_iso} (${fmtAge(pub.cutoff_age_s)} ago) ` : "no published version ",
    pub ? el("span", { class: "badge " + (pub.stale ? "stale" : "fresh") }, pub.stale ? "stale" : "fresh") : null));
  if (d.not_ready) out.push(errorBox({ message: d.not_ready.error, hint: d.not_ready.hint }));

  let keyList = [];
  let keysError = null;
  try {
    keyList = (await api(`/views/${encodeURIComponent(name)}/keys`, { from, to, limit: 500 })).keys;
  } catch (e) { keysError = e; }
  if (!key && keyList.length) key = keyList[0];

  const datalist = el("datalist", { id: "keys" }, keyList.map((k) => el("option", { value: k })));
  const qOut = el("output", { id: "q-value" }, q);
  const form = el("form", { class: "controls", id: "controls" },
    el("label", {}, "key", el("input", { type: "text", id: "key", list: "keys", value: key || "" }), datalist),
    el("label", {}, "aggregation", el("select", { id: "agg" },
      aggNames.map((a) => el("option", { value: a, selected: a === agg }, `${a} (${d.aggregations[a].fn})`)))),
    el("label", {}, "from (ISO-8601 or epoch s)", el("input", { type: "text", id: "from", value: from, placeholder: "default" })),
    el("label", {}, "to", el("input", { type: "text", id: "to", value: to, placeholder: "default" })),
    el("label", {}, "granularity", el("input", { type: "text", id: "granularity", value: granularity, placeholder: d.bucket, size: 8 })),
    isQuantile ? el("label", {}, "quantile ", qOut,
      el("input", { type: "range", id: "q", min: "0", max: "1", step: "0.01", value: q,
        oninput: (e) => { qOut.textContent = e.target.value; } })) : null,
    el("button", { type: "submit", id: "show" }, "Show"));
  form.addEventListener("submit", (e) => {
    e.preventDefault();
    const p = new URLSearchParams();
    p.set("key", document.getElementById("key").value);
    p.set("agg", document.getElementById("agg").value);
    for (const f of ["from", "to", "granularity"]) if (document.getElementById(f).value) p.set(f, document.getElementById(f).value);
    const qi = document.getElementById("q");
    if (qi) p.set("q", qi.value);
    location.hash = `#/view/${encodeURIComponent(name)}?${p}`;
  });
  form.querySelector("#agg").addEventListener("change", () => form.requestSubmit());
  const qInput = form.querySelector("#q");
  if (qInput) qInput.addEventListener("change", () => form.requestSubmit());
  out.push(form);
  if (keysError) out.push(errorBox(keysError));

  const chartHost = el("div", { id: "chart" });
  const topHost = el("div", { id: "top" });
  out.push(el("div", { class: "legend-note" }, "merged value per bucket:",
    el("span", { class: "swatch", style: "background:#2f6db5" }), "buckets of the batch (plus any speed-layer rows ingested after its cutoff)",
    el("span", { class: "swatch", style: "background:#e08a1e" }), "buckets only the speed layer has (events ingested after the cutoff)"));
  out.push(chartHost, el("h2", {}, `Top keys by ${agg} in the range`), topHost);

  // Render the page, then fill chart and table (they need the host's width).
  window.laminaChart = null;
  setTimeout(async () => {
    if (!key) {
      chartHost.append(el("p", { class: "muted" }, "no key has data in this range"));
    } else {
      try {
        const answer = await api(`/views/${encodeURIComponent(name)}/query`, { key, from, to, granularity, q: isQuantile ? q : null });
        const points = chartData(answer, agg);
        const cutoff = answer.provenance ? answer.provenance.cutoff : null;
        window.laminaChart = { view: name, key, agg, q: answer.q, from: answer.from, to: answer.to,
          granularity: answer.granularity, cutoff, points };
        chartHost.append(el("div", { class: "muted" }, `${key}: ${points.length} buckets from ${answer.from} to ${answer.to} (${answer.granularity}); batch cutoff (ingest time) ${cutoff === null ? "none" : fmtTime(cutoff)}, ${points.filter((p) => p.realtime_epochs.length).length} buckets with speed-layer rows`));
        drawChart(chartHost, points, agg);
      } catch (e) {
        window.laminaChart = { view: name, key, agg, error: e.message, points: [] };
        chartHost.append(errorBox(e));
      }
    }
    try {
      const top = await api(`/views/${encodeURIComponent(name)}/top`, { by: agg, from, to, q: isQuantile ? q : null, limit: 10 });
      topHost.append(table([{ label: "rank", num: true }, "key", { label: agg, num: true }],
        top.results.map((r) => el("tr", {}, el("td", { class: "num" }, r.rank),
          el("td", {}, el("a", { href: `#/view/${encodeURIComponent(name)}?${new URLSearchParams({ key: r.key, agg, from, to, granularity, q })}` }, r.key)),
          el("td", { class: "num" }, fmtNum(r.value)))), { id: "top-table" }),
        el("p", { class: "muted" }, `${top.keys_with_data} keys with data from ${top.from} to ${top.to}`));
    } catch (e) {
      topHost.append(errorBox(e));
    }
    document.body.dataset.ready = "1";
  }, 0);
  return out;
}

async function streamsPage() {
  const found = await api("/streams");
  const rows = [];
  for (const s of found) {
    const caught = s.caught_up === null ? "?" : s.caught_up ? "yes" : "no";
    rows.push(el("tr", {},
      el("td", {}, el("b", {}, s.source)),
      el("td", {}, s.run_by || el("span", { class: "muted" }, "not running")),
      el("td", { class: "num" }, fmtNum(s.lag)),
      el("td", { class: "num" }, fmtNum(s.events_behind)),
      el("td", {}, el("span", { class: "badge " + (s.caught_up ? "fresh" : s.caught_up === null ? "none" : "stale") }, caught)),
      el("td", {}, s.complete_before_epoch === null ? "–" : fmtTime(s.complete_before_epoch))));
    for (const q of s.queries) {
      rows.push(el("tr", { class: "muted" },
        el("td", {}, "  ↳ " + q.query),
        el("td", {}, q.batch_id === null || q.batch_id === undefined ? "no micro-batch yet" : `micro-batch ${q.batch_id}`),
        el("td", { class: "num" }, fmtNum(q.lag)),
        el("td", { class: "num" }, `${fmtNum(q.input_rows_per_s)} in/s · ${fmtNum(q.processed_rows_per_s)} done/s`),
        el("td", { class: "num" }, q.batch_duration_ms === null || q.batch_duration_ms === undefined ? "–" : `${fmtNum(q.batch_duration_ms)} ms`),
        el("td", {}, q.last_progress ? fmtTime(q.last_progress) : "–")));
    }
  }
  return [el("h1", {}, "Streams"),
    table(["source job / query", "run by / last micro-batch", { label: "lag (records)", num: true },
      { label: "events behind / rates", num: true }, "caught up / batch duration", "archived before / last progress"],
    rows, { id: "streams" }),
    el("p", { class: "muted" }, "As `lamina stream status` shows it: jobs submitted or run in the foreground.")];
}

async function deadlettersPage() {
  const found = await api("/deadletters", { limit: 10 });
  const out = [el("h1", {}, "Dead letters")];
  for (const s of found) {
    out.push(el("h2", {}, `${s.source} `, el("span", { class: "muted" }, `(topic ${s.topic}.deadletters)`)));
    if (s.error) { out.push(errorBox({ message: s.error })); continue; }
    out.push(el("p", {}, el("b", { class: "count", "data-source": s.source }, fmtNum(s.count)), " dead letters"));
    if (!s.count) continue;
    out.push(table(["kind of problem", { label: "count", num: true }, "examples (origin)"],
      s.kinds.map((k) => el("tr", {}, el("td", {}, k.kind), el("td", { class: "num" }, fmtNum(k.count)),
        el("td", {}, k.examples.map((x) => el("div", {}, x.reason, el("span", { class: "muted" }, ` (${x.topic}[${x.partition}]@${x.offset})`))))))));
    out.push(table(["latest reason", "origin", "raw"],
      s.latest.map((x) => el("tr", {}, el("td", {}, x.reason), el("td", {}, `${x.topic}[${x.partition}]@${x.offset}`),
        el("td", {}, el("code", {}, x.raw.length > 80 ? x.raw.slice(0, 80) + "…" : x.raw))))));
  }
  return out;
}

async function batchPage() {
  const found = await api("/batch/versions");
  const out = [el("h1", {}, "Batch versions")];
  for (const v of found) {
    out.push(el("h2", {}, el("a", { href: "#/view/" + encodeURIComponent(v.view) }, v.view),
      el("span", { class: "muted" }, v.published === null ? " · nothing published" : ` · version ${v.published} published`)));
    if (!v.versions.length) { out.push(el("p", { class: "muted" }, "no versions yet: lamina batch run --view " + v.view)); continue; }
    out.push(table([{ label: "version", num: true }, "state", "cutoff", { label: "rows", num: true }, "build",
      { label: "seconds", num: true }, "reconciliation"],
    v.versions.map((x) => {
      const r = x.reconciliation;
      const rec = !r ? el("span", { class: "muted" }, "no report")
        : el("span", {}, el("span", { class: "badge " + (!r.publishable ? "stale" : r.diverged === "none" ? "fresh" : "none") },
          r.diverged === "none" ? "agrees" : r.diverged + " diverged"),
        r.divergence === null || r.divergence === undefined ? "" : ` ${(100 * r.divergence).toFixed(2)} % of cells`,
        [...r.problems, ...r.warnings].map((p) => el("div", { class: "muted" }, p)));
      return el("tr", x.published ? { class: "published" } : {},
        el("td", { class: "num" }, x.version + (x.published ? " ★" : "")),
        el("td", {}, x.published ? el("b", {}, x.state) : x.state),
        el("td", {}, fmtTime(x.cutoff)), el("td", { class: "num" }, fmtNum(x.rows)), el("td", {}, x.build),
        el("td", { class: "num" }, x.seconds === null || x.seconds === undefined ? "–" : x.seconds.toFixed(1)),
        el("td", {}, rec));
    }), { class: "versions", "data-view": v.view }));
  }
  return out;
}

/* ---- routing ---- */

async function route() {
  const hash = location.hash.replace(/^#/, "") || "/";
  const [path, query] = hash.split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean);
  const page = parts[0] || "views";
  for (const a of document.querySelectorAll("nav a[data-page]")) {
    a.classList.toggle("active", a.dataset.page === (page === "view" ? "views" : page));
  }
  delete document.body.dataset.ready;
  main.replaceChildren(el("p", { class: "muted" }, "Loading…"));
  let content;
  try {
    if (page === "views") content = await viewsPage();
    else if (page === "view" && parts[1]) content = await viewPage(decodeURIComponent(parts[1]), params);
    else if (page === "streams") content = await streamsPage();
    else if (page === "deadletters") content = await deadlettersPage();
    else if (page === "batch") content = await batchPage();
    else content = [errorBox({ message: `no page ${hash}`, hint: "see the links above" })];
  } catch (e) {
    content = [errorBox(e)];
  }
  main.replaceChildren(...content);
  if (page !== "view") document.body.dataset.ready = "1";
}

document.getElementById("token").value = localStorage.getItem(TOKEN_KEY) || "";
document.getElementById("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const t = document.getElementById("token").value.trim();
  if (t) localStorage.setItem(TOKEN_KEY, t); else localStorage.removeItem(TOKEN_KEY);
  route();
});
window.addEventListener("hashchange", route);
route();
