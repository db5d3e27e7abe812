// Sign in with the admin token, once: the router answers with an HttpOnly session cookie (the
// page never keeps the token) and the CSRF token that every change must carry.

import { h } from "./dom.js";

export function renderLogin(main, signedIn, why) {
  const token = h("input", {type: "password", id: "token", name: "token", required: true,
    autocomplete: "current-password", "aria-describedby": "token-hint"});
  const error = h("p", {class: "error", role: "alert", id: "login-error"}, why || "");
  const form = h("form", {class: "login", "aria-labelledby": "login-title"},
    h("h1", {id: "login-title"}, "Sign in"),
    h("div", {class: "field"}, h("label", {for: "token"}, "Admin token"), token,
      h("small", {id: "token-hint"}, "The router's admin token (admin.token_file or ROUTER_ADMIN_TOKEN). The browser keeps a session cookie, not the token.")),
    error,
    h("div", {class: "actions"}, h("button", {type: "submit"}, "Sign in")));
  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    error.textContent = "";
    let resp;
    try {
      resp = await fetch("session", {method: "POST", credentials: "same-origin", cache: "no-store",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify({token: token.value})});
    } catch (e) {
      error.textContent = `The router did not answer (${e.message}).`;
      return;
    }
    const data = await resp.json().catch(() => null);
    if (!resp.ok) {
      error.textContent = data && data.error ? `Refused: ${data.error.message}.` : `Refused (${resp.status}).`;
      token.select();
      return;
    }
    signedIn(data);
  });
  main.replaceChildren(form);
  document.title = "Sign in – Router console";
  token.focus();
  return {stop() {}};
}
