// Applications: every app with its routes, stickiness, services and weights, release status
// and health, with Update (start a release) and, while one is open, its confirm and roll back;
// and New application.

import { api, explain } from "./api.js";
import { createAppDialog, updateDialog } from "./dialogs.js";
import { every, h, healthyCount, replaceKeepFocus, statusText, takeFlash } from "./dom.js";
import { releaseButtons } from "./release.js";

export function renderApps(main) {
  const alert = h("p", {class: "error", role: "alert", id: "apps-error"});
  const status = h("p", {class: "notice", role: "status", id: "apps-status"}, takeFlash());
  const wrap = h("div", {id: "apps"});
  let names = [];
  const create = h("button", {type: "button", id: "create-app", onclick: async () => {
    report("", "");
    const name = await createAppDialog(names);
    if (name) location.hash = `#/apps/${name}`;
  }}, "New application");
  main.replaceChildren(h("div", {class: "page-head"}, h("h1", {}, "Applications"), create), alert, status, wrap);
  document.title = "Applications – Router console";
  let last = null;
  // `cause` 412: the list was behind; it is read again at once and shows the current state.
  const report = (error, done, cause) => {
    if (cause && cause.status === 412) {
      error = `Not applied: the application was changed by someone else since this page read it (${explain(cause)}). The list now shows its current state.`;
      poller.now();
    }
    alert.textContent = error || "";
    status.textContent = done || "";
  };
  const poller = every(2000, async () => {
    let apps;
    try {
      apps = (await api("GET", "/api/v1/apps")).data.apps;
    } catch (e) {
      if (e.status !== 401) alert.textContent = `Could not read the applications: ${explain(e)}`;
      return;
    }
    names = apps.map((a) => a.name);
    const key = JSON.stringify(apps);
    if (key === last) return;
    last = key;
    replaceKeepFocus(wrap, apps.length ? table(apps, report, () => poller.now())
      : h("p", {class: "muted"}, "No applications yet. New application adds one (so do routerctl create and routerctl apply)."));
  });
  return {stop: () => poller.stop()};
}

function table(apps, report, refresh) {
  return h("table", {class: "apps stack"},
    h("thead", {}, h("tr", {},
      ["Application", "Routes", "Stickiness", "Services (weight)", "Release", "Health", "Actions"]
        .map((t) => h("th", {scope: "col"}, t)))),
    h("tbody", {}, apps.map((app) => row(app, report, refresh))));
}

function row(app, report, refresh) {
  const services = Object.entries(app.services);
  const healthy = services.reduce((n, [, s]) => n + healthyCount(s), 0);
  const total = services.reduce((n, [, s]) => n + s.backends.length, 0);
  const actions = app.release
    ? releaseButtons(app, report, refresh, "list-")
    : h("button", {type: "button", id: `update-${app.name}`, onclick: async () => {
        report("", "");
        if (await updateDialog(app)) location.hash = `#/apps/${app.name}`;
      }}, "Update");
  return h("tr", {dataset: {app: app.name}},
    h("th", {scope: "row", "data-label": "Application"}, h("a", {href: `#/apps/${app.name}`, id: `link-${app.name}`}, app.name)),
    h("td", {"data-label": "Routes"}, app.routes.join(", ")),
    h("td", {"data-label": "Stickiness"}, app.session_sticky ? "On" : "Off"),
    h("td", {"data-label": "Services (weight)"}, h("ul", {class: "plain"},
      services.map(([n, s]) => h("li", {}, `${n} `, h("span", {class: "weight"}, String(s.weight)),
        app.release && app.release.new === n ? h("span", {class: "tag new"}, "new") : null)))),
    h("td", {"data-label": "Release"}, h("span", {class: `status ${app.release ? app.release.status : "none"}`}, statusText(app.release))),
    h("td", {"data-label": "Health"}, h("span", {class: healthy === total ? "ok" : "bad"}, `${healthy}/${total} backends healthy`)),
    h("td", {"data-label": "Actions"}, actions));
}
