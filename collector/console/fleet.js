// Fleet: one row per agent, sortable, filterable, paginated, refreshed every few seconds.

import { ApiError, get } from "./api.js";
import { STATUS_TEXT, ago, badge, el, fmtBytes, fmtNumber, fmtSeconds, fmtTime, replaceParams } from "./util.js";

const REFRESH_MS = 5000;
const PAGE_SIZE = 50;
const STATUS_ORDER = { silent: 0, late: 1, never_seen: 2, ok: 3 };

const COLUMNS = [
  { key: "id", label: "Agent", value: (a) => a.id },
  { key: "status", label: "Status", value: (a) => STATUS_ORDER[a.status] ?? 9 },
  { key: "last_seen", label: "Last seen", value: (a) => (a.last_seen ? Date.parse(a.last_seen) : -Infinity) },
  { key: "backlog_points", label: "Backlog points", num: true, value: (a) => a.backlog_points },
  { key: "backlog_bytes", label: "Backlog bytes", num: true, narrow: true, value: (a) => a.backlog_bytes },
  { key: "oldest_unsent", label: "Oldest unsent", num: true, value: (a) => a.oldest_unsent_age_seconds ?? -1 },
  { key: "dropped", label: "Dropped", num: true, narrow: true, value: (a) => a.dropped },
  { key: "quarantined", label: "Quarantined", num: true, narrow: true, value: (a) => a.quarantined },
  { key: "clock_skew", label: "Clock skew", num: true, narrow: true, value: (a) => Math.abs(a.clock_skew_seconds ?? 0) },
  { key: "version", label: "Version", narrow: true, value: (a) => a.version ?? "" },
  { key: "points_per_minute", label: "Points/min", num: true, value: (a) => a.points_per_minute },
];

function cell(column, agent) {
  switch (column.key) {
    case "id": return el("a", { href: `#/agent/${encodeURIComponent(agent.id)}` }, agent.id);
    case "status": return badge(agent.status);
    case "last_seen": return agent.last_seen ? el("span", { title: new Date(agent.last_seen).toISOString() + " (UTC)" }, ago(agent.last_seen)) : el("span", { class: "muted" }, "never");
    case "backlog_points": return fmtNumber(agent.backlog_points);
    case "backlog_bytes": return fmtBytes(agent.backlog_bytes);
    case "oldest_unsent": return fmtSeconds(agent.oldest_unsent_age_seconds);
    case "dropped": return fmtNumber(agent.dropped);
    case "quarantined": return fmtNumber(agent.quarantined);
    case "clock_skew": return fmtSeconds(agent.clock_skew_seconds);
    case "version": return agent.version ?? "–";
    case "points_per_minute": return fmtNumber(agent.points_per_minute);
    default: return "";
  }
}

export function render(main, route, ctx) {
  const params = route.params;
  const state = {
    q: params.get("q") ?? "",
    status: params.get("status") ?? "",
    sort: params.get("sort") ?? "status",
    dir: params.get("dir") === "desc" ? "desc" : "asc",
    page: Math.max(1, Number(params.get("page")) || 1),
  };
  let answer = null;

  const save = () => {
    const p = new URLSearchParams();
    if (state.q) p.set("q", state.q);
    if (state.status) p.set("status", state.status);
    if (state.sort !== "status") p.set("sort", state.sort);
    if (state.dir !== "asc") p.set("dir", state.dir);
    if (state.page > 1) p.set("page", state.page);
    replaceParams(p);
  };

  const filter = el("input", { id: "fleet-filter", type: "search", value: state.q, placeholder: "id or version" });
  const statusSelect = el("select", { id: "fleet-status" },
    el("option", { value: "" }, "any"),
    Object.entries(STATUS_TEXT).map(([value, text]) => el("option", { value, selected: state.status === value }, text)));
  const summary = el("p", { class: "muted", id: "fleet-summary" }, "Loading…");
  const table = el("table", { id: "fleet-table" });
  const pager = el("div", { class: "pager" });
  const updated = el("p", { class: "muted" });
  main.append(
    el("h2", {}, "Fleet"),
    el("div", { class: "controls" },
      el("div", {}, el("label", { for: "fleet-filter" }, "Filter agents"), filter),
      el("div", {}, el("label", { for: "fleet-status" }, "Status"), statusSelect)),
    summary,
    el("ul", { class: "legend", "aria-label": "Status legend" },
      el("li", {}, badge("ok"), " heard from recently"),
      el("li", {}, badge("late"), " quiet longer than expected"),
      el("li", {}, badge("silent"), " quiet past the silence threshold"),
      el("li", {}, badge("never_seen"), " configured, never heard from")),
    el("div", { class: "table-wrap" }, table),
    pager,
    updated);

  const draw = () => {
    if (!answer) return;
    const s = answer.summary;
    summary.replaceChildren(
      `${answer.agents.length} agents: ${s.ok} ok, ${s.late} late, ${s.silent} silent, ${s.never_seen} never seen. `,
      el("span", {}, `Late after ${fmtSeconds(s.late_after_seconds)}, silent after ${fmtSeconds(s.silent_after_seconds)}.`));
    const q = state.q.toLowerCase();
    let rows = answer.agents.filter((a) =>
      (!state.status || a.status === state.status) &&
      (!q || a.id.toLowerCase().includes(q) || (a.version ?? "").toLowerCase().includes(q)));
    const column = COLUMNS.find((c) => c.key === state.sort) ?? COLUMNS[1];
    const sign = state.dir === "desc" ? -1 : 1;
    rows.sort((a, b) => {
      const x = column.value(a), y = column.value(b);
      const order = typeof x === "string" ? x.localeCompare(y) : x - y;
      return sign * order || a.id.localeCompare(b.id);
    });
    const pages = Math.max(1, Math.ceil(rows.length / PAGE_SIZE));
    state.page = Math.min(state.page, pages);
    const shown = rows.slice((state.page - 1) * PAGE_SIZE, state.page * PAGE_SIZE);
    const head = el("tr", {}, COLUMNS.map((c) => el("th", {
      scope: "col",
      class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" ").trim() || null,
      "aria-sort": c.key === state.sort ? (state.dir === "asc" ? "ascending" : "descending") : null,
    }, el("button", {
      type: "button",
      onclick: () => {
        if (state.sort === c.key) state.dir = state.dir === "asc" ? "desc" : "asc";
        else { state.sort = c.key; state.dir = "asc"; }
        save(); draw();
      },
    }, c.label, c.key === state.sort ? (state.dir === "asc" ? " ▲" : " ▼") : ""))));
    const body = shown.map((a) => el("tr", { dataset: { agent: a.id, status: a.status } },
      COLUMNS.map((c) => el("td", { class: [c.num ? "num" : "", c.narrow ? "hide-narrow" : ""].join(" ").trim() || null }, cell(c, a)))));
    table.replaceChildren(
      el("caption", { class: "muted", style: null }, `Agents, page ${state.page} of ${pages}`),
      el("thead", {}, head),
      el("tbody", {}, body.length ? body : el("tr", {}, el("td", { colspan: COLUMNS.length }, "No agent matches."))));
    pager.replaceChildren(
      el("button", { type: "button", class: "quiet", disabled: state.page <= 1, onclick: () => { state.page -= 1; save(); draw(); } }, "Previous"),
      el("span", {}, `Page ${state.page} of ${pages} (${rows.length} agents)`),
      el("button", { type: "button", class: "quiet", disabled: state.page >= pages, onclick: () => { state.page += 1; save(); draw(); } }, "Next"));
    updated.replaceChildren("Updated ", fmtTime(s.generated_at), `; refreshes every ${REFRESH_MS / 1000} s.`);
  };

  filter.addEventListener("input", () => { state.q = filter.value; state.page = 1; save(); draw(); });
  statusSelect.addEventListener("change", () => { state.status = statusSelect.value; state.page = 1; save(); draw(); });

  let stopped = false;
  let timer = null;
  const load = async () => {
    try {
      answer = await get("/api/v1/agents");
      draw();
    } catch (e) {
      if (!(e instanceof ApiError && (e.status === 401 || e.status === 403))) ctx.notify(`Cannot load the fleet: ${e.message}`);
      else summary.textContent = e.message;
    }
    if (!stopped) timer = setTimeout(load, REFRESH_MS);
  };
  load();
  return () => { stopped = true; clearTimeout(timer); };
}
