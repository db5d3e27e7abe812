// Confirm Release Completion and Roll back: each asks first, then calls the API; a refusal
// comes back as the API's own message through `report(error, done, cause)`. The guarded ramp:
// Start (its settings), Pause, Resume and Abort; and a preview link of the new version.

import { api, explain } from "./api.js";
import { confirmDialog, previewDialog, rampDialog } from "./dialogs.js";
import { etagOf, h } from "./dom.js";

// "blue=50, green=50": the weights the old services had when the release started.
export function oldWeights(release) {
  return Object.entries(release.old_weights).map(([n, w]) => `${n}=${w}`).join(", ");
}

export async function confirmRelease(app, report) {
  const r = app.release;
  const old = `${r.old.length > 1 ? "versions" : "version"} ${r.old.join(", ")}`;
  const svc = app.services[r.new];
  // At weight 0 a confirm would leave the app with no traffic: the router refuses it unless the
  // new version is given the weight first (force), and that is a choice with a consequence.
  const zero = svc !== undefined && svc.weight === 0;
  const choice = await confirmDialog({
    title: "Confirm Release Completion",
    text: zero
      ? `${r.new} has weight 0: confirming as it is would leave ${app.name} with nothing to serve, so the router refuses it. The old ${old} will be deleted. This cannot be undone.`
      : `Complete the release of ${app.name}: the old ${old} will be deleted and ${r.new} keeps serving. This cannot be undone.`,
    option: zero ? `Give ${r.new} weight 100 first: all of ${app.name}'s traffic moves to it at once, with no gradual shift and no check of its error rate, and clients pinned to ${r.old.join(", ")} are moved to it too.` : null,
    required: zero,
    ok: "Confirm release",
    danger: true,
  });
  if (!choice.ok) return null;
  try {
    const {data} = await api("POST", `/api/v1/apps/${app.name}/release/confirm`,
      {body: choice.option ? {force: true} : {}, etag: etagOf(app)});
    report(null, `Release of ${app.name} confirmed: ${r.old.join(", ")} deleted.`);
    return data;
  } catch (e) {
    report(`Confirm refused: ${explain(e)}`, null, e);
    return null;
  }
}

export async function rollbackRelease(app, report) {
  const r = app.release;
  const old = oldWeights(r);
  const choice = await confirmDialog({
    title: "Roll back the release",
    text: `Roll back the release of ${app.name}: ${r.new} will be deleted and the old weights restored (${old}).`,
    ok: "Roll back",
    danger: true,
  });
  if (!choice.ok) return null;
  try {
    const {data} = await api("POST", `/api/v1/apps/${app.name}/release/rollback`, {body: {}, etag: etagOf(app)});
    report(null, `Release of ${app.name} rolled back: ${r.new} deleted.`);
    return data;
  } catch (e) {
    report(`Roll back refused: ${explain(e)}`, null, e);
    return null;
  }
}

// The two buttons; `after(app)` runs with the app the API answered.
export function releaseButtons(app, report, after, idPrefix) {
  return h("span", {class: "release-actions"},
    h("button", {type: "button", id: `${idPrefix}confirm-${app.name}`,
      onclick: async () => { const out = await confirmRelease(app, report); if (out) after(out); }},
      "Confirm Release Completion"),
    " ",
    h("button", {type: "button", class: "secondary", id: `${idPrefix}rollback-${app.name}`,
      onclick: async () => { const out = await rollbackRelease(app, report); if (out) after(out); }},
      "Roll back"));
}

// Start a guarded ramp, and a preview link: for an open release without a ramp (the preview
// also while one runs). `refresh()` reads the app again once the API accepted.
export function startButtons(app, report, refresh) {
  const r = app.release;
  const ramp = async () => {
    report("", "");
    try {
      if (await rampDialog(app)) { report(null, `Guarded ramp of ${r.new} started.`); refresh(); }
    } catch (e) {
      report(`Ramp not started: ${explain(e)}`, null, e);
    }
  };
  const preview = async () => { report("", ""); await previewDialog(app); };
  return h("span", {class: "release-actions"},
    r.ramp ? null : h("button", {type: "button", class: "secondary", id: "ramp-start", onclick: ramp}, "Start guarded ramp"),
    h("button", {type: "button", class: "secondary", id: "preview-start", onclick: preview}, "Preview link"));
}

// Pause, Resume and Abort of a guarded ramp (docs/release-ramp.md); `refresh()` reads the app
// again once the API accepted. Pause and Resume carry no If-Match: they change no weight, and
// the ramp's own steps move the generation while the operator reads the page. Abort gives the
// old versions their weights back, so it asks first and names the generation it was made on.
export function rampButtons(app, report, refresh) {
  const ramp = app.release.ramp;
  const move = async (what, done, etag) => {
    try {
      await api("POST", `/api/v1/apps/${app.name}/release/ramp/${what}`, {body: {}, etag});
      report(null, done);
      refresh();
    } catch (e) {
      report(`Ramp not changed: ${explain(e)}`, null, e);
    }
  };
  const abort = async () => {
    const old = oldWeights(app.release);
    const choice = await confirmDialog({
      title: "Abort the ramp",
      text: `Stop the guarded ramp of ${app.name}: the old weights come back (${old}) and ${app.release.new} stays at weight 0, its release still open.`,
      ok: "Abort ramp",
      danger: true,
    });
    if (choice.ok) await move("abort", `Ramp of ${app.name} aborted: old weights restored.`, etagOf(app));
  };
  return h("span", {class: "ramp-actions"},
    ramp.status === "running" ? h("button", {type: "button", class: "secondary", id: "ramp-pause",
      onclick: () => move("pause", `Ramp of ${app.name} paused.`)}, "Pause ramp") : null,
    ramp.status === "paused" ? h("button", {type: "button", class: "secondary", id: "ramp-resume",
      onclick: () => move("resume", `Ramp of ${app.name} resumed.`)}, "Resume ramp") : null,
    " ",
    h("button", {type: "button", class: "secondary", id: "ramp-abort", onclick: abort}, "Abort ramp"));
}
