// Small DOM helpers: build elements, keep keyboard focus across re-renders, poll without overlap.

export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "class") el.className = v;
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (v === true) el.setAttribute(k, "");
    else el.setAttribute(k, String(v));
  }
  for (const c of children.flat(Infinity)) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

// Replace what `container` shows, and give focus back to the element with the same id: a
// keyboard user's place survives the page's live updates.
export function replaceKeepFocus(container, ...nodes) {
  const active = document.activeElement;
  const id = active && container.contains(active) ? active.id : null;
  container.replaceChildren(...nodes);
  if (id) {
    const again = document.getElementById(id);
    if (again) again.focus({preventScroll: true});
  }
}

// Call `fn` now and then every `ms` after each call has finished (never two at once).
export function every(ms, fn) {
  let timer = null;
  let stopped = false;
  const run = async () => {
    try { await fn(); } catch (e) { console.debug("poll failed", e); }
    if (!stopped) timer = setTimeout(run, ms);
  };
  run();
  return {
    stop() { stopped = true; clearTimeout(timer); },
    now() { clearTimeout(timer); if (!stopped) run(); },
  };
}

export function pct(x) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return (Math.round(x * 10) / 10) + "%";
}

export function num(x, digits = 1) {
  if (x === null || x === undefined || Number.isNaN(x)) return "–";
  return x.toFixed(digits);
}

export function statusText(release) {
  if (!release) return "No release";
  return release.status === "in_progress"
    ? "Blue-green release in progress"
    : "Blue-green release awaiting confirmation";
}

// A backend's health as the router sees it: the detailed view when the router gives one, else
// healthy when it takes new requests.
export function backendHealth(svc, backend) {
  const detail = svc.backend_health && svc.backend_health[backend];
  if (detail) return {state: detail.state, reason: detail.reason || null};
  return {state: svc.healthy_backends.includes(backend) ? "healthy" : "unhealthy", reason: null};
}

export function healthyCount(svc) {
  return svc.backends.filter((b) => backendHealth(svc, b).state === "healthy").length;
}

// The share of new (unpinned) requests each service gets: the router picks among services with
// weight > 0 and a backend that takes requests, in proportion to their weights.
export function shares(app) {
  const names = Object.keys(app.services);
  const live = names.filter((n) => app.services[n].weight > 0 && app.services[n].healthy_backends.length > 0);
  const total = live.reduce((s, n) => s + app.services[n].weight, 0);
  const out = {};
  for (const n of names) out[n] = live.includes(n) && total > 0 ? (100 * app.services[n].weight) / total : 0;
  return out;
}

export function etagOf(app) {
  return `"${app.generation}"`;
}

// Times as routerctl and the router's log print them: in UTC, and saying so. The browser's own
// zone would differ from theirs and from a colleague's; the element's title has the local time.
export function utc(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return d.toISOString().slice(0, 19).replace("T", " ") + " UTC";
}

export function timeEl(iso, id) {
  const d = new Date(iso);
  return h("time", {datetime: iso, id, title: Number.isNaN(d.getTime()) ? null : `${d.toLocaleString()} (this browser's time)`}, utc(iso));
}

// Seconds as the API's durations are written: 60 -> "60s", 0.01 -> "10ms", 3600 -> "1h".
export function duration(s) {
  if (s < 1) return `${Math.round(s * 1000)}ms`;
  if (s >= 3600 && s % 3600 === 0) return `${s / 3600}h`;
  if (s >= 60 && s % 60 === 0) return `${s / 60}m`;
  return `${s}s`;
}

// A message for the next page: "shop deleted" shown on Applications after the app's page.
let flashed = "";
export function flash(text) { flashed = text; }
export function takeFlash() { const t = flashed; flashed = ""; return t; }

// Something the browser keeps for this console (colours, dismissed banners); nothing if the
// browser refuses storage.
export const store = {
  get(key, fallback) {
    try { const v = localStorage.getItem(`router-console.${key}`); return v === null ? fallback : JSON.parse(v); } catch { return fallback; }
  },
  set(key, value) {
    try { localStorage.setItem(`router-console.${key}`, JSON.stringify(value)); } catch { /* private mode: kept for this page only */ }
  },
};
