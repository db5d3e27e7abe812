// Live traffic from the router's own counters: GET /api/v1/apps/{app}/stats every second,
// turned into rates between readings and drawn over the last minutes. Requests still pinned by
// cookie to a version whose weight is 0 are drawn apart (dashed): that is what a drain waits for.
// A version deleted within the window (rolled back, or confirmed away) keeps its past on the
// chart, greyed and named: the evidence of why it went.

import { api } from "./api.js";
import { h, num, pct, store } from "./dom.js";

export const WINDOW_S = 300;
const PALETTE = ["#2563eb", "#16a34a", "#d97706", "#9333ea", "#dc2626", "#0891b2", "#4d7c0f", "#be185d"];
export const REMOVED = "#9ca3af";

// One colour per version, kept while it lives: green-v2 stays orange when blue is deleted, and
// on the next visit (the browser keeps the choice per app). A new version takes the first colour
// no version drawn with it has.
export class Colours {
  constructor(app) {
    this.key = `colours.${app}`;
    this.map = store.get(this.key, {});
  }

  assign(names) {
    const taken = new Set();
    const out = {};
    for (const n of names) {
      let i = this.map[n];
      if (!(Number.isInteger(i) && i >= 0 && i < PALETTE.length) || taken.has(i)) {
        i = PALETTE.findIndex((_, k) => !taken.has(k) && !names.some((o) => o !== n && this.map[o] === k));
        if (i < 0) i = PALETTE.findIndex((_, k) => !taken.has(k));
        if (i < 0) i = names.indexOf(n) % PALETTE.length;
      }
      taken.add(i);
      out[n] = PALETTE[i];
      this.map[n] = i;
    }
    // The versions of today and a few before: the map does not grow for ever.
    const keep = Object.keys(this.map).filter((n) => !names.includes(n)).slice(-16);
    this.map = Object.fromEntries([...names, ...keep].map((n) => [n, this.map[n]]));
    store.set(this.key, this.map);
    return out;
  }
}

const NOTHING = {requests: 0, errors: 0, sticky: 0, duration: {count: 0, sum: 0}};

// Rates between two readings of the counters. A counter that went down was reset (a worker
// replaced, a service deleted and made again): that interval counts as nothing. A service
// deleted since the first reading (a rollback can take a fraction of a second) counts to its
// last numbers, which the router keeps for a few minutes; one that came and went between the
// two readings counts from nothing.
export function rates(prev, cur) {
  const dt = cur.time - prev.time;
  const out = {};
  const gone = Object.entries(cur.removed || {}).filter(([name]) => !(name in cur.services));
  for (const [name, c] of [...Object.entries(cur.services), ...gone]) {
    const p = prev.services[name]
      || (name in cur.services || name in (prev.removed || {}) ? null : NOTHING);
    if (!p || dt <= 0) continue;
    const d = (k) => Math.max(0, c[k] - p[k]);
    const requests = d("requests");
    const dcount = Math.max(0, c.duration.count - p.duration.count);
    const dsum = Math.max(0, c.duration.sum - p.duration.sum);
    out[name] = {
      requests, errors: d("errors"), sticky: d("sticky"), dt,
      rps: requests / dt, eps: d("errors") / dt, pinned: d("sticky") / dt,
      weight: c.weight, inflight: c.inflight,
      mean: dcount > 0 ? dsum / dcount : null,
    };
  }
  return out;
}

// 21:27:05, in UTC.
function hms(seconds) {
  return new Date(seconds * 1000).toISOString().slice(11, 19);
}

export class Traffic {
  constructor(appName) {
    this.app = appName;
    this.samples = [];   // readings of the counters, oldest first
    this.points = [];    // {t, rates} between consecutive readings
    this.names = [];
    this.zero = [];
    this.removed = [];
    this.colours = new Colours(appName);
    this.colour = {};  // live versions' colours
    this.stroke = {};  // every drawn version's: grey for the removed ones
    this.plots = null;
    this.chartBox = h("div", {class: "chart", id: "traffic-chart", role: "img",
      "aria-label": "Requests per second per service over the last 5 minutes; the same numbers are in the table below"});
    this.errBox = h("div", {class: "chart", id: "error-chart", role: "img",
      "aria-label": "Error rate per service over the last 5 minutes; the same numbers are in the table below"});
    this.drain = h("p", {class: "drain", id: "drain-note", role: "status"});
    this.table = h("div", {class: "readout", id: "traffic-readout"});
    this.el = h("div", {class: "traffic"},
      h("h3", {class: "chart-title"}, "Requests per second"), this.chartBox,
      h("h3", {class: "chart-title"}, "Error rate (5xx)"), this.errBox,
      this.drain, this.table);
    this.resize = new ResizeObserver(() => this.fit());
    this.resize.observe(this.el);
  }

  async poll() {
    const {data} = await api("GET", `/api/v1/apps/${this.app}/stats`);
    this.add(data);
    this.draw();
  }

  add(sample) {
    const prev = this.samples[this.samples.length - 1];
    this.samples.push(sample);
    if (this.samples.length > 10) this.samples.shift();
    if (prev) this.points.push({t: sample.time, rates: rates(prev, sample)});
    while (this.points.length && this.points[0].t < sample.time - WINDOW_S) this.points.shift();
  }

  // Rates over the last few seconds, for the table: steadier than one interval.
  recent() {
    const n = this.samples.length;
    if (n < 2) return {};
    return rates(this.samples[Math.max(0, n - 4)], this.samples[n - 1]);
  }

  draw() {
    const latest = this.samples[this.samples.length - 1];
    if (!latest) return;
    const current = Object.keys(latest.services);
    // Versions the window still has numbers of that the router no longer routes to.
    const removed = [];
    for (const p of this.points) {
      for (const n of Object.keys(p.rates)) if (!current.includes(n) && !removed.includes(n)) removed.push(n);
    }
    const names = [...current, ...removed];
    // A pinned series for each service that was at weight 0 within the window.
    const zero = current.filter((n) => this.points.some((p) => p.rates[n] && p.rates[n].weight === 0));
    if (!this.plots || names.join() !== this.names.join() || zero.join() !== this.zero.join()
        || removed.join() !== this.removed.join()) this.build(names, zero, removed);
    const xs = this.points.map((p) => p.t);
    const val = (name, f) => this.points.map((p) => (p.rates[name] ? f(p.rates[name]) : null));
    const reqData = [xs,
      ...names.map((n) => val(n, (r) => (r.weight > 0 ? r.rps : r.rps - r.pinned))),
      ...zero.map((n) => val(n, (r) => (r.weight === 0 ? r.pinned : null)))];
    const errData = [xs, ...names.map((n) => val(n, (r) => (r.requests > 0 ? (100 * r.errors) / r.requests : 0)))];
    if (this.plots) {
      this.plots.req.setData(reqData);
      this.plots.err.setData(errData);
    }
    // What is drawn, for anyone reading the page's state (the browser tests do).
    Object.assign(this.chartBox, {chartData: reqData, chartNames: names, chartPinned: zero,
      chartRemoved: removed, chartColours: this.stroke});
    Object.assign(this.errBox, {chartData: errData, chartNames: names});
    this.renderTable(current, this.recent());
  }

  build(names, zero, removed) {
    this.names = names;
    this.zero = zero;
    this.removed = removed;
    const live = names.filter((n) => !removed.includes(n));
    this.colour = this.colours.assign(live);
    this.stroke = Object.fromEntries(names.map((n) => [n, removed.includes(n) ? REMOVED : this.colour[n]]));
    if (this.plots) { this.plots.req.destroy(); this.plots.err.destroy(); this.plots = null; }
    if (typeof uPlot === "undefined") return;  // the chart library did not load: the table stays
    const width = Math.max(280, this.el.clientWidth);
    const line = (n) => (removed.includes(n)
      ? {label: `${n} (removed)`, stroke: REMOVED, width: 2, dash: [4, 4], spanGaps: false}
      : {label: n, stroke: this.colour[n], width: 2, spanGaps: false});
    const base = (label) => ({
      width, height: 200, legend: {show: true, live: false},
      cursor: {drag: {x: false, y: false}},
      // At least the last minute, growing to the whole window: the time axis stays readable.
      // Before the second sample there are no points: the minute up to now, not 1970.
      scales: {x: {time: true, range: (u, min, max) => {
        const hi = max ?? Date.now() / 1000;
        return [hi - Math.min(WINDOW_S, Math.max(60, hi - (min ?? hi))), hi];
      }},
        y: {range: (u, min, max) => [0, Math.max(1, max * 1.1)]}},
      // The time axis in UTC, as routerctl and the logs give times.
      axes: [{label: "UTC", labelSize: 20, space: 90, values: (u, splits) => splits.map(hms)}, {label, size: 60}],
    });
    const req = new uPlot({...base("requests/s"), series: [{},
      ...names.map(line),
      ...zero.map((n) => ({label: `${n} pinned at weight 0`, stroke: this.colour[n], width: 3, dash: [8, 5],
        fill: `${this.colour[n]}22`}))]},
    [[]].concat(names.map(() => []), zero.map(() => [])), this.chartBox);
    const err = new uPlot({...base("% 5xx"), series: [{}, ...names.map(line)]},
    [[]].concat(names.map(() => [])), this.errBox);
    this.plots = {req, err};
  }

  fit() {
    if (!this.plots) return;
    const width = Math.max(280, this.el.clientWidth);
    this.plots.req.setSize({width, height: 200});
    this.plots.err.setSize({width, height: 200});
  }

  renderTable(names, recent) {
    const draining = names.filter((n) => recent[n] && recent[n].weight === 0 && recent[n].pinned > 0);
    this.drain.textContent = draining.length
      ? `Draining: ${draining.map((n) => `${n} still gets ${num(recent[n].pinned)} req/s from clients pinned by cookie`).join("; ")} (weight 0).`
      : "";
    const rows = names.map((n) => {
      const r = recent[n];
      const byWeight = r ? r.rps - r.pinned : null;
      return h("tr", {dataset: r ? {service: n, rps: r.rps.toFixed(3), pinned: r.pinned.toFixed(3), eps: r.eps.toFixed(3), weight: r.weight} : {service: n},
        class: r && r.weight === 0 && r.pinned > 0 ? "draining" : null},
        h("th", {scope: "row"}, h("span", {class: "swatch", dataset: {color: this.colour[n] || REMOVED}}), n),
        h("td", {"data-label": "Weight"}, r ? String(r.weight) : "–"),
        h("td", {"data-label": "Requests/s"}, r ? num(r.rps) : "–"),
        h("td", {"data-label": "By weight"}, r ? num(Math.max(0, byWeight)) : "–"),
        h("td", {"data-label": "Pinned by cookie"}, r ? num(r.pinned) : "–"),
        h("td", {"data-label": "Errors/s"}, r ? num(r.eps) : "–"),
        h("td", {"data-label": "Error rate"}, r ? pct(r.requests > 0 ? (100 * r.errors) / r.requests : 0) : "–"),
        h("td", {"data-label": "In flight"}, r ? String(r.inflight) : "–"),
        h("td", {"data-label": "Mean latency"}, r && r.mean !== null ? `${num(r.mean * 1000)} ms` : "–"));
    });
    this.table.replaceChildren(h("table", {class: "stack"},
      h("caption", {}, "Last few seconds"),
      h("thead", {}, h("tr", {}, ["Service", "Weight", "Requests/s", "By weight", "Pinned by cookie", "Errors/s", "Error rate", "In flight", "Mean latency"]
        .map((t) => h("th", {scope: "col"}, t)))),
      h("tbody", {}, rows)));
    for (const sw of this.table.querySelectorAll(".swatch")) sw.style.background = sw.dataset.color;
  }

  stop() {
    this.resize.disconnect();
    if (this.plots) { this.plots.req.destroy(); this.plots.err.destroy(); }
  }
}
