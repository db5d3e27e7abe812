// Modal dialogs on the page's one <dialog>: a confirmation (with an optional choice) and the
// form that starts a release. Esc or Cancel closes them without doing anything.

import { api, explain } from "./api.js";
import { h } from "./dom.js";

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;  // NAME_PATTERN of router/config/model.py

function open(...content) {
  const dlg = document.getElementById("dialog");
  const before = document.activeElement;
  dlg.replaceChildren(...content);
  dlg.showModal();
  dlg.addEventListener("close", () => { if (before && before.isConnected) before.focus(); }, {once: true});
  return dlg;
}

// Resolves to {ok: true, option: bool} or {ok: false}.
export function confirmDialog({title, text, ok, option, danger}) {
  return new Promise((resolve) => {
    const box = option ? h("input", {type: "checkbox", id: "dialog-option"}) : null;
    const cancel = h("button", {type: "button", class: "secondary", id: "dialog-cancel"}, "Cancel");
    const okBtn = h("button", {type: "submit", id: "dialog-ok", class: danger ? "danger" : null}, ok);
    const form = h("form", {method: "dialog"},
      h("h2", {id: "dialog-title"}, title),
      h("p", {}, text),
      option ? h("p", {class: "option"}, box, " ", h("label", {for: "dialog-option"}, option)) : null,
      h("div", {class: "actions"}, okBtn, cancel));
    const dlg = open(form);
    let result = {ok: false};
    cancel.addEventListener("click", () => dlg.close());
    form.addEventListener("submit", () => { result = {ok: true, option: box ? box.checked : false}; });
    dlg.addEventListener("close", () => resolve(result), {once: true});
    cancel.focus();
  });
}

export function parseBackends(text) {
  return text.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

// The Update form: a new service version next to the old ones, at weight 0. `app` is the app
// object as last read (its generation guards the change); resolves to true once started.
export function updateDialog(app) {
  return new Promise((resolve) => {
    const field = (id, label, input, hint) => h("div", {class: "field"},
      h("label", {for: id}, label), input, hint ? h("small", {id: id + "-hint"}, hint) : null);
    const name = h("input", {id: "new-service", name: "service", required: true, autocomplete: "off",
      pattern: NAME_RE.source.slice(1, -1), "aria-describedby": "new-service-hint", spellcheck: "false"});
    const backends = h("textarea", {id: "new-backends", name: "backends", rows: 3, required: true,
      "aria-describedby": "new-backends-hint", spellcheck: "false"});
    const hcOn = h("input", {type: "checkbox", id: "hc-on"});
    const hcPath = h("input", {id: "hc-path", value: "/healthz", autocomplete: "off"});
    const hcInterval = h("input", {id: "hc-interval", value: "2s", autocomplete: "off"});
    const hcTimeout = h("input", {id: "hc-timeout", value: "1s", autocomplete: "off"});
    const hcFields = h("div", {class: "hc-fields", hidden: true},
      field("hc-path", "Health check path", hcPath),
      field("hc-interval", "Interval", hcInterval),
      field("hc-timeout", "Timeout", hcTimeout));
    hcOn.addEventListener("change", () => { hcFields.hidden = !hcOn.checked; });
    const error = h("p", {class: "error", role: "alert", id: "update-error"});
    const cancel = h("button", {type: "button", class: "secondary"}, "Cancel");
    const old = Object.keys(app.services).join(", ");
    const form = h("form", {novalidate: true},
      h("h2", {id: "dialog-title"}, `Update ${app.name}`),
      h("p", {}, `Blue-green release: the new version runs next to ${old} with weight 0, so no client sees it until you set its weight.`),
      field("new-service", "New service name", name, "Lower-case letters, digits and '-'; not the name of an existing service."),
      field("new-backends", "Backends", backends, "host:port, one per line (or separated by spaces or commas)."),
      h("fieldset", {},
        h("legend", {}, "Health check"),
        h("p", {class: "option"}, hcOn, " ", h("label", {for: "hc-on"}, "Check over HTTP (otherwise a TCP connect)")),
        hcFields),
      error,
      h("div", {class: "actions"}, h("button", {type: "submit", id: "update-ok"}, "OK"), cancel));
    const dlg = open(form);
    let started = false;
    cancel.addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => resolve(started), {once: true});
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      const svc = name.value.trim();
      const list = parseBackends(backends.value);
      if (!NAME_RE.test(svc)) { error.textContent = "New service name: lower-case letters, digits and '-', starting with a letter or digit."; name.focus(); return; }
      if (app.services[svc]) { error.textContent = `New service name: ${app.name} already has a service ${svc}; the new version needs a new name.`; name.focus(); return; }
      if (list.length === 0) { error.textContent = "Backends: at least one host:port."; backends.focus(); return; }
      const body = {service: svc, backends: list};
      if (hcOn.checked) body.health_check = {path: hcPath.value.trim(), interval: hcInterval.value.trim(), timeout: hcTimeout.value.trim()};
      try {
        await api("POST", `/api/v1/apps/${app.name}/release`, {body, etag: `"${app.generation}"`});
        started = true;
        dlg.close();
      } catch (e) {
        error.textContent = e.status === 412
          ? `${app.name} was changed meanwhile (${explain(e)}); close this form and look at its current state first.`
          : explain(e);
      }
    });
    name.focus();
  });
}
