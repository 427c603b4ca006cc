// Explore: find series (search as you type over /api/v1/series), choose the range, step and
// aggregate, overlay them in one chart (drag to zoom), download what is shown as CSV. The URL
// holds the whole state, so a view can be shared.

import { ApiError, get } from "./api.js";
import { debounce, download, el, fmtNumber, replaceParams, seriesLabel } from "./util.js";
import { lineChart } from "./chart.js";

const PRESETS = [["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400], ["7d", 604800], ["30d", 2592000]];
const STEPS = [["auto", "auto"], ["raw", "raw points"], ["10s", "10 s"], ["1m", "1 min"], ["5m", "5 min"], ["15m", "15 min"], ["1h", "1 h"], ["6h", "6 h"], ["1d", "1 day"]];
const STEP_SECONDS = { "10s": 10, "1m": 60, "5m": 300, "15m": 900, "1h": 3600, "6h": 21600, "1d": 86400 };
const AGGS = ["mean", "min", "max", "sum", "count", "first", "last", "stddev", "p50", "p90", "p99"];
const MAX_POINTS_PER_SERIES = 1500;

/** The finest step that keeps a span under the points budget. */
export function autoStep(seconds) {
  for (const [step, s] of Object.entries(STEP_SECONDS)) if (seconds / s <= MAX_POINTS_PER_SERIES) return step;
  return "1d";
}

function toLocalInput(date) {
  const pad = (n) => String(n).padStart(2, "0");
  return `${date.getFullYear()}-${pad(date.getMonth() + 1)}-${pad(date.getDate())}T${pad(date.getHours())}:${pad(date.getMinutes())}`;
}

export function render(main, route, ctx) {
  const started = performance.now();
  performance.clearMarks();
  performance.mark("explore-open");
  const params = route.params;
  const state = {
    series: params.getAll("s").map((s) => { try { return JSON.parse(s); } catch { return null; } }).filter(Boolean),
    range: params.get("range") ?? (params.get("from") ? "custom" : "24h"),
    from: params.get("from"),
    to: params.get("to"),
    step: params.get("step") ?? "auto",
    agg: params.get("agg") ?? "mean",
  };
  let chart = null;
  let shown = [];

  const save = () => {
    const p = new URLSearchParams();
    for (const s of state.series) p.append("s", JSON.stringify({ name: s.name, field: s.field, tags: s.tags }));
    if (state.range === "custom") { p.set("from", state.from); p.set("to", state.to); } else p.set("range", state.range);
    p.set("step", state.step);
    p.set("agg", state.agg);
    replaceParams(p);
  };

  const span = () => {
    if (state.range === "custom" && state.from && state.to) return [new Date(state.from), new Date(state.to)];
    const seconds = (PRESETS.find(([k]) => k === state.range) ?? PRESETS[3])[1];
    const to = new Date();
    return [new Date(to.getTime() - seconds * 1000), to];
  };

  // Picker.
  const search = el("input", { id: "explore-search", type: "search", autocomplete: "off", placeholder: "name, field or tag", "aria-describedby": "explore-search-help" });
  const results = el("ul", { class: "results", id: "explore-results", "aria-label": "Matching series" });
  const resultsNote = el("p", { class: "muted", id: "explore-search-help" }, "Type to search; choose a series to add it to the chart.");
  const chips = el("ul", { class: "chips", id: "explore-selected", "aria-label": "Series on the chart" });

  // Range, step, aggregate.
  const rangeSelect = el("select", { id: "explore-range" },
    PRESETS.map(([k]) => el("option", { value: k, selected: state.range === k }, `last ${k}`)),
    el("option", { value: "custom", selected: state.range === "custom" }, "custom"));
  const fromInput = el("input", { id: "explore-from", type: "datetime-local" });
  const toInput = el("input", { id: "explore-to", type: "datetime-local" });
  const custom = el("div", { class: "controls", id: "explore-custom" },
    el("div", {}, el("label", { for: "explore-from" }, "From (local time)"), fromInput),
    el("div", {}, el("label", { for: "explore-to" }, "To (local time)"), toInput));
  const utc = el("p", { class: "muted", id: "explore-utc" });
  const stepSelect = el("select", { id: "explore-step" }, STEPS.map(([k, text]) => el("option", { value: k, selected: state.step === k }, text)));
  const aggSelect = el("select", { id: "explore-agg" }, AGGS.map((a) => el("option", { value: a, selected: state.agg === a }, a)));
  const csv = el("button", { type: "button", class: "quiet", id: "explore-csv", disabled: true }, "Download CSV");
  const chartBox = el("div", { class: "chart", id: "explore-chart", role: "img", "aria-label": "Chart of the chosen series" });
  const status = el("p", { class: "muted", id: "explore-status" });
  const stats = el("table", { id: "explore-stats" });

  main.append(
    el("h2", {}, "Explore"),
    el("div", { class: "explore" },
      el("section", { "aria-label": "Series" },
        el("label", { for: "explore-search" }, "Find series"), search, resultsNote, results,
        el("h3", {}, "On the chart"), chips),
      el("section", { "aria-label": "Chart" },
        el("div", { class: "controls" },
          el("div", {}, el("label", { for: "explore-range" }, "Range"), rangeSelect),
          el("div", {}, el("label", { for: "explore-step" }, "Step"), stepSelect),
          el("div", {}, el("label", { for: "explore-agg" }, "Aggregate"), aggSelect),
          el("div", {}, csv)),
        custom, utc, status, chartBox,
        el("div", { class: "table-wrap" }, stats))));

  const syncRangeInputs = () => {
    const [from, to] = span();
    custom.hidden = state.range !== "custom";
    fromInput.value = toLocalInput(from);
    toInput.value = toLocalInput(to);
    const zone = Intl.DateTimeFormat().resolvedOptions().timeZone;
    utc.textContent = `${from.toISOString()} to ${to.toISOString()} UTC (shown in ${zone})`;
    aggSelect.disabled = state.step === "raw";
  };

  const drawChips = () => {
    chips.replaceChildren(...state.series.map((s, i) => el("li", {},
      el("span", {}, seriesLabel(s)),
      el("button", { type: "button", class: "quiet", "aria-label": `Remove ${seriesLabel(s)}`, onclick: () => { state.series.splice(i, 1); save(); drawChips(); load(); } }, "×"))));
    if (!state.series.length) chips.append(el("li", { class: "muted" }, "none yet"));
  };

  const find = debounce(async () => {
    const text = search.value.trim();
    try {
      const answer = await get("/api/v1/series", { search: text, limit: 50 });
      const numeric = answer.series.filter((s) => s.kind !== "string");
      results.replaceChildren(...numeric.map((s) => el("li", {}, el("button", {
        type: "button",
        onclick: () => {
          if (!state.series.some((x) => seriesLabel(x) === seriesLabel(s))) state.series.push({ name: s.name, field: s.field, tags: s.tags });
          save(); drawChips(); load();
        },
      }, seriesLabel(s)))));
      resultsNote.textContent = numeric.length
        ? `${numeric.length}${answer.truncated ? "+" : ""} series${answer.truncated ? ": refine the search to see the rest" : ""}.`
        : "No series matches.";
    } catch (e) {
      resultsNote.textContent = e.message;
    }
  }, 150);

  let generation = 0;
  const load = async () => {
    const mine = ++generation;
    syncRangeInputs();
    if (chart) { chart.destroy(); chart = null; }
    chartBox.replaceChildren();
    stats.replaceChildren();
    shown = [];
    csv.disabled = true;
    if (!state.series.length) { status.textContent = "Choose a series to draw."; return; }
    const [from, to] = span();
    const step = state.step === "auto" ? autoStep((to - from) / 1000) : state.step;
    status.textContent = "Loading…";
    try {
      const answers = await Promise.all(state.series.map((s) => {
        const query = { name: s.name, field: s.field, from: from.toISOString(), to: to.toISOString() };
        for (const [k, v] of Object.entries(s.tags ?? {})) query[`tag.${k}`] = v;
        if (step !== "raw") { query.step = step; query.agg = state.agg; }
        return get("/api/v1/query", query);
      }));
      if (mine !== generation) return;
      shown = state.series.map((s, i) => {
        // The exact series: the tag filter also matches series with more tags.
        const match = answers[i].series.find((x) => seriesLabel(x) === seriesLabel(s));
        const points = (match?.points ?? [])
          .map(([t, v]) => [Date.parse(t) / 1000, typeof v === "number" ? v : (v === true ? 1 : v === false ? 0 : null)])
          .filter(([, v]) => v !== null);
        return { label: seriesLabel(s) + (step === "raw" ? "" : ` ${state.agg}`), points, truncated: answers[i].truncated, source: answers[i].source };
      });
      chart = lineChart(chartBox, shown, {
        onZoom: (a, b) => {
          state.range = "custom";
          state.from = new Date(a * 1000).toISOString();
          state.to = new Date(b * 1000).toISOString();
          rangeSelect.value = "custom";
          save(); load();
        },
      });
      const sources = [...new Set(shown.map((s) => s.source).filter(Boolean))];
      status.textContent = `Step ${step === "raw" ? "raw points" : step}${sources.length ? `, answered from ${sources.join(", ")}` : ""}. Drag across the chart to zoom.`;
      stats.replaceChildren(
        el("thead", {}, el("tr", {}, ["Series", "Points", "Min", "Max"].map((h, i) => el("th", { scope: "col", class: i ? "num" : null }, h)))),
        el("tbody", {}, shown.map((s) => {
          const values = s.points.map((p) => p[1]);
          const min = values.length ? Math.min(...values) : null;
          const max = values.length ? Math.max(...values) : null;
          return el("tr", { dataset: { series: s.label, points: values.length, min: min ?? "", max: max ?? "" } },
            el("td", {}, s.label, s.truncated ? " (truncated)" : ""),
            el("td", { class: "num" }, fmtNumber(values.length)),
            el("td", { class: "num" }, fmtNumber(min)),
            el("td", { class: "num" }, fmtNumber(max)));
        })));
      csv.disabled = false;
      performance.mark("explore-chart");
      // For the benchmark: since the page loaded, and since Explore was opened.
      chartBox.dataset.sinceOpenMs = String(Math.round(performance.now() - started));
      chartBox.dataset.sinceLoadMs = String(Math.round(performance.now()));
    } catch (e) {
      if (mine !== generation) return;
      status.textContent = e instanceof ApiError && (e.status === 401 || e.status === 403) ? e.message : `Cannot load: ${e.message}`;
    }
  };

  csv.addEventListener("click", () => {
    const times = [...new Set(shown.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
    const maps = shown.map((s) => new Map(s.points));
    const quote = (text) => `"${String(text).replaceAll('"', '""')}"`;
    const lines = [["time", ...shown.map((s) => s.label)].map(quote).join(",")];
    for (const t of times) lines.push([new Date(t * 1000).toISOString(), ...maps.map((m) => m.get(t) ?? "")].join(","));
    download("tributary.csv", "text/csv", lines.join("\n") + "\n");
  });
  search.addEventListener("input", find);
  rangeSelect.addEventListener("change", () => {
    state.range = rangeSelect.value;
    if (state.range === "custom") { const [f, t] = span(); state.from = f.toISOString(); state.to = t.toISOString(); }
    save(); load();
  });
  const setCustom = () => {
    const f = new Date(fromInput.value), t = new Date(toInput.value);
    if (Number.isNaN(f.getTime()) || Number.isNaN(t.getTime()) || f >= t) { status.textContent = "The custom range needs a start before its end."; return; }
    state.from = f.toISOString(); state.to = t.toISOString();
    save(); load();
  };
  fromInput.addEventListener("change", setCustom);
  toInput.addEventListener("change", setCustom);
  stepSelect.addEventListener("change", () => { state.step = stepSelect.value; save(); load(); });
  aggSelect.addEventListener("change", () => { state.agg = aggSelect.value; save(); load(); });

  drawChips();
  find();
  load();
  return () => { generation += 1; if (chart) chart.destroy(); };
}
