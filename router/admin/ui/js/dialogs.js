// Modal dialogs on the page's one <dialog>: a confirmation (with an optional choice, or a name
// to type), the form that starts a release, the guarded ramp's settings, a preview link, a new
// application. Esc or Cancel closes them without doing anything.

import { api, explain } from "./api.js";
import { duration, etagOf, h, timeEl } from "./dom.js";

const NAME_RE = /^[a-z0-9][a-z0-9-]{0,62}$/;  // NAME_PATTERN of router/config/model.py

function open(...content) {
  const dlg = document.getElementById("dialog");
  const before = document.activeElement;
  dlg.replaceChildren(...content);
  dlg.className = "";
  dlg.showModal();
  dlg.addEventListener("close", () => { if (before && before.isConnected) before.focus(); }, {once: true});
  return dlg;
}

function field(id, label, input, hint) {
  if (hint) input.setAttribute("aria-describedby", `${id}-hint`);
  return h("div", {class: "field"}, h("label", {for: id}, label), input, hint ? h("small", {id: `${id}-hint`}, hint) : null);
}

const text = (id, value, attrs) => h("input", {id, value: value ?? "", autocomplete: "off", spellcheck: "false", ...attrs});

// Resolves to {ok: true, option: bool} or {ok: false}. `option`: a checkbox whose label says
// what it does; `required`: OK stays disabled until it is ticked. `typed`: a word to type
// before OK is enabled (deleting an application).
export function confirmDialog({title, text: body, ok, option, required, typed, danger}) {
  return new Promise((resolve) => {
    const box = option ? h("input", {type: "checkbox", id: "dialog-option"}) : null;
    const word = typed ? text("dialog-typed", "", {"aria-describedby": "dialog-typed-hint"}) : null;
    const cancel = h("button", {type: "button", class: "secondary", id: "dialog-cancel"}, "Cancel");
    const okBtn = h("button", {type: "submit", id: "dialog-ok", class: danger ? "danger" : null}, ok);
    const ready = () => { okBtn.disabled = (required && !box.checked) || (typed && word.value.trim() !== typed); };
    const form = h("form", {method: "dialog"},
      h("h2", {id: "dialog-title"}, title),
      h("p", {}, body),
      option ? h("p", {class: "option"}, box, " ", h("label", {for: "dialog-option"}, option)) : null,
      typed ? field("dialog-typed", `Type ${typed} to confirm`, word) : null,
      h("div", {class: "actions"}, okBtn, cancel));
    if (box) box.addEventListener("change", ready);
    if (word) word.addEventListener("input", ready);
    ready();
    const dlg = open(form);
    let result = {ok: false};
    cancel.addEventListener("click", () => dlg.close());
    form.addEventListener("submit", (ev) => {
      if (okBtn.disabled) { ev.preventDefault(); return; }
      result = {ok: true, option: box ? box.checked : false};
    });
    dlg.addEventListener("close", () => resolve(result), {once: true});
    (word || cancel).focus();
  });
}

export function parseBackends(value) {
  return value.split(/[\s,]+/).map((s) => s.trim()).filter(Boolean);
}

// The health check part of a form: a TCP connect unless HTTP is chosen. `read()` gives the API's
// health_check object, or null.
function healthFields() {
  const on = h("input", {type: "checkbox", id: "hc-on"});
  const path = text("hc-path", "/healthz");
  const interval = text("hc-interval", "2s");
  const timeout = text("hc-timeout", "1s");
  const fields = h("div", {class: "hc-fields", hidden: true},
    field("hc-path", "Health check path", path),
    field("hc-interval", "Interval", interval),
    field("hc-timeout", "Timeout", timeout));
  on.addEventListener("change", () => { fields.hidden = !on.checked; });
  return {
    el: h("fieldset", {}, h("legend", {}, "Health check"),
      h("p", {class: "option"}, on, " ", h("label", {for: "hc-on"}, "Check over HTTP (otherwise a TCP connect)")),
      fields),
    read: () => (on.checked ? {path: path.value.trim(), interval: interval.value.trim(), timeout: timeout.value.trim()} : null),
  };
}

// A form in the dialog whose submit runs `send()`: an exception shows as the form's error (the
// API's own text); `send` returning true closes it. Resolves to whether it did.
function formDialog(title, intro, fields, okText, send, okId, wide = false) {
  return new Promise((resolve) => {
    const error = h("p", {class: "error", role: "alert", id: "dialog-error"});
    const cancel = h("button", {type: "button", class: "secondary", id: "dialog-cancel"}, "Cancel");
    const form = h("form", {novalidate: true},
      h("h2", {id: "dialog-title"}, title), intro ? h("p", {}, intro) : null, fields, error,
      h("div", {class: "actions"}, h("button", {type: "submit", id: okId}, okText), cancel));
    const dlg = open(form);
    if (wide) dlg.classList.add("wide");
    let done = false;
    cancel.addEventListener("click", () => dlg.close());
    dlg.addEventListener("close", () => resolve(done), {once: true});
    form.addEventListener("submit", async (ev) => {
      ev.preventDefault();
      error.textContent = "";
      try {
        if (await send((message, input) => { error.textContent = message; if (input) input.focus(); })) {
          done = true;
          dlg.close();
        }
      } catch (e) {
        error.textContent = explain(e);
      }
    });
    const first = form.querySelector("input, textarea");
    if (first) first.focus();
  });
}

// The Update form: a new service version next to the old ones, at weight 0. `app` is the app
// object as last read (its generation guards the change); resolves to true once started.
export function updateDialog(app) {
  const name = text("new-service", "", {name: "service", required: true, pattern: NAME_RE.source.slice(1, -1)});
  const backends = h("textarea", {id: "new-backends", name: "backends", rows: 3, required: true, spellcheck: "false"});
  const hc = healthFields();
  const old = Object.keys(app.services).join(", ");
  return formDialog(`Update ${app.name}`,
    `Blue-green release: the new version runs next to ${old} with weight 0, so no client sees it until you set its weight.`,
    [field("new-service", "New service name", name, "Lower-case letters, digits and '-'; not the name of an existing service."),
      field("new-backends", "Backends", backends, "host:port, one per line (or separated by spaces or commas)."),
      hc.el],
    "OK", async (fail) => {
      const svc = name.value.trim();
      const list = parseBackends(backends.value);
      if (!NAME_RE.test(svc)) return fail("New service name: lower-case letters, digits and '-', starting with a letter or digit.", name);
      if (app.services[svc]) return fail(`New service name: ${app.name} already has a service ${svc}; the new version needs a new name.`, name);
      if (list.length === 0) return fail("Backends: at least one host:port.", backends);
      const body = {service: svc, backends: list};
      const check = hc.read();
      if (check) body.health_check = check;
      try {
        await api("POST", `/api/v1/apps/${app.name}/release`, {body, etag: etagOf(app)});
      } catch (e) {
        if (e.status !== 412) throw e;
        return fail(`${app.name} was changed meanwhile (${explain(e)}); close this form and look at its current state first.`);
      }
      return true;
    }, "update-ok");
}

// The ramp's settings as the API describes them (defaults included): read once.
let rampSchema = null;
async function rampSettings() {
  if (!rampSchema) {
    const {data} = await api("GET", "/api/v1/openapi.json");
    rampSchema = data.components.schemas.RampIn.properties;
  }
  return rampSchema;
}

// Start a guarded ramp of the open release, every setting filled in with the router's default.
export async function rampDialog(app) {
  const r = app.release;
  const s = await rampSettings();
  const d = (k) => s[k].default;
  const steps = text("ramp-steps", s.steps.example.join(", "));
  const interval = text("ramp-interval", duration(d("interval")));
  const errors = text("ramp-max-error-rate", String(Math.round(d("max_error_rate") * 10000) / 100), {inputmode: "decimal"});
  const ratio = text("ramp-max-latency-ratio", String(d("max_latency_ratio")), {inputmode: "decimal"});
  const quantile = text("ramp-quantile", `p${Math.round(d("quantile") * 1000) / 10}`);
  const floor = text("ramp-latency-floor", duration(d("latency_floor")));
  const minRequests = text("ramp-min-requests", String(d("min_requests")), {inputmode: "numeric"});
  const maxWaits = text("ramp-max-waits", String(d("max_waits")), {inputmode: "numeric"});
  const inputs = {steps, interval, max_error_rate: errors, max_latency_ratio: ratio, quantile,
    latency_floor: floor, min_requests: minRequests, max_waits: maxWaits};
  const old = r.old.join(", ");
  return formDialog(`Guarded ramp of ${r.new}`,
    `The router raises ${r.new}'s share step by step and judges each step against ${old} over the interval. Out of bounds, it rolls the release back at once; with too little traffic to judge, it waits, then pauses.`,
    [field("ramp-steps", "Steps (percent of the traffic to the new version)", steps, "Increasing, up to 100: 5, 25, 50, 100."),
      field("ramp-interval", "Interval", interval, "Each step is judged over this long: 30s, 1m, 5m."),
      h("fieldset", {}, h("legend", {}, "Bounds"), h("div", {class: "pairs"},
        field("ramp-max-error-rate", "Error rate over the old version's, at most (percentage points)", errors),
        field("ramp-max-latency-ratio", "Latency, at most this many times the old version's", ratio),
        field("ramp-quantile", "Latency quantile compared", quantile, "p99, p95, p50."),
        field("ramp-latency-floor", "Latency floor", floor, "Latencies at or under this are always within bounds."))),
      h("fieldset", {}, h("legend", {}, "Traffic needed to judge"), h("div", {class: "pairs"},
        field("ramp-min-requests", "Requests each version needs in an interval", minRequests),
        field("ramp-max-waits", "Intervals to wait for them before pausing", maxWaits)))],
    "Start ramp", async (fail) => {
      const list = steps.value.split(/[\s,%]+/).filter(Boolean).map(Number);
      if (!list.length || list.some((p) => !Number.isInteger(p))) return fail("Steps: whole percentages, like 5, 25, 50, 100.", steps);
      const q = Number(quantile.value.trim().replace(/^p/i, ""));
      // The router judges every value and says what is wrong, in its words.
      const body = {steps: list, interval: interval.value.trim(),
        max_error_rate: Number(errors.value) / 100, max_latency_ratio: Number(ratio.value),
        quantile: q >= 1 ? q / 100 : q, latency_floor: floor.value.trim(),
        min_requests: Number(minRequests.value), max_waits: Number(maxWaits.value)};
      try {
        await api("POST", `/api/v1/apps/${app.name}/release/ramp`, {body, etag: etagOf(app)});
      } catch (e) {
        const bad = inputs[e.field];
        return fail(e.status === 412 ? `${app.name} was changed meanwhile (${explain(e)}); close this form and look at its current state first.`
          : explain(e), bad);
      }
      return true;
    }, "ramp-ok", true);
}

// A preview link of the open release: whoever opens it sees the new version, whatever its weight.
export function previewDialog(app) {
  const r = app.release;
  const ttl = text("preview-ttl", "1h");
  const out = h("div", {id: "preview-result", role: "status"});
  return formDialog(`Preview of ${r.new}`,
    `A link that shows a browser ${r.new} (by a cookie it sets) while the release is open, whatever its weight; customers without it are not affected. Give it only to testers: it opens an unreleased version.`,
    [field("preview-ttl", "Valid for", ttl, "1h, 8h, 2d: at most 7 days."), out],
    "Create link", async () => {
      const {data} = await api("POST", `/api/v1/apps/${app.name}/release/preview`, {body: {ttl: ttl.value.trim()}});
      out.replaceChildren(
        h("p", {}, `Valid until `, timeEl(data.expires_at, "preview-expires"), ". Open in a browser:"),
        h("ul", {class: "plain links"}, data.links.map((l) => h("li", {}, h("a", {href: l, target: "_blank", rel: "noopener noreferrer", class: "preview-link"}, l)))),
        h("p", {class: "muted"}, "Or send the cookie ", h("code", {}, `${data.cookie.name}=${data.cookie.value}`),
          data.header ? [" or the header ", h("code", {}, `${data.header.name}: ${data.header.value}`)] : null, "."));
      document.getElementById("dialog-cancel").textContent = "Close";
      return false;  // stays open: the link is what it was for
    }, "preview-ok");
}

// A new application with one service: routes, backends, weight, stickiness and its check.
export function createAppDialog(existing) {
  const name = text("app-name", "");
  const routes = h("textarea", {id: "app-routes", rows: 2, spellcheck: "false"});
  const service = text("app-service", "web");
  const backends = h("textarea", {id: "app-backends", rows: 2, spellcheck: "false"});
  const sticky = h("input", {type: "checkbox", id: "app-sticky", checked: true});
  const hc = healthFields();
  let created = null;
  const done = formDialog("New application", "Its service takes the requests of its routes at once.",
    [field("app-name", "Application name", name, "Lower-case letters, digits and '-'."),
      field("app-routes", "Routes", routes, "host or host/path, one per line: shop.example.com, example.com/shop."),
      field("app-service", "Service name", service, "The first version's name; the next one comes with Update."),
      field("app-backends", "Backends", backends, "host:port, one per line (or separated by spaces or commas)."),
      h("p", {class: "option"}, sticky, " ", h("label", {for: "app-sticky"}, "Session stickiness (each client keeps its version by cookie)")),
      hc.el],
    "Create", async (fail) => {
      const app = name.value.trim();
      if (!NAME_RE.test(app)) return fail("Application name: lower-case letters, digits and '-', starting with a letter or digit.", name);
      if (existing.includes(app)) return fail(`Application name: ${app} exists already.`, name);
      const body = {routes: parseBackends(routes.value), session_sticky: sticky.checked,
        services: {[service.value.trim()]: {weight: 100, backends: parseBackends(backends.value), health_check: hc.read()}}};
      try {
        await api("PUT", `/api/v1/apps/${app}`, {body, headers: {"If-None-Match": "*"}});
      } catch (e) {
        if (e.status !== 412) throw e;
        return fail(`Application name: ${app} exists already.`, name);
      }
      created = app;
      return true;
    }, "create-ok", true);
  return done.then((ok) => (ok ? created : null));
}
