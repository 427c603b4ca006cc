// Ingest: the collector's own figures from /metrics (Prometheus text), as rates between two
// reads a few seconds apart: points per second, batches by status, request latency, rollup
// lag and each export's lag.

import { el, fmtNumber, fmtSeconds } from "./util.js";
import { get } from "./api.js";

const REFRESH_MS = 5000;

/** Prometheus text as [{name, labels, value}]. */
export function parseMetrics(text) {
  const out = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const m = line.match(/^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{(.*)\})?\s+(\S+)/);
    if (!m) continue;
    const labels = {};
    for (const pair of (m[3] ?? "").matchAll(/([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g)) labels[pair[1]] = pair[2];
    out.push({ name: m[1], labels, value: Number(m[4]) });
  }
  return out;
}

const sum = (samples, name, test = () => true) => samples.filter((s) => s.name === name && test(s.labels)).reduce((a, s) => a + s.value, 0);

export function render(main, route, ctx) {
  const cards = el("div", { class: "cards", id: "ingest-cards" });
  const status = el("p", { class: "muted" }, "Reading /metrics…");
  main.append(el("h2", {}, "Ingest"), status, cards);
  let previous = null;
  let timer = null;
  let stopped = false;

  const card = (title, ...body) => el("div", { class: "card" }, el("h3", {}, title), ...body);
  const load = async () => {
    try {
      const text = await get("/metrics");
      const now = performance.now();
      const samples = parseMetrics(text);
      const p = "tributary_collector_";
      const figures = {
        stored: sum(samples, `${p}points_stored_total`),
        received: sum(samples, `${p}points_received_total`),
        quarantined: sum(samples, `${p}quarantined_total`),
        latencySum: sum(samples, `${p}request_seconds_sum`),
        latencyCount: sum(samples, `${p}request_seconds_count`),
      };
      const batches = {};
      for (const s of samples.filter((s) => s.name === `${p}batches_total`)) batches[s.labels.status ?? "?"] = s.value;
      const rate = (key) => (previous ? (figures[key] - previous.figures[key]) / ((now - previous.at) / 1000) : null);
      const latency = previous && figures.latencyCount > previous.figures.latencyCount
        ? (figures.latencySum - previous.figures.latencySum) / (figures.latencyCount - previous.figures.latencyCount)
        : null;
      const rollupLag = samples.find((s) => s.name === `${p}rollup_lag_seconds`)?.value;
      const exports = samples.filter((s) => s.name === `${p}export_lag_seconds`).map((s) => [s.labels.export, s.value,
        samples.find((x) => x.name === `${p}export_lag_points` && x.labels.export === s.labels.export)?.value]);
      cards.replaceChildren(
        card("Points stored per second", el("p", { class: "figure", id: "ingest-rate" }, previous ? fmtNumber(Math.round(rate("stored"))) : "…"),
          el("p", { class: "muted" }, `${fmtNumber(figures.stored)} stored, ${fmtNumber(figures.received)} received, ${fmtNumber(figures.quarantined)} quarantined since start`)),
        card("Batches by status", el("table", {}, el("tbody", {}, Object.entries(batches).map(([k, v]) => el("tr", {}, el("th", { scope: "row" }, k), el("td", { class: "num" }, fmtNumber(v))))))),
        card("Request latency", el("p", { class: "figure" }, latency === null ? "…" : fmtSeconds(latency)),
          el("p", { class: "muted" }, "Mean over the last interval, every route.")),
        card("Rollup lag", el("p", { class: "figure" }, fmtSeconds(rollupLag ?? null))),
        card("Exports", exports.length
          ? el("table", {}, el("tbody", {}, exports.map(([name, seconds, points]) => el("tr", {}, el("th", { scope: "row" }, name), el("td", { class: "num" }, fmtSeconds(seconds)), el("td", { class: "num" }, `${fmtNumber(points ?? 0)} points`)))))
          : el("p", { class: "muted" }, "No export is configured.")));
      status.textContent = `From /metrics; refreshes every ${REFRESH_MS / 1000} s.`;
      previous = { at: now, figures };
    } catch (e) {
      status.textContent = `Cannot read /metrics: ${e.message}`;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
