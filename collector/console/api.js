// The read API, with the reader's token from this tab's session storage.

const KEY = "tributary.reader-token";

export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

let authNeeded = () => {};
/** Called with (status, message) when a read is refused for want of a (good) token. */
export function onAuthNeeded(handler) { authNeeded = handler; }

export function token() { return sessionStorage.getItem(KEY); }
export function setToken(value) { sessionStorage.setItem(KEY, value); }
export function forgetToken() { sessionStorage.removeItem(KEY); }

/** GET `path` with `params` (an object or URLSearchParams): JSON, or text for /metrics. */
export async function get(path, params = {}) {
  const url = new URL(path, location.origin);
  const search = params instanceof URLSearchParams ? params : new URLSearchParams();
  if (!(params instanceof URLSearchParams)) {
    for (const [key, value] of Object.entries(params)) {
      for (const v of Array.isArray(value) ? value : [value]) {
        if (v !== undefined && v !== null && v !== "") search.append(key, v);
      }
    }
  }
  url.search = search.toString();
  const headers = { Accept: path === "/metrics" ? "text/plain" : "application/json" };
  const t = token();
  if (t) headers.Authorization = `Bearer ${t}`;
  let response;
  try {
    response = await fetch(url, { headers, cache: "no-store" });
  } catch (e) {
    throw new ApiError(0, `The collector did not answer (${e.message}).`);
  }
  if (response.status === 401 || response.status === 403) {
    const body = await response.json().catch(() => ({}));
    const reason = body.error ?? response.statusText;
    const message = response.status === 401
      ? (t ? `The token was refused: ${reason}.` : "This collector needs a reader token to show its data.")
      : `This token may not read: ${reason}.`;
    authNeeded(response.status, message);
    throw new ApiError(response.status, message);
  }
  if (!response.ok) {
    const body = await response.json().catch(() => ({}));
    throw new ApiError(response.status, body.error ?? `${response.status} ${response.statusText}`);
  }
  return path === "/metrics" ? response.text() : response.json();
}
