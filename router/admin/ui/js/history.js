// The history of changes of one app, newest first, from GET /api/v1/history: who changed what,
// when, on which generation; and from it, how the app's last release ended (the banner of the
// application's page). A router without that endpoint answers 404: then it says so.

import { api, explain } from "./api.js";
import { h, replaceKeepFocus, timeEl } from "./dom.js";

// {entries} or {missing: true} (no history on this router) or {error}.
export async function readHistory(app) {
  try {
    return {entries: (await api("GET", `/api/v1/history?app=${encodeURIComponent(app)}&limit=50`)).data.history};
  } catch (e) {
    if (e.status === 404) return {missing: true};
    return {error: e};
  }
}

export function renderHistory(box, {entries, missing, error}) {
  if (missing) {
    replaceKeepFocus(box, h("p", {class: "muted", id: "history-none"}, "History of changes is not available on this router."));
    return;
  }
  if (error) {
    if (error.status !== 401) replaceKeepFocus(box, h("p", {class: "error"}, `Could not read the history: ${explain(error)}`));
    return;
  }
  if (!entries.length) {
    replaceKeepFocus(box, h("p", {class: "muted"}, "No changes recorded yet."));
    return;
  }
  replaceKeepFocus(box, h("table", {class: "history stack"},
    h("thead", {}, h("tr", {}, ["Generation", "Time", "Operation", "Changes", "By"].map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, entries.map((e) => h("tr", {dataset: {generation: e.generation}},
      h("td", {"data-label": "Generation"}, String(e.generation)),
      h("td", {"data-label": "Time"}, timeEl(e.time)),
      h("td", {"data-label": "Operation"}, h("code", {}, e.operation)),
      h("td", {"data-label": "Changes"}, h("ul", {class: "plain"}, (e.changes || []).map((c) => h("li", {}, c))),
        e.reason ? h("p", {class: "muted why"}, `Why: ${e.reason}`) : null),
      h("td", {"data-label": "By"}, e.client, e.token ? h("small", {class: "muted"}, ` (token ${e.token})`) : null))))));
}

// The history's words for a release that ended ("release of web-v2 rolled back (web-v2
// deleted)"; in a change of several apps, after the app's name and a colon).
const ENDED = /^(?:([a-z0-9-]+): )?release of (\S+) (rolled back|confirmed)(.*)$/;

// How the newest release of `app` that ended ended: {generation, time, client, operation,
// service, outcome ("rolled back" or "confirmed"), detail, reason}; null if none did.
export function lastOutcome(entries, app) {
  for (const e of entries || []) {
    for (const line of e.changes || []) {
      const m = line.match(ENDED);
      if (m && (!m[1] || m[1] === app)) {
        return {generation: e.generation, time: e.time, client: e.client, operation: e.operation,
          service: m[2], outcome: m[3], detail: m[4].trim(), reason: e.reason || null};
      }
    }
  }
  return null;
}
