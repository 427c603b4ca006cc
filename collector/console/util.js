// Small helpers: DOM building (text only, never HTML from data), formatting, the route.

/** An element with attributes and children (strings become text nodes). */
export function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else if (key === "dataset") Object.assign(node.dataset, value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

/** The hash route: `#/section/arg?params`. */
export function route() {
  const hash = location.hash.replace(/^#\/?/, "");
  const [path, query = ""] = hash.split("?");
  const [section = "fleet", ...rest] = path.split("/");
  return { section: section || "fleet", arg: rest.map(decodeURIComponent).join("/"), params: new URLSearchParams(query) };
}

/** Rewrites the current route's parameters without a new history entry. */
export function replaceParams(params) {
  const { section, arg } = route();
  const path = arg ? `${section}/${encodeURIComponent(arg)}` : section;
  const query = params.toString();
  history.replaceState(null, "", `#/${path}${query ? "?" + query : ""}`);
}

const numberFormat = new Intl.NumberFormat();
export function fmtNumber(n) {
  if (n === null || n === undefined || Number.isNaN(n)) return "–";
  if (Math.abs(n) >= 1e15 || (n !== 0 && Math.abs(n) < 1e-3)) return n.toExponential(3);
  return Number.isInteger(n) ? numberFormat.format(n) : numberFormat.format(Math.round(n * 1000) / 1000);
}

export function fmtBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export function fmtSeconds(s) {
  if (s === null || s === undefined) return "–";
  const a = Math.abs(s);
  const sign = s < 0 ? "-" : "";
  if (a < 1) return `${sign}${Math.round(a * 1000)} ms`;
  if (a < 120) return `${sign}${a.toFixed(a < 10 ? 1 : 0)} s`;
  if (a < 7200) return `${sign}${Math.round(a / 60)} min`;
  if (a < 172800) return `${sign}${Math.round(a / 3600)} h`;
  return `${sign}${Math.round(a / 86400)} d`;
}

/** A time in the browser's zone, with UTC in the title. */
export function fmtTime(iso) {
  if (!iso) return el("span", { class: "muted" }, "never");
  const d = new Date(iso);
  return el("time", { datetime: iso, title: `${d.toISOString()} (UTC)` }, d.toLocaleString());
}

/** "3 min ago" for an RFC 3339 time. */
export function ago(iso) {
  if (!iso) return "never";
  return `${fmtSeconds((Date.now() - Date.parse(iso)) / 1000)} ago`;
}

/** A status badge. */
export const STATUS_TEXT = { ok: "ok", late: "late", silent: "silent", never_seen: "never seen" };
export function badge(status) {
  return el("span", { class: `badge ${status}` }, STATUS_TEXT[status] ?? status);
}

/** Calls `fn` at most once per `ms`, after the last call. */
export function debounce(fn, ms) {
  let timer;
  return (...args) => { clearTimeout(timer); timer = setTimeout(() => fn(...args), ms); };
}

/** A series' label: `name.field{k=v,…}`. */
export function seriesLabel(s) {
  const tags = Object.entries(s.tags ?? {}).map(([k, v]) => `${k}=${v}`).join(",");
  return `${s.name}.${s.field}${tags ? "{" + tags + "}" : ""}`;
}

/** Offers `text` as a file download. */
export function download(name, type, text) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = el("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}
