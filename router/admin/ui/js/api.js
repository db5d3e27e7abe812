// The REST API from the browser. With a signed-in session the HttpOnly cookie stands for the
// admin token; every change carries the session's CSRF token. Errors carry the API's own text.

let csrf = null;
let unauthorized = () => {};
const conn = () => document.getElementById("conn");

export function setCsrf(token) { csrf = token; }
export function onUnauthorized(fn) { unauthorized = fn; }

export class ApiError extends Error {
  constructor(status, code, message, field) {
    super(message);
    this.status = status;
    this.code = code;
    this.field = field;
  }
}

export async function api(method, path, {body, etag, headers: extra} = {}) {
  const headers = {Accept: "application/json", ...extra};
  // Every change says it is JSON, with a body or without: a form on another site cannot send
  // that, and the admin listener refuses a change that does not.
  if (method !== "GET") headers["Content-Type"] = "application/json";
  if (etag) headers["If-Match"] = etag;
  if (csrf && method !== "GET") headers["X-CSRF-Token"] = csrf;
  let resp;
  try {
    resp = await fetch(path, {
      method, headers, credentials: "same-origin", cache: "no-store",
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch (e) {
    if (conn()) conn().textContent = "Router unreachable";
    throw new ApiError(0, "unreachable", `the router did not answer (${e.message})`, null);
  }
  if (conn()) conn().textContent = "";
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!resp.ok) {
    const err = data && data.error ? data.error : {code: `http_${resp.status}`, message: `${resp.status} ${resp.statusText}`, field: null};
    const e = new ApiError(resp.status, err.code, err.message, err.field);
    if (resp.status === 401) unauthorized(e);
    throw e;
  }
  return {data, etag: resp.headers.get("ETag"), status: resp.status};
}

// "412: ..." is for logs; people read the message.
export function explain(e) {
  return e instanceof ApiError ? e.message : String(e);
}
