// The status page: polls GET /status, shows rates and p99 over the last interval; looks up entities.
"use strict";
const REFRESH_MS = Number(new URLSearchParams(location.search).get("refresh_ms")) || 2000;
const $ = (sel) => document.querySelector(sel);
let previous = null;  // the last /status answer, for rates and interval quantiles

const tokenBox = $("#token");
tokenBox.value = sessionStorage.getItem("fs-token") || "";
tokenBox.addEventListener("change", () => sessionStorage.setItem("fs-token", tokenBox.value));

function headers() {
  return tokenBox.value ? { Authorization: "Bearer " + tokenBox.value } : {};
}

async function getJSON(path) {
  const resp = await fetch(path, { headers: headers() });
  const body = await resp.json().catch(() => ({}));
  if (!resp.ok) throw new Error(body.detail || resp.status + " " + resp.statusText);
  return body;
}

function bytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i ? n.toFixed(1) : n) + " " + units[i];
}

function number(n) { return n === null || n === undefined ? "–" : Number(n).toLocaleString("en"); }

function duration(s) {
  if (s === null || !isFinite(s)) return "–";
  if (s < 1e-3) return (s * 1e6).toFixed(0) + " µs";
  if (s < 1) return (s * 1e3).toFixed(2) + " ms";
  return s.toFixed(2) + " s";
}

function age(seconds) {
  if (seconds < 60) return seconds.toFixed(1) + " s";
  if (seconds < 3600) return (seconds / 60).toFixed(1) + " min";
  if (seconds < 86400) return (seconds / 3600).toFixed(1) + " h";
  return (seconds / 86400).toFixed(1) + " d";
}

// The 0.99 quantile of the requests counted between two cumulative bucket lists, interpolated
// inside its bucket as Prometheus's histogram_quantile does.
function p99(bounds, now, before) {
  const delta = now.map((c, i) => c - (before ? before[i] : 0));
  const total = delta[delta.length - 1];
  if (total <= 0) return null;
  const rank = 0.99 * total;
  for (let i = 0; i < delta.length; i++) {
    if (delta[i] >= rank) {
      if (i >= bounds.length) return bounds[bounds.length - 1];  // in +Inf: at least the last bound
      const lower = i ? bounds[i - 1] : 0, below = i ? delta[i - 1] : 0;
      return lower + (bounds[i] - lower) * (rank - below) / (delta[i] - below);
    }
  }
  return null;
}

function cell(row, text, cls) {
  const td = row.insertCell();
  td.textContent = text;
  if (cls) td.className = cls;
  return td;
}

function showShards(shards) {
  const body = $("#shards tbody");
  body.replaceChildren();
  for (const s of shards) {
    const row = body.insertRow();
    row.dataset.shard = s.shard;
    cell(row, s.shard);
    cell(row, s.state, (s.state === "ready" ? "ready" : "down") + " text");
    cell(row, number(s.entities));
    cell(row, number(s.values));
    cell(row, bytes(s.memory_bytes));
    cell(row, bytes(s.log_bytes));
  }
}

function showRoutes(status) {
  const body = $("#routes tbody");
  body.replaceChildren();
  const seconds = previous ? status.time - previous.time : null;
  const before = {};
  for (const r of previous ? previous.routes : []) before[r.route] = r;
  for (const r of status.routes) {
    const old = before[r.route];
    const row = body.insertRow();
    row.dataset.route = r.route;
    cell(row, r.route, "text");
    cell(row, seconds && old ? ((r.count - old.count) / seconds).toFixed(1) : "–", "rate");
    cell(row, duration(p99(status.bounds, r.buckets, old && old.buckets)), "p99");
    cell(row, number(r.count), "total");
  }
}

function showIngest(ingest, old, seconds) {
  const p = $("#ingest");
  if (!ingest) { p.textContent = "ingest: not configured"; return; }
  if (ingest.detail) { p.textContent = "ingest: " + ingest.detail; return; }
  const rate = old && !old.detail && seconds ? (ingest.events - old.events) / seconds : ingest.events_per_s;
  p.textContent = `ingest: ${Number(rate || 0).toFixed(1)} events/s, ${number(ingest.applied)} applied, ` +
    `${number(ingest.stale)} stale, ${number(ingest.rejected)} rejected, lag ${ingest.lag ?? "–"}`;
}

async function refresh() {
  try {
    const status = await getJSON("/status");
    showShards(status.shards);
    showRoutes(status);
    showIngest(status.ingest, previous && previous.ingest, previous && status.time - previous.time);
    previous = status;
    $("#updated").textContent = "updated " + new Date().toLocaleTimeString();
  } catch (err) {
    $("#updated").textContent = "cannot read /status: " + err.message;
  }
}

function segment(text) {
  const quoted = encodeURIComponent(text);
  return quoted === "." || quoted === ".." ? quoted.replace(/\./g, "%2E") : quoted;
}

$("#lookup").addEventListener("submit", async (event) => {
  event.preventDefault();
  const eid = $("#entity").value;
  const status = $("#lookup-status"), table = $("#features"), body = $("#features tbody");
  status.className = "";
  status.textContent = "looking up…";
  body.replaceChildren();
  table.hidden = true;
  try {
    const entity = await getJSON("/features/" + segment(eid));
    const names = Object.keys(entity.features);
    const feats = await Promise.all(names.map((n) => getJSON(`/features/${segment(eid)}/${segment(n)}`)));
    const now = Date.now();
    for (const f of feats) {
      const row = body.insertRow();
      row.dataset.name = f.name;
      cell(row, f.name, "text");
      cell(row, JSON.stringify(f.value), "value");
      cell(row, f.event_timestamp, "text");
      cell(row, age((now - Date.parse(f.event_timestamp)) / 1000), "age");
    }
    table.hidden = false;
    status.textContent = `${names.length} features of ${entity.entity_id}, last updated ${entity.last_updated}`;
  } catch (err) {
    status.className = "error";
    status.textContent = err.message;
  }
});

refresh();
setInterval(refresh, REFRESH_MS);
