"""Send the hostile corpus to the router (and to HAProxy) and judge every verdict."""

from __future__ import annotations

from dataclasses import dataclass, field

from .corpus import CORPUS, Case
from .faultserver import FaultServer
from .harness import app, config, exchange, haproxy, http_status, inproc_router, verdict


@dataclass
class Row:
    case: Case
    got: str
    forwarded: int
    problems: list[str] = field(default_factory=list)
    haproxy: str | None = None
    haproxy_forwarded: int | None = None


async def _send(port: int, shop: FaultServer, admin: FaultServer, case: Case) -> tuple[str, int, list]:
    before = len(shop.seen) + len(admin.seen)
    b_shop, b_admin = len(shop.seen), len(admin.seen)
    statuses, closed = await exchange(port, case.data, timeout=2.0)
    seen = shop.seen[b_shop:] + admin.seen[b_admin:]
    return verdict(statuses, closed), len(shop.seen) + len(admin.seen) - before, seen


async def run_corpus(compare_haproxy: bool = True) -> tuple[list[Row], bool | None]:
    """Every case against a fresh router; returns the rows and whether HAProxy ran."""
    shop, admin = await FaultServer("shop").start(), await FaultServer("admin").start()
    rows: list[Row] = []
    ran_haproxy: bool | None = None
    try:
        cfg = config({"shop": app([shop.addr]),
                      "admin": app([admin.addr], routes=["app.test/admin"])})
        async with inproc_router(cfg) as srv:
            for case in CORPUS:
                got, n, seen = await _send(srv.port, shop, admin, case)
                row = Row(case, got, n)
                if got != case.expect:
                    row.problems.append(f"verdict {got!r}, want {case.expect!r}")
                if n != case.forwarded:
                    row.problems.append(f"backends saw {n} requests, want {case.forwarded}")
                if case.check is not None and not row.problems:
                    try:
                        case.check(seen)
                    except AssertionError as e:
                        row.problems.append(f"forwarded request: {e}")
                rows.append(row)
            # The router still serves after all of it.
            if await http_status(srv.port, "/", "app.test") != 200:
                rows[-1].problems.append("router stopped serving after the corpus")
        # (Before HAProxy's turn: what it forwards to the same backends is its own business.)
        smuggled = [s.path for s in shop.seen + admin.seen if "smuggled" in s.path]
        if smuggled:
            rows[-1].problems.append(f"a backend saw smuggled requests: {smuggled}")
        if compare_haproxy:
            async with haproxy(shop.addr, admin.addr) as hport:
                ran_haproxy = hport is not None
                if hport is not None:
                    for row in rows:
                        got, n, _ = await _send(hport, shop, admin, row.case)
                        row.haproxy, row.haproxy_forwarded = got, n
    finally:
        await shop.stop()
        await admin.stop()
    return rows, ran_haproxy


def _first(v: str) -> str:
    return v.split()[0] if v else "no answer"


def differences(rows: list[Row]) -> list[Row]:
    """Cases where HAProxy's first verdict or its forwarding differ from the router's."""
    return [r for r in rows if r.haproxy is not None and (
        _first(r.haproxy) != _first(r.got)
        or ((r.haproxy_forwarded or 0) > 0) != (r.forwarded > 0))]


def difference_table(rows: list[Row]) -> str:
    out = ["| case | router | HAProxy 2.6 | why the router differs |", "|---|---|---|---|"]
    for r in differences(rows):
        h = f"{r.haproxy} (fwd {r.haproxy_forwarded})"
        why = WHY.get(r.case.name, "(unexplained) " + r.case.reason)
        out.append(f"| `{r.case.name}` | {r.got} (fwd {r.forwarded}) | {h} | {why} |")
    return "\n".join(out)


_CL_TE = ("HAProxy repairs it as RFC 9112 6.3 allows (drops Content-Length, forwards chunked, "
          "closes); the router refuses framing two parsers may read differently")
_HOST = "HAProxy passes Host unchecked; RFC 9112 3.2: an invalid Host MUST be a 400"
_PATH = ("HAProxy forwards the path as sent (normalize-uri is off by default); the router refuses "
         "a path a backend could read differently from how it was matched")
_ABS = ("HAProxy 2.6 refuses an absolute URI whose authority differs from Host; the router follows "
        "RFC 9112 3.2.2 (the authority wins) and routes it through its own table, never dialling it")
_LF = "HAProxy accepts bare LF (RFC 9112 2.2 MAY); the router says 400"
_MISSING = ("this HAProxy configuration routes by Host, so a request without one meets the 404 rule; "
            "RFC 9112 3.2: MUST be a 400")
# Why the router's verdict is the one wanted where HAProxy's differs (from runs of HAProxy 2.6).
WHY: dict[str, str] = {
    "cl_and_te": _CL_TE,
    "te_and_cl": _CL_TE,
    "cl_duplicate_same": "HAProxy merges equal values (RFC 9110 8.6 MAY); the router: a duplicate Content-Length is a 400",
    "cl_list": "HAProxy merges '5, 5' (RFC 9110 8.6 MAY); the router: a bad Content-Length is a 400",
    "te_gzip_chunked": "both refuse: HAProxy with 422, the router with 400",
    "te_http10": "HAProxy accepts it; RFC 9112 6.1: Transfer-Encoding in HTTP/1.0 is faulty framing",
    "chunk_size_space": "HAProxy's chunk parser skips the blank; llhttp's strict mode refuses it",
    "chunk_bare_lf": _LF,
    "bare_lf_request_line": _LF,
    "bare_lf_header": _LF,
    "obs_fold": "HAProxy unfolds it; refusing is the other choice RFC 9112 5.2 allows, with no ambiguity",
    "version_2_0": "HAProxy forwards it as HTTP/1.1; the router refuses a version it does not speak (505)",
    "version_1_2": "HAProxy forwards it as HTTP/1.1; llhttp refuses it",
    "request_line_too_long": "HAProxy's limit is its 16 KiB buffer; the router's 8 KiB gives 414",
    "header_too_large": "HAProxy's limit is its 16 KiB buffer; the router's 8 KiB gives 431",
    "header_block_too_large": "both refuse: HAProxy with 400 (buffer full), the router with 431",
    "header_fields_101": ("HAProxy's limit is 101 fields (tune.http.maxhdr); the router's default "
                          "is 100 (limits.max_header_fields), 431 past it"),
    "header_fields_tiny_many": "both refuse: HAProxy with 400 (too many fields), the router with 431",
    "host_missing": _MISSING,
    "host_empty": _MISSING,
    "host_userinfo": _HOST,
    "host_bad_port": _HOST,
    "host_list": _HOST,
    "absolute_form_other_host": _ABS,
    "absolute_form_metadata": _ABS,
    "absolute_form_our_host": _ABS,
    "absolute_form_userinfo": "HAProxy forwards it; RFC 9110 4.2.4: userinfo in an http URI is an error",
    "absolute_form_ftp": "HAProxy forwards it; the router takes only http and https URIs",
    "connect": "HAProxy forwards CONNECT to the backend here; the router: 405",
    "get_asterisk": "HAProxy forwards it; RFC 9112 3.2.4: '*' is for OPTIONS only",
    "path_dotdot": _PATH,
    "path_dotdot_encoded": _PATH,
    "path_dotdot_mixed": _PATH,
    "path_dot": _PATH,
    "path_encoded_slash": _PATH,
    "path_backslash": _PATH,
    "path_encoded_nul": _PATH,
    "path_dotdot_semicolon": _PATH,
    "path_dotdot_encoded_semicolon": _PATH,
    "path_unreserved_encoded": ("HAProxy matches the path as sent, so /%61dmin is not under "
                                "/admin for it; a backend decodes it to /admin: the router routes "
                                "it where the backend reads it"),
    "path_parameters": ("HAProxy matches the path as sent, so /admin;x is not under /admin for "
                        "it; Tomcat, Jetty and Spring read it as /admin/x: the router routes it "
                        "there"),
    "pipeline_after_unrouted_body": ("HAProxy reads the unrouted request's body and goes on; the "
                                     "router answers at the head and closes, never reading what "
                                     "follows as requests"),
    "expect_other": "HAProxy forwards unknown expectations; RFC 9110 10.1.1 allows a 417",
    "upgrade_refused_then_smuggle": ("HAProxy refuses a WebSocket upgrade without Sec-WebSocket-Key; "
                                     "the router leaves the handshake to the backend and tunnels "
                                     "only after a 101, so the trailing bytes are never forwarded"),
    "pipeline_after_rejected": _CL_TE,
}
