// The console's entry: the session, the pages by URL fragment (#/ and #/apps/NAME), sign-out.

import { onUnauthorized, setCsrf } from "./api.js";
import { renderApp } from "./app.js";
import { renderApps } from "./apps.js";
import { renderLogin } from "./login.js";

let session = null;
let page = null;
const main = document.getElementById("main");
const signOut = document.getElementById("sign-out");

function use(s) {
  session = s;
  setCsrf(s.csrf);
  signOut.hidden = !(s.auth === "token" && s.signed_in);
}

function route(why) {
  if (page) page.stop();
  page = null;
  if (session.auth === "token" && !session.signed_in) {
    page = renderLogin(main, (s) => { use(s); route(); }, why);
    return;
  }
  const m = location.hash.match(/^#\/apps\/([a-z0-9][a-z0-9-]*)$/);
  page = m ? renderApp(main, m[1]) : renderApps(main);
  main.focus({preventScroll: true});
}

async function start() {
  const resp = await fetch("session", {cache: "no-store", credentials: "same-origin"});
  use(await resp.json());
  onUnauthorized((e) => {
    if (session.auth === "token" && session.signed_in) {
      use({...session, signed_in: false, csrf: null});
      route(`Signed out: ${e.message}.`);
    }
  });
  signOut.addEventListener("click", async () => {
    await fetch("session", {method: "DELETE", credentials: "same-origin"});
    use({...session, signed_in: false, csrf: null});
    route();
  });
  window.addEventListener("hashchange", () => route());
  route();
}

start().catch((e) => { main.textContent = `The console could not start: ${e.message}`; });
