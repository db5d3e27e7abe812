// An application's page: how its last release ended, the release panel (with the guarded
// ramp's live numbers), its services side by side (weight, share, backends and their health),
// Routes with the stickiness switch and Set service weight, live traffic and the history of
// changes. Every change names the generation it was made on (If-Match): a page that is behind
// is told so and shown the current state, never obeyed.

import { api, explain } from "./api.js";
import { confirmDialog, updateDialog } from "./dialogs.js";
import { backendHealth, duration, etagOf, every, flash, h, healthyCount, num, pct, replaceKeepFocus, shares, statusText, store, timeEl } from "./dom.js";
import { lastOutcome, readHistory, renderHistory } from "./history.js";
import { oldWeights, rampButtons, releaseButtons, startButtons } from "./release.js";
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
    this.staleAt = null;  // the generation a "not applied" message was shown at
    this.alert = h("p", {class: "error", role: "alert", id: "app-error"});
    this.status = h("p", {class: "notice", role: "status", id: "app-status"});
    this.head = h("div", {class: "app-head"});
    this.outcomeBox = h("div", {id: "outcome"});
    this.releaseBox = h("section", {id: "release", class: "panel", "aria-labelledby": "release-title"});
    this.rampLive = h("div", {id: "ramp-live", "aria-live": "off"});
    this.servicesBox = h("div", {id: "services", class: "services"});
    this.routesBox = h("div", {id: "routes"});
    this.weightsBox = h("div", {id: "weights"});
    this.historyBox = h("div", {id: "history"});
    this.traffic = new Traffic(name);
    main.replaceChildren(
      h("nav", {"aria-label": "Breadcrumb", class: "crumbs"}, h("a", {href: "#/"}, "Applications"), " / ", name),
      this.head, this.alert, this.status, this.outcomeBox, this.releaseBox,
      h("section", {"aria-labelledby": "services-title"}, h("h2", {id: "services-title"}, "Services"), this.servicesBox),
      h("section", {"aria-labelledby": "routes-title"}, h("h2", {id: "routes-title"}, "Routes"), this.routesBox, this.weightsBox),
      h("section", {"aria-labelledby": "traffic-title"}, h("h2", {id: "traffic-title"}, "Live traffic"), this.traffic.el),
      h("section", {"aria-labelledby": "history-title"}, h("h2", {id: "history-title"}, "History of changes"), this.historyBox));
    document.title = `${name} – Router console`;
    this.appPoll = every(1500, () => this.refresh());
    this.trafficPoll = every(1000, () => this.traffic.poll());
    this.rampPoll = every(1000, () => this.rampNumbers());
  }

  stop() {
    this.appPoll.stop();
    this.trafficPoll.stop();
    this.rampPoll.stop();
    this.traffic.stop();
  }

  // `cause`: the API's refusal; a 412 means this page was behind: it is brought up to date.
  report(error, done, cause) {
    if (cause && cause.status === 412) {
      this.stale(cause);
      return;
    }
    this.staleAt = null;
    this.alert.textContent = error || "";
    this.status.textContent = done || "";
  }

  // The change was refused because someone changed the app since this page read it: the page
  // reads it again and says so. The message lasts while the page shows that state: the next
  // change of the app (or the operator's next action) takes it away.
  async stale(e) {
    await this.refresh();
    const now = this.app ? this.app.generation : null;
    this.report(`Not applied: ${this.name} was changed by someone else since this page read it (${explain(e)}). The page now shows generation ${now}; make your change again if it is still needed.`);
    this.staleAt = now;
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
    if (this.staleAt !== null && app.generation !== this.staleAt) this.report("", "");
    const part = (key, box, render) => {
      const k = JSON.stringify(key);
      if (this.keys[box.id] === k) return;
      this.keys[box.id] = k;
      replaceKeepFocus(box, ...render());
    };
    part([app.routes, app.generation], this.head, () => [
      h("h1", {}, app.name),
      h("p", {class: "muted"}, `Routes ${app.routes.join(", ")} · generation ${app.generation} `,
        h("button", {type: "button", class: "secondary small danger-text", id: "delete-app", onclick: () => this.deleteApp()}, "Delete application"))]);
    part([app.release, app.services], this.releaseBox, () => this.releasePanel());
    part([app.services, app.release], this.servicesBox, () => Object.keys(app.services).map((n) => this.card(n)));
    part([app.routes, app.session_sticky, app.generation], this.routesBox, () => this.routesPart());
    if (!this.form || !this.form.dirty) {
      part([app.generation, Object.entries(app.services).map(([n, s]) => [n, s.weight, s.healthy_backends])],
        this.weightsBox, () => this.weightsForm());
    } else {
      this.staleNote();
    }
    if (!before || before.generation !== app.generation) this.loadHistory();
  }

  async loadHistory() {
    const result = await readHistory(this.name);
    renderHistory(this.historyBox, result);
    this.outcome(lastOutcome(result.entries, this.name));
  }

  // How the last release ended, with why, until the operator dismisses it (remembered by this
  // browser): a rollback's evidence does not vanish with the version.
  outcome(o) {
    const key = `dismissed.${this.name}`;
    if (!o || store.get(key, 0) >= o.generation) {
      replaceKeepFocus(this.outcomeBox);
      return;
    }
    const bad = o.outcome === "rolled back";
    const by = o.operation === "ramp_rollback" ? "by the guarded ramp"
      : o.operation === "apply" ? `by routerctl apply from ${o.client}` : `by ${o.client}`;
    replaceKeepFocus(this.outcomeBox, h("section", {class: `outcome ${bad ? "rolled-back" : "confirmed"}`, id: "release-outcome",
      "aria-labelledby": "outcome-title"},
    h("h2", {id: "outcome-title"}, `Last release: ${o.service} ${o.outcome}`),
    h("p", {}, `Release of ${o.service} ${o.outcome} ${by}, `, timeEl(o.time), ` (generation ${o.generation})`,
      o.detail ? `: ${o.detail.replace(/^\((.*)\)$/, "$1")}` : "", "."),
    o.reason ? h("p", {class: "why", id: "outcome-reason"}, `Why: ${o.reason}`) : null,
    h("button", {type: "button", class: "secondary", id: "outcome-dismiss", onclick: () => {
      store.set(key, o.generation);
      this.outcomeBox.replaceChildren();
      document.getElementById("main").focus({preventScroll: true});
    }}, "Dismiss")));
  }

  // The ramp's step as judged so far, every second while a ramp runs (GET .../release/ramp).
  async rampNumbers() {
    const r = this.app && this.app.release;
    if (!r || !r.ramp) {
      this.rampLive.replaceChildren();
      return;
    }
    let p;
    try {
      p = (await api("GET", `/api/v1/apps/${this.name}/release/ramp`)).data;
    } catch (e) {
      if (e.status !== 404 && e.status !== 401) this.rampLive.replaceChildren(h("p", {class: "error"}, `Could not read the ramp: ${explain(e)}`));
      return;
    }
    this.rampLive.replaceChildren(...rampLiveView(p));
  }

  async deleteApp() {
    const app = this.app;
    this.report("", "");
    const choice = await confirmDialog({
      title: `Delete ${app.name}`,
      text: `Its routes (${app.routes.join(", ")}) stop being served: requests for them get 404. Its services (${Object.keys(app.services).join(", ")})${app.release ? " and its open release" : ""} go with it. This cannot be undone.`,
      typed: app.name,
      ok: "Delete application",
      danger: true,
    });
    if (!choice.ok) return;
    try {
      await api("DELETE", `/api/v1/apps/${app.name}`, {etag: etagOf(app)});
    } catch (e) {
      this.report(`Not deleted: ${explain(e)}`, null, e);
      return;
    }
    flash(`Application ${app.name} deleted.`);
    location.hash = "#/";
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
    const report = (err, done, cause) => this.report(err, done, cause);
    return [h("h2", {id: "release-title"}, h("span", {class: `status ${r.status}`, id: "release-status"}, statusText(r))),
      h("p", {}, `${r.old.join(", ")} → ${r.new}, started `, timeEl(r.started_at), ". Weights before the release: ",
        oldWeights(r), "."),
      h("div", {class: "readiness"},
        h("label", {for: "readiness"}, ready ? `${r.new} is ready: every backend passed its check.`
          : `Readiness of ${r.new}: ${healthy} of ${total} backends healthy; waiting for every one to pass its check.`),
        h("progress", {id: "readiness", max: total || 1, value: healthy})),
      r.ramp ? rampView(r, rampButtons(app, report, () => this.appPoll.now()), this.rampLive)
        : h("p", {class: "muted"}, ready
        ? "Move traffic with Set service weight below, or let a guarded ramp move it; verify, then confirm (the old version is deleted) or roll back (the new version is deleted)."
        : "Confirming waits for readiness; rolling back is possible at any time. A guarded ramp started now takes its first step once the release is ready."),
      h("div", {class: "actions"}, releaseButtons(app, report, (a) => this.show(a), ""),
        startButtons(app, report, () => { this.appPoll.now(); this.rampPoll.now(); }))];
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
      this.keys.routes = null;  // draw the switch as the router has it
      if (e.status === 412) {
        this.report(null, null, e);
      } else {
        this.report(`Stickiness not changed: ${explain(e)}`);
        await this.refresh();
      }
    }
  }

  weightsForm() {
    const base = this.app;
    const names = Object.keys(base.services);
    // A running ramp sets the release's weights itself; the router refuses moves by hand.
    const ramp = base.release && base.release.ramp;
    const locked = ramp && ramp.status === "running"
      ? `The guarded ramp of ${base.release.new} sets these weights while it runs: pause or abort it (above) to set them by hand.`
      : null;
    const inputs = {};
    const outputs = {};
    const rows = names.map((n) => {
      const w = base.services[n].weight;
      const range = h("input", {type: "range", min: 0, max: 100, step: 1, value: w, id: `wr-${n}`,
        "aria-label": `${n} weight slider`, tabindex: -1, disabled: !!locked});
      const number = h("input", {type: "number", min: 0, max: 100, step: 1, value: w, id: `w-${n}`,
        name: n, inputmode: "numeric", disabled: !!locked, "aria-describedby": locked ? "weights-locked" : null});
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
      locked ? h("p", {class: "locked", id: "weights-locked"}, locked) : null,
      rows, msg,
      h("div", {class: "actions"},
        h("button", {type: "submit", id: "set-weights", disabled: !!locked}, "Set service weight"),
        h("button", {type: "button", class: "secondary", id: "discard-weights", disabled: !!locked, onclick: () => this.discard()}, "Discard changes")));
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
        this.report(null, null, e);
        return;
      }
      const bad = e.field && inputs[e.field];
      if (bad) { bad.setAttribute("aria-invalid", "true"); bad.focus(); }
      this.report(`Weights not set: ${explain(e)}`);
    }
  }
}

// The guarded ramp of a release (docs/release-ramp.md): where it stands, and why it moved last;
// `live`: the element the step's numbers so far are drawn in (rampLiveView, every second).
function rampView(r, buttons, live) {
  const ramp = r.ramp;
  const steps = ramp.steps.map((p) => `${p}%`).join(", ");
  const every = ramp.interval >= 60 && ramp.interval % 60 === 0 ? `${ramp.interval / 60} min` : `${ramp.interval} s`;
  const where = ramp.step ? `step ${ramp.step} of ${ramp.steps.length}: ${ramp.share}% of the traffic to ${r.new}` : "waiting for its first step";
  return h("div", {class: "ramp", id: "ramp"},
    h("label", {for: "ramp-progress"}, `Guarded ramp ${ramp.status}, ${where} (steps ${steps}, each judged over ${every}).`),
    h("progress", {id: "ramp-progress", max: ramp.steps.length, value: ramp.step}),
    h("p", {class: "muted", id: "ramp-bounds"}, `Bounds: errors at most ${num(ramp.max_error_rate * 100, 2).replace(/\.?0+$/, "")} points over the old version's; p${Math.round(ramp.quantile * 1000) / 10} latency at most ${ramp.max_latency_ratio}× the old version's (above ${duration(ramp.latency_floor)}); at least ${ramp.min_requests} requests a version.`),
    ramp.reason ? h("p", {class: "muted", id: "ramp-reason"}, `Last: ${ramp.reason}`) : null,
    live,
    h("p", {class: "muted"}, "Abort gives the old versions their weights back; a step out of bounds rolls the release back."),
    buttons);
}

// What the step being judged measured so far, new version beside old (what routerctl release
// ramp --wait prints), and the last judgement.
function rampLiveView(p) {
  const ramp = p.ramp;
  const q = `p${Math.round(ramp.quantile * 1000) / 10}`;
  const w = p.window;
  const row = (version, name, m) => h("tr", {dataset: {version}},
    h("th", {scope: "row"}, name, h("span", {class: `tag ${version}`}, version === "new" ? "new" : "old")),
    h("td", {"data-label": "Requests"}, String(m.requests)),
    h("td", {"data-label": "Errors"}, String(m.errors)),
    h("td", {"data-label": "Error rate"}, pct(100 * m.error_rate)),
    h("td", {"data-label": `${q} latency`}, m.latency === null ? "–" : `${num(m.latency * 1000, 2)} ms`));
  const out = [];
  if (w) {
    out.push(h("table", {class: "stack ramp-window", id: "ramp-window"},
      h("caption", {}, `This step so far: ${Math.floor(w.seconds)} of ${ramp.interval} s`),
      h("thead", {}, h("tr", {}, ["Version", "Requests", "Errors", "Error rate", `${q} latency`].map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, row("new", p.new, w.new), row("old", p.old.join(", "), w.old))));
  } else if (!p.driving && ramp.status === "running") {
    out.push(h("p", {class: "muted"}, "Another replica drives this ramp: the numbers are on its console."));
  }
  if (p.last) {
    out.push(h("p", {class: "muted", id: "ramp-last"}, `Last judged: ${p.last.decision || "—"}${p.last.reason ? `: ${p.last.reason}` : ""}`));
  }
  return out;
}
