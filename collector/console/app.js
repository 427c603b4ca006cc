// The console's shell: routes (#/fleet, #/agent/ID, #/explore?…, #/quarantine, #/ingest),
// the reader-token dialog, and the notice line.

import { forgetToken, onAuthNeeded, setToken, token } from "./api.js";
import { route } from "./util.js";
import * as fleet from "./fleet.js";
import * as agent from "./agent.js";
import * as explore from "./explore.js";
import * as quarantine from "./quarantine.js";
import * as ingest from "./ingest.js";

const views = { fleet, agent, explore, quarantine, ingest };
const main = document.getElementById("main");
const notice = document.getElementById("notice");
const dialog = document.getElementById("login");
const signout = document.getElementById("signout");
let cleanup = null;
let shownSection = null;

/** Shows `message` above the page (or hides the line when empty). */
export function notify(message) {
  notice.textContent = message ?? "";
  notice.hidden = !message;
}

function show() {
  if (cleanup) { cleanup(); cleanup = null; }
  const current = route();
  const view = views[current.section] ?? fleet;
  const section = current.section === "agent" ? "fleet" : current.section;
  for (const link of document.querySelectorAll("nav a")) {
    if (link.dataset.section === section) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
  signout.hidden = !token();
  notify("");
  main.replaceChildren();
  cleanup = view.render(main, current, { notify }) ?? null;
  // A new section takes the focus (for screen readers and keyboards); a change of its
  // parameters does not.
  if (shownSection !== current.section) {
    shownSection = current.section;
    main.focus({ preventScroll: true });
  }
}

onAuthNeeded((status, message) => {
  document.getElementById("login-reason").textContent = message;
  notify(message);
  if (!dialog.open) dialog.showModal();
  document.getElementById("token").focus();
});

document.getElementById("login-form").addEventListener("submit", (event) => {
  event.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (!value) return;
  setToken(value);
  document.getElementById("token").value = "";
  dialog.close();
  show();
});

signout.addEventListener("click", () => {
  forgetToken();
  show();
});

document.getElementById("skip").addEventListener("click", (event) => {
  event.preventDefault();
  main.focus();
});

window.addEventListener("hashchange", () => {
  // Views that rewrite their own parameters use replaceState, which fires no hashchange.
  show();
});

show();
