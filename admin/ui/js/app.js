// An application's page: the release panel, its services side by side (weight, share,
// backends and their health), Routes with the stickiness switch and Set service weight, live
// traffic and the history of changes. Every change names the generation it was made on
// (If-Match): a page that is behind is told so and shown the current state, never obeyed.

import { api, explain } from "./api.js";
import { updateDialog } from "./dialogs.js";
import { backendHealth, etagOf, every, h, healthyCount, pct, replaceKeepFocus, shares, statusText } from "./dom.js";
import { loadHistory } from "./history.js";
import { oldWeights, rampButtons, releaseButtons } from "./release.js";
import { Traffic } from "./traffic.js";

export function renderApp(main, name) {
  const page = new AppPage(main, name);
  return {stop: () => page.stop()};
}

class AppPage {
  constructor(main, name) {
    this.name = name;
    this.app = null;
    this.keys = {};
    this.form = null;  // {base: app the form was filled from, dirty, inputs: {svc: number input}}
    this.alert = h("p", {class: "error", role: "alert", id: "app-error"});
    this.status = h("p", {class: "notice", role: "status", id: "app-status"});
    this.head = h("div", {class: "app-head"});
    this.releaseBox = h("section", {id: "release", class: "panel", "aria-labelledby": "release-title"});
    this.servicesBox = h("div", {id: "services", class: "services"});
    this.routesBox = h("div", {id: "routes"});
    this.weightsBox = h("div", {id: "weights"});
    this.historyBox = h("div", {id: "history"});
    this.traffic = new Traffic(name);
    main.replaceChildren(
      h("nav", {"aria-label": "Breadcrumb", class: "crumbs"}, h("a", {href: "#/"}, "Applications"), " / ", name),
      this.head, this.alert, this.status, this.releaseBox,
      h("section", {"aria-labelledby": "services-title"}, h("h2", {id: "services-title"}, "Services"), this.servicesBox),
      h("section", {"aria-labelledby": "routes-title"}, h("h2", {id: "routes-title"}, "Routes"), this.routesBox, this.weightsBox),
      h("section", {"aria-labelledby": "traffic-title"}, h("h2", {id: "traffic-title"}, "Live traffic"), this.traffic.el),
      h("section", {"aria-labelledby": "history-title"}, h("h2", {id: "history-title"}, "History of changes"), this.historyBox));
    document.title = `${name} – Router console`;
    this.appPoll = every(1500, () => this.refresh());
    this.trafficPoll = every(1000, () => this.traffic.poll());
  }

  stop() {
    this.appPoll.stop();
    this.trafficPoll.stop();
    this.traffic.stop();
  }

  report(error, done) {
    this.alert.textContent = error || "";
    this.status.textContent = done || "";
  }

  async refresh() {
    try {
      this.show((await api("GET", `/api/v1/apps/${this.name}`)).data);
    } catch (e) {
      if (e.status === 404) this.head.replaceChildren(h("h1", {}, this.name), h("p", {class: "error"}, explain(e)));
      else if (e.status !== 401) this.alert.textContent = `Could not read ${this.name}: ${explain(e)}`;
    }
  }

  // Render what changed since the last reading; each part keeps the keyboard focus it had.
  show(app) {
    const before = this.app;
    this.app = app;
    const part = (key, box, render) => {
      const k = JSON.stringify(key);
      if (this.keys[box.id] === k) return;
      this.keys[box.id] = k;
      replaceKeepFocus(box, ...render());
    };
    part([app.routes, app.generation], this.head, () => [
      h("h1", {}, app.name),
      h("p", {class: "muted"}, `Routes ${app.routes.join(", ")} · generation ${app.generation}`)]);
    part([app.release, app.services], this.releaseBox, () => this.releasePanel());
    part([app.services, app.release], this.servicesBox, () => Object.keys(app.services).map((n) => this.card(n)));
    part([app.routes, app.session_sticky, app.generation], this.routesBox, () => this.routesPart());
    if (!this.form || !this.form.dirty) {
      part([app.generation, Object.entries(app.services).map(([n, s]) => [n, s.weight, s.healthy_backends])],
        this.weightsBox, () => this.weightsForm());
    } else {
      this.staleNote();
    }
    if (!before || before.generation !== app.generation) loadHistory(this.historyBox, this.name);
  }

  releasePanel() {
    const app = this.app;
    const r = app.release;
    if (!r) {
      return [h("h2", {id: "release-title"}, "Release"),
        h("p", {}, "No release open. Update starts a blue-green release: the new version runs next to the current one at weight 0."),
        h("button", {type: "button", id: "update", onclick: async () => {
          this.report("", "");
          if (await updateDialog(this.app)) { this.report(null, "Release started."); this.appPoll.now(); }
        }}, "Update")];
    }
    const svc = app.services[r.new];
    const total = svc ? svc.backends.length : 0;
    const ready = r.status === "awaiting_confirmation";
    const healthy = ready ? total : svc ? healthyCount(svc) : 0;
    return [h("h2", {id: "release-title"}, h("span", {class: `status ${r.status}`, id: "release-status"}, statusText(r))),
      h("p", {}, `${r.old.join(", ")} → ${r.new}, started ${new Date(r.started_at).toLocaleString()}. Weights before the release: `,
        oldWeights(r), "."),
      h("div", {class: "readiness"},
        h("label", {for: "readiness"}, ready ? `${r.new} is ready: every backend passed its check.`
          : `Readiness of ${r.new}: ${healthy} of ${total} backends healthy; waiting for every one to pass its check.`),
        h("progress", {id: "readiness", max: total || 1, value: healthy})),
      r.ramp ? rampView(r, rampButtons(app, (err, done) => this.report(err, done), () => this.appPoll.now()))
        : h("p", {class: "muted"}, ready
        ? "Move traffic with Set service weight below, verify, then confirm (the old version is deleted) or roll back (the new version is deleted)."
        : "Confirming waits for readiness; rolling back is possible at any time."),
      releaseButtons(app, (err, done) => this.report(err, done), (a) => this.show(a), "")];
  }

  card(n) {
    const app = this.app;
    const s = app.services[n];
    const share = shares(app)[n];
    const role = app.release ? (app.release.new === n ? "new" : app.release.old.includes(n) ? "old" : null) : null;
    const hc = s.health_check
      ? `HTTP GET ${s.health_check.path || "/"} every ${s.health_check.interval}s`
      : "TCP connect";
    return h("article", {class: "svc", dataset: {service: n}, "aria-labelledby": `svc-${n}`},
      h("h3", {id: `svc-${n}`}, n, role ? h("span", {class: `tag ${role}`}, role === "new" ? "new version" : "old version") : null),
      h("dl", {},
        h("dt", {}, "Weight"), h("dd", {class: "weight"}, String(s.weight)),
        h("dt", {}, "Share of new requests"), h("dd", {class: "share"},
          pct(share), s.weight === 0 && app.session_sticky ? " (pinned clients only)" : ""),
        h("dt", {}, "Health check"), h("dd", {}, hc)),
      h("h4", {}, `Backends (${healthyCount(s)}/${s.backends.length} healthy)`),
      h("ul", {class: "backends"}, s.backends.map((b) => {
        const hl = backendHealth(s, b);
        return h("li", {dataset: {backend: b, health: hl.state}},
          h("span", {class: `badge ${hl.state}`}, hl.state), " ", h("code", {}, b),
          hl.reason ? h("small", {class: "reason"}, ` ${hl.reason}`) : null);
      })));
  }

  routesPart() {
    const app = this.app;
    const box = h("input", {type: "checkbox", role: "switch", id: "sticky", checked: app.session_sticky,
      "aria-describedby": "sticky-hint"});
    box.addEventListener("change", () => this.setSticky(box.checked));
    return [h("ul", {class: "plain routes"}, app.routes.map((r) => h("li", {}, h("code", {}, r)))),
      h("p", {class: "option"}, box, " ", h("label", {for: "sticky"}, "Session stickiness")),
      h("small", {id: "sticky-hint", class: "muted"},
        "On: each client keeps its version by cookie, also while that version's weight is 0 (the drain).")];
  }

  async setSticky(on) {
    this.report("", "");
    try {
      const {data} = await api("PATCH", `/api/v1/apps/${this.name}`, {body: {session_sticky: on}, etag: etagOf(this.app)});
      this.report(null, `Session stickiness ${on ? "on" : "off"}.`);
      this.show(data);
    } catch (e) {
      this.report(e.status === 412 ? this.staleText(e) : `Stickiness not changed: ${explain(e)}`);
      this.keys.routes = null;  // draw the switch as the router has it
      await this.refresh();
    }
  }

  staleText(e) {
    return `Not applied: ${this.name} was changed by someone else since this page read it (${explain(e)}). The current state is shown; make your change again if it is still needed.`;
  }

  weightsForm() {
    const base = this.app;
    const names = Object.keys(base.services);
    const inputs = {};
    const outputs = {};
    const rows = names.map((n) => {
      const w = base.services[n].weight;
      const range = h("input", {type: "range", min: 0, max: 100, step: 1, value: w, id: `wr-${n}`,
        "aria-label": `${n} weight slider`, tabindex: -1});
      const number = h("input", {type: "number", min: 0, max: 100, step: 1, value: w, id: `w-${n}`,
        name: n, inputmode: "numeric"});
      range.addEventListener("input", () => { number.value = range.value; this.edited(); });
      number.addEventListener("input", () => { range.value = number.value; this.edited(); });
      inputs[n] = number;
      outputs[n] = h("output", {id: `ws-${n}`, for: `w-${n}`});
      return h("div", {class: "weight-row", dataset: {service: n}},
        h("label", {for: `w-${n}`}, `${n} weight`), range, number, outputs[n]);
    });
    const msg = h("p", {class: "notice", role: "status", id: "weights-stale"});
    const form = h("form", {id: "weights-form", novalidate: true, "aria-labelledby": "weights-title"},
      h("h3", {id: "weights-title"}, "Set service weight"),
      h("p", {class: "muted"}, "Weights are relative (100 and 100 split 50/50). Every weight below changes in one step, or none does."),
      rows, msg,
      h("div", {class: "actions"},
        h("button", {type: "submit", id: "set-weights"}, "Set service weight"),
        h("button", {type: "button", class: "secondary", id: "discard-weights", onclick: () => this.discard()}, "Discard changes")));
    form.addEventListener("submit", (ev) => { ev.preventDefault(); this.submitWeights(); });
    this.form = {base, dirty: false, inputs, outputs, msg};
    this.preview();
    return [form];
  }

  edited() {
    this.form.dirty = true;
    this.preview();
    this.staleNote();
  }

  // The share each service would get with the weights as typed.
  preview() {
    const {base, inputs, outputs} = this.form;
    const trial = {services: {}};
    for (const [n, input] of Object.entries(inputs)) {
      const w = Number(input.value);
      trial.services[n] = {...base.services[n], weight: Number.isInteger(w) && w >= 0 ? w : 0};
    }
    const s = shares(trial);
    for (const [n, out] of Object.entries(outputs)) out.textContent = `${pct(s[n])} of new requests`;
  }

  staleNote() {
    const {base, msg} = this.form;
    msg.textContent = this.app && this.app.generation !== base.generation
      ? `${this.name} has changed since you began editing (generation ${base.generation} → ${this.app.generation}). Setting these weights will be refused; Discard changes shows the current weights.`
      : "";
  }

  discard() {
    this.form.dirty = false;
    this.keys.weights = null;
    this.show(this.app);
  }

  async submitWeights() {
    const {base, inputs} = this.form;
    const body = {};
    for (const [n, input] of Object.entries(inputs)) {
      const raw = input.value.trim();
      // The router judges the value (integers 0..100) and says what is wrong, in its words.
      body[n] = raw !== "" && !Number.isNaN(Number(raw)) ? Number(raw) : raw;
      input.removeAttribute("aria-invalid");
    }
    this.report("", "");
    try {
      const {data} = await api("PUT", `/api/v1/apps/${this.name}/weights`, {body, etag: etagOf(base)});
      const moved = Object.keys(body).filter((n) => base.services[n].weight !== data.services[n].weight)
        .map((n) => `${n} ${base.services[n].weight} → ${data.services[n].weight}`);
      this.form.dirty = false;
      this.show(data);
      this.report(null, moved.length ? `Weights set: ${moved.join(", ")} (generation ${data.generation}).` : "Weights unchanged.");
    } catch (e) {
      if (e.status === 412) {
        this.form.dirty = false;
        this.keys.weights = null;
        await this.refresh();
        this.report(this.staleText(e));
        return;
      }
      const bad = e.field && inputs[e.field];
      if (bad) { bad.setAttribute("aria-invalid", "true"); bad.focus(); }
      this.report(`Weights not set: ${explain(e)}`);
    }
  }
}

// The guarded ramp of a release (docs/release-ramp.md): where it stands, and why it moved last.
function rampView(r, buttons) {
  const ramp = r.ramp;
  const steps = ramp.steps.map((p) => `${p}%`).join(", ");
  const every = ramp.interval >= 60 && ramp.interval % 60 === 0 ? `${ramp.interval / 60} min` : `${ramp.interval} s`;
  const where = ramp.step ? `step ${ramp.step} of ${ramp.steps.length}: ${ramp.share}% of the traffic to ${r.new}` : "waiting for its first step";
  return h("div", {class: "ramp", id: "ramp"},
    h("label", {for: "ramp-progress"}, `Guarded ramp ${ramp.status}, ${where} (steps ${steps}, each judged over ${every}).`),
    h("progress", {id: "ramp-progress", max: ramp.steps.length, value: ramp.step}),
    ramp.reason ? h("p", {class: "muted", id: "ramp-reason"}, `Last: ${ramp.reason}`) : null,
    h("p", {class: "muted"}, "Abort gives the old versions their weights back; a step out of bounds rolls the release back."),
    buttons);
}
