// The history of changes of one app, newest first, from GET /api/v1/history: who changed what,
// when, on which generation. A router without that endpoint answers 404: then it says so.

import { api, explain } from "./api.js";
import { h, replaceKeepFocus } from "./dom.js";

export async function loadHistory(box, app) {
  let entries;
  try {
    entries = (await api("GET", `/api/v1/history?app=${encodeURIComponent(app)}&limit=50`)).data.history;
  } catch (e) {
    if (e.status === 404) {
      replaceKeepFocus(box, h("p", {class: "muted", id: "history-none"}, "History of changes is not available on this router."));
    } else if (e.status !== 401) {
      replaceKeepFocus(box, h("p", {class: "error"}, `Could not read the history: ${explain(e)}`));
    }
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
      h("td", {"data-label": "Time"}, h("time", {datetime: e.time}, new Date(e.time).toLocaleString())),
      h("td", {"data-label": "Operation"}, h("code", {}, e.operation)),
      h("td", {"data-label": "Changes"}, h("ul", {class: "plain"}, (e.changes || []).map((c) => h("li", {}, c))),
        e.reason ? h("p", {class: "muted why"}, `Why: ${e.reason}`) : null),
      h("td", {"data-label": "By"}, e.client, e.token ? h("small", {class: "muted"}, ` (token ${e.token})`) : null))))));
}
