// Quarantine: the newest refused records, with agent, source, reason and the payload shown
// as text (it is untrusted input: it only ever goes into textContent).

import { get } from "./api.js";
import { debounce, el, fmtTime, replaceParams } from "./util.js";

const EXCERPT = 300;

export function render(main, route, ctx) {
  const params = route.params;
  const agent = el("input", { id: "quarantine-agent", type: "search", value: params.get("agent") ?? "", placeholder: "exact agent id" });
  const reason = el("input", { id: "quarantine-reason", type: "search", value: params.get("reason") ?? "", placeholder: "words in the reason" });
  const status = el("p", { class: "muted", id: "quarantine-status" }, "Loading…");
  const table = el("table", { id: "quarantine-table" });
  main.append(
    el("h2", {}, "Quarantine"),
    el("div", { class: "controls" },
      el("div", {}, el("label", { for: "quarantine-agent" }, "Agent"), agent),
      el("div", {}, el("label", { for: "quarantine-reason" }, "Reason contains"), reason)),
    status,
    el("div", { class: "table-wrap" }, table));

  const load = async () => {
    const p = new URLSearchParams();
    if (agent.value) p.set("agent", agent.value);
    if (reason.value) p.set("reason", reason.value);
    replaceParams(p);
    try {
      const answer = await get("/api/v1/quarantine", { order: "newest", limit: 200, agent: agent.value, reason: reason.value });
      status.textContent = `${answer.records.length}${answer.truncated ? "+" : ""} records, newest first.`;
      table.replaceChildren(
        el("thead", {}, el("tr", {}, ["Received", "Agent", "Source", "Where", "Reason", "Payload"].map((h) => el("th", { scope: "col" }, h)))),
        el("tbody", {}, answer.records.map((r) => {
          const payload = r.payload.length > EXCERPT ? `${r.payload.slice(0, EXCERPT)}…` : r.payload;
          return el("tr", { dataset: { id: r.id } },
            el("td", {}, fmtTime(r.received_at)),
            el("td", {}, r.agent ?? "–"),
            el("td", {}, r.source),
            el("td", {}, r.topic),
            el("td", {}, r.reason),
            el("td", {}, el("code", { class: "payload" }, r.payload_encoding === "hex" ? `hex: ${payload}` : payload)));
        })));
    } catch (e) {
      status.textContent = e.message;
    }
  };
  const later = debounce(load, 250);
  agent.addEventListener("input", later);
  reason.addEventListener("input", later);
  load();
}
