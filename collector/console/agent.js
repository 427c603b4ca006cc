// One agent: its status and figures, its self-reported health over time (tributary_agent
// points: backlog, sends, errors) as small charts, and its series.

import { ApiError, get } from "./api.js";
import { badge, el, fmtBytes, fmtNumber, fmtSeconds, fmtTime, seriesLabel } from "./util.js";
import { lineChart } from "./chart.js";

const CHARTS = [
  ["buffer_points", "Backlog (points)"],
  ["points_sent_total", "Points sent (total)"],
  ["sends_failed_total", "Failed sends (total)"],
  ["errors_total", "Errors (total)"],
];

export function render(main, route, ctx) {
  const id = route.arg;
  const charts = [];
  const head = el("div", { id: "agent-head" }, "Loading…");
  const cards = el("div", { class: "cards", id: "agent-charts" });
  const seriesList = el("ul", { id: "agent-series" });
  main.append(
    el("p", {}, el("a", { href: "#/fleet" }, "← Fleet")),
    el("h2", {}, `Agent ${id}`),
    head,
    el("h3", {}, "Health it reported, last 6 hours"),
    cards,
    el("h3", {}, "Its series"),
    seriesList);

  (async () => {
    try {
      const fleet = await get("/api/v1/agents");
      const agent = fleet.agents.find((a) => a.id === id);
      if (!agent) { head.textContent = "No such agent."; return; }
      const dl = el("dl", { class: "cards" },
        [["Status", badge(agent.status)], ["Last seen", fmtTime(agent.last_seen)], ["Version", agent.version ?? "–"],
         ["Backlog", `${fmtNumber(agent.backlog_points)} points, ${fmtBytes(agent.backlog_bytes)}`],
         ["Oldest unsent", fmtSeconds(agent.oldest_unsent_age_seconds)], ["Dropped", fmtNumber(agent.dropped)],
         ["Quarantined", fmtNumber(agent.quarantined)], ["Clock skew", fmtSeconds(agent.clock_skew_seconds)],
         ["Points per minute", fmtNumber(agent.points_per_minute)], ["Points received", fmtNumber(agent.points_received)]]
          .map(([k, v]) => el("div", { class: "card" }, el("dt", { class: "muted" }, k), el("dd", { class: "figure" }, v))));
      head.replaceChildren(dl);
    } catch (e) {
      head.textContent = e.message;
    }
  })();

  (async () => {
    const to = new Date(), from = new Date(to.getTime() - 6 * 3600 * 1000);
    for (const [field, title] of CHARTS) {
      const box = el("div", { class: "chart" });
      cards.append(el("div", { class: "card" }, el("h4", {}, title), box));
      try {
        const answer = await get("/api/v1/query", { name: "tributary_agent", field, "tag.agent": id, from: from.toISOString(), to: to.toISOString(), step: "1m", agg: "last" });
        const s = answer.series[0];
        const points = (s?.points ?? []).map(([t, v]) => [Date.parse(t) / 1000, typeof v === "number" ? v : null]).filter(([, v]) => v !== null);
        if (!points.length) { box.textContent = "Nothing reported (agent.self_metrics off, or no data yet)."; continue; }
        charts.push(lineChart(box, [{ label: field, points }], { height: 160 }));
      } catch (e) {
        box.textContent = e instanceof ApiError ? e.message : String(e);
      }
    }
  })();

  (async () => {
    try {
      const answer = await get("/api/v1/series", { "tag.agent": id, limit: 500 });
      seriesList.replaceChildren(...answer.series.map((s) => {
        const link = new URLSearchParams();
        link.append("s", JSON.stringify({ name: s.name, field: s.field, tags: s.tags }));
        link.set("range", "24h");
        return el("li", {}, el("a", { href: `#/explore?${link}` }, seriesLabel(s)), el("span", { class: "muted" }, ` ${s.kind}, last ${new Date(s.last).toLocaleString()}`));
      }));
      if (!answer.series.length) seriesList.append(el("li", { class: "muted" }, "none"));
      if (answer.truncated) seriesList.append(el("li", { class: "muted" }, "… more: use Explore's search"));
    } catch (e) {
      seriesList.replaceChildren(el("li", {}, e.message));
    }
  })();

  return () => charts.forEach((c) => c.destroy());
}
