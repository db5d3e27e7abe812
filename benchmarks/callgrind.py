"""Where a proxy's instructions go: a callgrind file read as a budget by stage of a request.

    python3 -m benchmarks.callgrind router FILE --requests 2000     # the router's stages
    python3 -m benchmarks.callgrind haproxy FILE --requests 2000
    python3 -m benchmarks.callgrind router FILE --requests 2000 --detail loop 30

``benchmarks.instructions --profiles DIR`` writes the files (``router-small.callgrind``, ...),
taken with ``--separate-callers``: each function is kept apart by its chain of callers
(``f'caller'caller's caller...``), so the cost of a shared helper (an allocation, a method
call through the interpreter) is known per place that called it.

Each proxy has an ordered table of stages, each named by the functions that do its work. A
function's own instructions go to the stage of the nearest function in its chain of callers
(itself first) that a stage names: ``read_request_head`` and everything it calls is "check
the head"; the bytes join it makes is "build the forwarded head" because that rule names the
join *under* the functions that build that head. A chain longer than the callers callgrind kept is followed
further through the call graph, shared in proportion to what each caller's calls cost. What no
stage names is ``other``; ``--detail STAGE N`` splits a stage by the function that claimed
its instructions (for ``other``: the function itself).
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

OTHER = "other"


@dataclass(frozen=True)
class Stage:
    key: str
    what: str  # what the stage does for the request (the budget table's text)
    rules: tuple[tuple[str, ...], ...]  # each: patterns of a function, its caller, ...


def stage(key: str, what: str, *rules: str | tuple[str, ...]) -> Stage:
    return Stage(key, what, tuple((r,) if isinstance(r, str) else r for r in rules))


@dataclass
class Profile:
    """One callgrind part: the own (self) instructions of each function in each context, and
    the calls between them with what each call cost in all (inclusive)."""

    own: dict[str, int]
    calls: dict[str, dict[str, int]]  # caller -> callee -> inclusive instructions
    count: dict[str, dict[str, int]]  # caller -> callee -> calls

    @property
    def total(self) -> int:
        return sum(self.own.values())


_NAMED = re.compile(r"\((\d+)\)(?: (.*))?$")


def read(path: Path) -> Profile:
    """Parse a callgrind output file (one part, events ``Ir``, name compression on)."""
    names: dict[str, str] = {}
    own: dict[str, int] = defaultdict(int)
    calls: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    count: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    fn = callee = ""
    in_call = False

    def name(spec: str) -> str:
        m = _NAMED.match(spec)
        if m is None:
            return spec
        if m.group(2) is not None:
            names[m.group(1)] = m.group(2)
        return names[m.group(1)]

    with open(path, errors="replace") as f:
        for line in f:
            head = line[:1]
            if head.isdigit() or head in "+-*":
                parts = line.split()
                cost = int(parts[1]) if len(parts) > 1 else 0
                if in_call:
                    calls[fn][callee] += cost
                    in_call = False
                else:
                    own[fn] += cost
            elif line.startswith("fn="):
                fn = name(line[3:].rstrip("\n"))
            elif line.startswith("cfn="):
                callee = name(line[4:].rstrip("\n"))
            elif line.startswith("calls="):
                in_call = True
                count[fn][callee] += int(line[6:].split()[0])
    return Profile(dict(own), {k: dict(v) for k, v in calls.items()},
                   {k: dict(v) for k, v in count.items()})


def calls_into(profile: Profile, function: str) -> tuple[int, int]:
    """How many calls of ``function`` there were, and their instructions with all they call;
    its calls of itself, however indirect (as far as the callers kept tell), left out."""
    calls = cost = 0
    for caller, callees in profile.calls.items():
        if function in chain(caller):
            continue
        for callee, inclusive in callees.items():
            if chain(callee)[:1] == [function]:
                cost += inclusive
                calls += profile.count[caller][callee]
    return calls, cost


def chain(node: str) -> list[str]:
    """``f'caller'caller's caller`` -> [f, caller, ...] (callgrind's recursion depth marks,
    ``f'2``, dropped)."""
    return [p for p in node.split("'") if p and not p.isdigit()]


class Budget:
    """The instructions of a profile by stage."""

    def __init__(self, profile: Profile, stages: Sequence[Stage]) -> None:
        self.profile = profile
        self.rules = [(s.key, [re.compile(p) for p in rule]) for s in stages for rule in s.rules]
        self.callers: dict[str, list[tuple[str, int]]] = defaultdict(list)
        for caller, callees in profile.calls.items():
            for callee, cost in callees.items():
                self.callers[callee].append((caller, cost))
        self._memo: dict[str, dict[str, float]] = {}

    def label(self, node: str) -> tuple[str, str] | None:
        """The stage of the nearest function of the node's chain that a stage names, and
        that function."""
        ch = chain(node)
        for i in range(len(ch)):
            for key, rule in self.rules:
                if i + len(rule) <= len(ch) and all(p.fullmatch(ch[i + j])
                                                    for j, p in enumerate(rule)):
                    return key, ch[i]
        return None

    def shares(self, node: str, visiting: frozenset[str] = frozenset()) -> dict[str, float]:
        """How the node's own instructions divide between stages and the functions that
        claimed them ("stage/function": fractions summing to 1)."""
        if node in self._memo:
            return self._memo[node]
        found = self.label(node)
        if found is not None:
            out = {f"{found[0]}/{found[1]}": 1.0}
        else:
            callers = [(c, w) for c, w in self.callers.get(node, []) if c not in visiting]
            weight = sum(w for _, w in callers)
            if not weight:
                out = {f"{OTHER}/{chain(node)[0] if chain(node) else node}": 1.0}
            else:
                acc: dict[str, float] = defaultdict(float)
                for caller, w in callers:
                    for k, share in self.shares(caller, visiting | {node}).items():
                        acc[k] += share * w / weight
                out = dict(acc)
        if not visiting:
            self._memo[node] = out
        return out

    def by_function(self) -> dict[str, float]:
        """Instructions by "stage/function": the function a stage names that claimed them
        (with all it calls that no nearer rule claims)."""
        out: dict[str, float] = defaultdict(float)
        for node, cost in self.profile.own.items():
            if cost:
                for key, share in self.shares(node).items():
                    out[key] += cost * share
        return dict(out)

    def by_stage(self) -> dict[str, float]:
        out: dict[str, float] = defaultdict(float)
        for key, cost in self.by_function().items():
            out[key.split("/", 1)[0]] += cost
        return dict(out)


# --------------------------------------------------------------------------------------------
# The stages of each proxy. Names are the C symbols callgrind sees: mypyc's functions are
# CPyDef_<module>___<Class>___<method>; HAProxy's and nginx's binaries are stripped, so only
# their exported functions have names (their static ones count where their caller does).

_LOOP_UV = (r"uv_run|uv__io_poll|uv__io_cb|uv__stream_io|uv__read|uv__run_\w+|uv__hrtime|"
            r"uv_update_time|epoll_\w+|__pyx_f_6uvloop_4loop___uv_stream_on_read\w*|"
            r"__pyx_f_6uvloop_4loop___loop_alloc_buffer|__pyx_f_6uvloop_4loop_run_in_context\w*|"
            r"__pyx_f_6uvloop_4loop_cb_idle_callback|__pyx_f_6uvloop_4loop_4Loop__on_idle|"
            r"__pyx_f_6uvloop_4loop___uvtimer_callback|__pyx_f_6uvloop_4loop_11TimerHandle__run|"
            r"__pyx_f_6uvloop_4loop_6Handle__run|PyGILState_\w+|take_gil|drop_gil|"
            r"PyEval_RestoreThread|PyEval_SaveThread")


def _router(name: str) -> str:
    """mypyc's symbols of a router function or method: module.Class.method -> regex."""
    parts = name.split(".")
    return r"CPy(?:Def|Py)_" + "___".join(re.escape(p) for p in parts)


def _r(*names: str) -> str:
    return "|".join(_router(n) for n in names)


# Where the forwarded request head is built: its fields appended, the router's own, the join.
_HEAD_BUILDERS = _r("request_head._read_fields", "request_head._forwarded_head")

ROUTER = (
    stage("background", "the router's own periodic tasks (release checks every 0.25 s, "
          "samples): work per second, not per request",
          r"task_step\w*|task_wakeup\w*|__pyx_f_6uvloop_4loop_11TimerHandle__run"),
    stage("loop", "event loop: epoll, the reads (a bytes object per read), calls into Python",
          _LOOP_UV),
    stage("parse", "read and parse the request head: llhttp and its callbacks into Python "
          "(on_message_begin, on_url, on_headers_complete with the fields read in one call, "
          "on_message_complete), the Exchange object",
          _r("client.ClientConnection.data_received", "client.ClientConnection.buffer_updated",
             "reader.RequestReader._parse", "reader.RequestReader._whole",
             "reader.RequestReader._feed", "client.ClientConnection.on_message_begin",
             "client.ClientConnection.on_url", "client.ClientConnection.on_header",
             "client.ClientConnection.on_headers_complete",
             "client.ClientConnection.on_message_complete",
             "client.ClientConnection._request_read",
             # (the same callbacks since the reading half is a module of its own)
             "reader.RequestReader.on_message_begin", "reader.RequestReader.on_url",
             "reader.RequestReader.on_header", "reader.RequestReader.on_headers_complete",
             "reader.RequestReader.on_message_complete", "reader.RequestReader._request_read",
             "exchange.Exchange",
             "exchange.Exchange.__init__", "exchange.Exchange.body_end")),
    stage("check", "check the request head: version, sizes, Host, target, framing, "
          "Connection tokens; each field looked at once",
          _r("request_head.read_request_head", "request_head.host_ok",
             "request_head.normalise_path", "request_head.RequestHead"),
          r"__pyx_pw_9httptools_6parser_6parser_10HttpParser_7get_http_version|"
          r"__pyx_pw_9httptools_6parser_6parser_17HttpRequestParser_3get_method|"
          r"__pyx_pw_9httptools_6parser_6parser_10HttpParser_\d+_should_upgrade"),
    stage("forward", "build the forwarded head: the request line, the client's fields kept "
          "(their lines written by the check's pass), X-Forwarded-*, X-Request-ID, one "
          "allocation",
          _r("request_head._forwarded_head"),
          ("CPyBytes_Join", _HEAD_BUILDERS),
          ("PyList_Append", _HEAD_BUILDERS),
          ("PySequence_InPlaceConcat", _HEAD_BUILDERS)),
    stage("request-id", "a new X-Request-ID (the client sent none)",
          _r("request_head.RequestIds.next")),
    stage("route", "route: the table lookup, the weighted pick",
          _r("exchange.Exchange.route", "exchange.Exchange._assign", "table.RoutingTable.lookup",
             "routing.choose", "routing.weighted", "routing.retry", "table.App.pick",
             "table.Service.pick", "balancer.SmoothWeightedRoundRobin.pick", "balancer.LeastInFlight.pick")),
    stage("sticky", "sticky sessions: the cookie found and verified, or one issued",
          _r("sticky.cookie_value", "sticky.TokenCodec.verify", "sticky.TokenCodec.issue",
             "routing.pinned", "routing.cookie_line")),
    stage("send", "write the request to the backend: the pooled connection taken, one write",
          _r("exchange.Exchange._send", "exchange.Exchange._attach", "pool.UpstreamPool.get",
             "upstream.UpstreamConnection.attach", "upstream.UpstreamConnection.send_head")),
    stage("response", "read and check the response head: llhttp over the head (no "
          "callback), status and keep-alive",
          _r("upstream.UpstreamConnection.data_received", "upstream.UpstreamConnection._heads",
             "upstream.UpstreamConnection._check")),
    stage("rewrite", "rewrite the response head for the client: hop-by-hop fields cut, "
          "framing decided, Set-Cookie added",
          _r("exchange.Exchange.response_head", "response_head.read_response_head",
             "response_head._rebuild", "response_head._own_cookies",
             "response_head.ResponseHead")),
    stage("body", "the response body: counted and passed on as read",
          _r("upstream.UpstreamConnection._length_body", "upstream.UpstreamConnection._chunked_body",
             "upstream._after", "exchange.Exchange.response_body", "http.framing.chunk")),
    stage("write", "write the response to the client: head and body in one write",
          _r("exchange.Exchange.flush", "client.ClientConnection.write",
             "client.ClientConnection.writelines")),
    stage("counters", "counters: responses by status, the latency histogram, in flight",
          _r("exchange.Exchange._account", "counters.ServiceStats.observe")),
    stage("pool", "return the backend connection to the pool",
          _r("upstream.UpstreamConnection.release", "pool.UpstreamPool.put")),
    stage("end", "end the exchange: the next request's turn, the client's idle timer",
          _r("exchange.Exchange.response_end", "exchange.Exchange._finish",
             "client.ClientConnection.exchange_done")),
    stage("timers", "timers: the response deadline, the client's idle deadline, the clock",
          _r("exchange.Exchange._wait", "exchange.Exchange._unwait",
             "deadlines.ResponseDeadlines.add", "deadlines.ResponseDeadlines.discard",
             "deadlines.ResponseDeadlines._set", "deadlines.ResponseDeadlines._insert",
             "client.ClientConnection._idle",
             "client.ClientConnection._set_deadline"),
          r"__pyx_pw_6uvloop_4loop_4Loop_\d+_time"),
    stage("phases", "phase moves checked against the table of legal moves",
          _r("exchange.Exchange._move", "client.ClientConnection._move"),
          r"CPy(?:Def|Py)_phases___\w+"),
    stage("free", "freeing the request's objects (reference counts reaching zero)",
          r"_Py_Dealloc|\w+_dealloc|CPyDef_\w+_clear|subtype_dealloc"),
)

_HAPROXY_LOOP = (r"run_poll_loop|_do_poll|fd_update_events|epoll_\w+|clock_\w+|"
                 r"process_runnable_tasks|run_tasks_from_lists|__task_wakeup|__tasklet_wakeup"
                 r"|task_\w+|tasklet_\w+|wake_expired_tasks|sock_conn_iocb|conn_fd_handler")

HAPROXY = (
    stage("loop", "event loop and scheduler: epoll, fd events, tasks and tasklets",
          _HAPROXY_LOOP),
    stage("parse", "read and parse both heads (request and response: the same code): "
          "raw_sock recv, the H1 mux into HTX",
          r"h1_io_cb|h1_recv|h1_process_demux|h1_parse_msg_hdrs|h1_headers_to_hdr_list|"
          r"h1_parse_\w+|h1_rcv_buf|raw_sock_to_buf|htx_add_\w+|h1_process_input|"
          r"h1_handle_\w+|http_parse_\w+|h1_postparse_\w+"),
    stage("check", "the request analysers: http_wait_for_request, http_process_request",
          r"http_wait_for_request|http_process_request|http_process_tarpit|"
          r"http_wait_for_request_body|process_switching_rules|process_server_rules|"
          r"http_process_req_common"),
    stage("forward", "the http-request rules: set-header/del-header (X-Forwarded-*, "
          "hop-by-hop fields), the X-Request-ID regex ACL",
          r"http_req_get_intercept_rule|action_http_\w+|http_action_\w+|http_add_header|"
          r"http_del_header|http_replace_header\w*|http_find_header|http_remove_header|"
          r"acl_exec_cond|sample_\w+|smp_\w+|regex_exec\w*|pcre\w*|build_logline|"
          r"http_get_htx_hdr|htx_remove_blk|http_get_stline"),
    stage("request-id", "unique-id: the new X-Request-ID, a log-format string",
          r"stream_generate_unique_id|sess_build_logline"),
    stage("route", "route and connect: round robin, the idle backend connection reused",
          r"back_\w+|assign_server\w*|connect_server|conn_backend_get|srv_\w+|fwrr_\w+|"
          r"stream_set_backend|sess_change_server|sess_prepare_conn_req|eb32_\w+|ebmb_\w+|"
          r"eb_\w+"),
    stage("send", "write to the backend and the client: HTX formatted into H1, raw_sock send",
          r"h1_snd_buf|h1_process_mux|h1_format_htx_\w+|h1_make_\w+|raw_sock_from_buf|"
          r"h1_send|h1_process_output|h1_done|sc_conn_sync_send|sc_conn_send|send"),
    stage("response", "the response analysers: http_wait_for_response, "
          "http_process_res_common, forwarding the body",
          r"http_wait_for_response|http_process_res_common|http_response_forward_body|"
          r"http_request_forward_body|http_end_\w+|http_resync_states"),
    stage("counters", "counters and timings per stream",
          r"stream_update_time_stats|stream_process_counters|swrate_\w+|update_freq_ctr\w*"),
    stage("stream", "a stream per request and its state machine: process_stream, the stream "
          "connectors, created and freed from memory pools",
          r"process_stream|stream_new|stream_free|stream_release_buffers|sess_new|session_\w+|"
          r"__pool_\w+|pool_\w+|b_alloc\w*|b_free|sc_\w+|cs_\w+|h1s_\w+|h1c_\w+|"
          r"appctx_\w+|stream_\w+"),
)

NGINX = (
    stage("loop", "event loop: epoll, timers",
          r"ngx_process_events_and_timers|ngx_epoll_\w+|epoll_\w+|ngx_event_expire_timers|"
          r"ngx_event_process_posted|ngx_time_update|ngx_rbtree_\w+|ngx_event_add_timer"),
    stage("parse", "read and parse the request head",
          r"ngx_http_wait_request_handler|ngx_http_process_request_line|"
          r"ngx_http_process_request_headers|ngx_http_parse_\w+|ngx_http_read_request_header|"
          r"ngx_http_process_request_uri|ngx_http_validate_host|ngx_http_process_host|"
          r"ngx_http_alloc_large_header_buffer|ngx_unix_recv|ngx_http_create_request|"
          r"ngx_http_alloc_request|ngx_hash_find"),
    stage("request-id", "$request_id: 16 random bytes (OpenSSL RAND_bytes) per request",
          r"RAND_\w+|EVP_\w+|ngx_http_variable_request_id"),
    stage("forward", "build the forwarded head: proxy_set_header scripts and variables",
          r"ngx_http_proxy_create_request|ngx_http_script_\w+|ngx_http_complex_value|"
          r"ngx_http_get_indexed_variable|ngx_http_get_flushed_variable|ngx_http_variable_\w+|"
          r"ngx_http_map_\w+|ngx_regex_exec\w*|pcre2?_\w+"),
    stage("route", "route and connect: location, upstream round robin, keepalive pool",
          r"ngx_http_handler|ngx_http_core_\w+|ngx_http_update_location_config|"
          r"ngx_http_upstream_init\w*|ngx_http_upstream_get_round_robin_peer|"
          r"ngx_http_upstream_get_keepalive_peer|ngx_http_upstream_connect|"
          r"ngx_event_connect_peer|ngx_http_read_client_request_body"),
    stage("send", "write the request to the backend",
          r"ngx_http_upstream_send_request\w*|ngx_output_chain|ngx_chain_writer|"
          r"ngx_linux_sendfile_chain|ngx_writev\w*|ngx_http_upstream_init_request"),
    stage("response", "read and check the response head, the response headers for the client",
          r"ngx_http_upstream_process_header|ngx_http_proxy_process_status_line|"
          r"ngx_http_proxy_process_header|ngx_http_upstream_process_headers|"
          r"ngx_http_upstream_send_response|ngx_http_send_header|ngx_http_\w+_header_filter|"
          r"ngx_http_header_filter"),
    stage("body", "the response body and writing to the client",
          r"ngx_http_upstream_process_\w+|ngx_event_pipe\w*|ngx_http_output_filter|"
          r"ngx_http_\w+_body_filter|ngx_http_write_filter|ngx_http_send_special"),
    stage("free", "finalize and free the request, pool memory, keepalive",
          r"ngx_http_finalize_request|ngx_http_finalize_connection|ngx_http_free_request|"
          r"ngx_destroy_pool|ngx_http_set_keepalive|ngx_http_upstream_finalize_request|"
          r"ngx_http_upstream_free_\w+|ngx_palloc\w*|ngx_pcalloc|ngx_pnalloc|ngx_create_pool|"
          r"ngx_alloc|ngx_calloc|ngx_memalign|ngx_http_log_request|ngx_http_close_\w+"),
)

STAGES = {"router": ROUTER, "haproxy": HAPROXY, "nginx": NGINX}


def budget_table(budgets: dict[str, tuple[dict[str, float], int]], stages: Sequence[Stage]
                 ) -> str:
    """A markdown table: the stages (rows) of one proxy, instructions per request in each
    column (``budgets``: column -> (instructions by stage, requests))."""
    cols = list(budgets)
    lines = ["| stage | what it buys | " + " | ".join(cols) + " |",
             "|---|---|" + "--:|" * len(cols)]
    for s in (*stages, Stage(OTHER, "not in a stage above", ())):
        cells = [f"{budgets[c][0].get(s.key, 0.0) / budgets[c][1]:,.0f}" for c in cols]
        lines.append(f"| {s.key} | {s.what} | " + " | ".join(cells) + " |")
    totals = [f"**{sum(budgets[c][0].values()) / budgets[c][1]:,.0f}**" for c in cols]
    lines.append("| **total** | | " + " | ".join(totals) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m benchmarks.callgrind",
                                     description="A callgrind file's instructions by stage.")
    parser.add_argument("proxy", choices=sorted(STAGES))
    parser.add_argument("files", nargs="+", type=Path)
    parser.add_argument("--requests", type=int, default=1, help="divide by this many requests")
    parser.add_argument("--detail", nargs=2, metavar=("STAGE", "N"),
                        help="also list the N biggest functions whose instructions went to "
                             "STAGE (other: those no stage names)")
    args = parser.parse_args(argv)
    stages = STAGES[args.proxy]
    budgets = {}
    for path in args.files:
        b = Budget(read(path), stages)
        budgets[path.stem] = (b.by_stage(), args.requests)
        if args.detail:
            key, n = args.detail[0], int(args.detail[1])
            print(f"{path.stem}: stage {key} by the function that claimed the instructions "
                  "(with what it calls), per request")
            mine = {k.split("/", 1)[1]: v for k, v in b.by_function().items()
                    if k.split("/", 1)[0] == key}
            top = sorted(mine.items(), key=lambda kv: -kv[1])[:n]
            for fn, cost in top:
                print(f"  {cost / args.requests:>9,.0f}  {fn}")
    print(budget_table(budgets, stages))
    return 0


if __name__ == "__main__":
    sys.exit(main())
