"""routerctl's command line: the parser of every command and option, and ``main``."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, Callable, NoReturn, Sequence

from router import version

from .client import DEFAULT_TIMEOUT, DEFAULT_URL, EXIT_USAGE, INT_RE, Client, CtlError
from .commands import (cmd_apps, cmd_create, cmd_delete, cmd_drain_timeout, cmd_preview_header,
                       cmd_routes, cmd_service_delete, cmd_service_set, cmd_show, cmd_sticky,
                       cmd_weights)
from .conflicts import cmd_conflicts
from .release import (cmd_ramp_move, cmd_release_confirm, cmd_release_preview, cmd_release_ramp,
                      cmd_release_rollback, cmd_release_start, cmd_release_status)
from .render import Output
from .state import cmd_apply, cmd_export, cmd_history

# -- command line -----------------------------------------------------------------------------
_REMOVE_HELP = ("also stop and remove the containers of the version taken out (apps discovered "
                "from Docker); waits for them at least 60 s")
class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _positive(value: str) -> float:
    try:
        f = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds (got {value!r})") from None
    if not f > 0 or f == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds (got {value!r})")
    return f


def _generation(value: str) -> int:
    v = value.strip().strip('"')
    if not v.isdigit():
        raise argparse.ArgumentTypeError(f"must be a generation number (got {value!r})")
    return int(v)


def _weight(value: str) -> int:
    if not INT_RE.match(value) or not 0 <= int(value) <= 100:
        raise argparse.ArgumentTypeError(f"must be an integer 0..100 (got {value!r})")
    return int(value)


def _limit(value: str) -> int:
    if not INT_RE.match(value) or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer (got {value!r})")
    return int(value)


def _count(value: str) -> int:
    if not INT_RE.match(value) or int(value) < 0:
        raise argparse.ArgumentTypeError(f"must be an integer >= 0 (got {value!r})")
    return int(value)


def _health_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--health-path", metavar="PATH", help="HTTP health check path (default: TCP)")
    p.add_argument("--health-interval", metavar="DURATION", help="health check interval, e.g. 2s")
    p.add_argument("--health-timeout", metavar="DURATION", help="health check timeout, e.g. 1s")


def _global_options(defaults: bool) -> "_Parser":
    """The global options, accepted before and after the command. Only the top-level parser
    carries defaults; a subcommand's copy sets a value only when it is given there."""
    p = _Parser(add_help=False)
    d: Callable[[Any], Any] = (lambda v: v) if defaults else (lambda v: argparse.SUPPRESS)
    p.add_argument("--url", default=d(os.environ.get("ROUTER_URL") or DEFAULT_URL),
                   help="admin API base URL (env ROUTER_URL; default %(default)s)"
                   if defaults else argparse.SUPPRESS)
    p.add_argument("--token", default=d(os.environ.get("ROUTER_TOKEN") or None),
                   help="bearer token (env ROUTER_TOKEN)" if defaults else argparse.SUPPRESS)
    p.add_argument("--json", action="store_true", default=d(False),
                   help="print the server's JSON instead of tables" if defaults else argparse.SUPPRESS)
    p.add_argument("--timeout", type=_positive, default=d(DEFAULT_TIMEOUT), metavar="SECONDS",
                   help="per-request timeout (default %(default)s)" if defaults else argparse.SUPPRESS)
    p.add_argument("--if-match", type=_generation, default=d(None), metavar="GEN",
                   help="send If-Match: \"GEN\" on changes (412 if the app moved on)"
                   if defaults else argparse.SUPPRESS)
    return p


def build_parser() -> argparse.ArgumentParser:
    common = _global_options(defaults=False)
    parser = _Parser(prog="routerctl", parents=[_global_options(defaults=True)],
                     description="Admin client for the blue-green router.",
                     epilog="exit codes: 0 ok, 1 server error, 2 bad command line, "
                            "3 admin API unreachable, 4 apply --dry-run: the apply would be "
                            "refused without --force")
    parser.add_argument("--version", action="version", version=f"routerctl {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True,
                                parser_class=_Parser)

    _app_commands(sub, common)
    _state_commands(sub, common)
    _release_commands(sub, common)
    return parser


def _app_commands(sub: "argparse._SubParsersAction[_Parser]", common: argparse.ArgumentParser) -> None:
    """The apps and their services."""
    p = sub.add_parser("apps", parents=[common], help="list the apps")
    p.set_defaults(func=cmd_apps)

    p = sub.add_parser("show", parents=[common], help="one app: services, weights, health, release")
    p.add_argument("app")
    p.set_defaults(func=cmd_show)

    p = sub.add_parser("weights", parents=[common],
                       help="set several weights in one atomic step")
    p.add_argument("app")
    p.add_argument("pairs", nargs="+", metavar="SVC=W")
    p.add_argument("--force", action="store_true",
                   help="even if no service left with weight has a backend ready to take "
                        "requests, or every weight becomes 0")
    p.set_defaults(func=cmd_weights)

    p = sub.add_parser("sticky", parents=[common], help="switch session stickiness")
    p.add_argument("app")
    p.add_argument("state", choices=["on", "off"])
    p.set_defaults(func=cmd_sticky)

    p = sub.add_parser("create", parents=[common], help="create an app with one service")
    p.add_argument("app")
    p.add_argument("--route", action="append", required=True, metavar="HOST[/PATH]",
                   help="a route of the app (repeat for more)")
    p.add_argument("--backend", action="append", required=True, metavar="HOST:PORT",
                   help="a backend of its service (repeat for more)")
    p.add_argument("--service", default="web", help="the service's name (default %(default)s)")
    p.add_argument("--weight", type=_weight, default=100, help="its weight (default %(default)s)")
    p.add_argument("--sticky", choices=["on", "off"], default="on",
                   help="session stickiness (default %(default)s)")
    p.add_argument("--drain-timeout", metavar="DURATION",
                   help="re-pin clients of a 0-weight service after this long (default none)")
    _health_options(p)
    p.set_defaults(func=cmd_create)

    p = sub.add_parser("delete", parents=[common], help="delete an app")
    p.add_argument("app")
    p.set_defaults(func=cmd_delete)

    p = sub.add_parser("routes", parents=[common], help="set an app's routes")
    p.add_argument("app")
    p.add_argument("routes", nargs="+", metavar="HOST[/PATH]")
    p.set_defaults(func=cmd_routes)

    p = sub.add_parser("drain-timeout", parents=[common],
                       help="re-pin clients of a 0-weight service after this long")
    p.add_argument("app")
    p.add_argument("value", metavar="DURATION|none", help="e.g. 10m; none: never")
    p.set_defaults(func=cmd_drain_timeout)

    p = sub.add_parser("preview-header", parents=[common],
                       help="the request header that sends a request to the new version of an "
                            "open release, whatever its weight")
    p.add_argument("app")
    p.add_argument("header", metavar="HEADER|none", help="a header field name, e.g. X-Preview; "
                   "none: no preview by header (the preview link's cookie still works)")
    p.add_argument("--value", help="the value it must have (default: the new service's name)")
    p.set_defaults(func=cmd_preview_header)

    svc = sub.add_parser("service", parents=[common], help="add, change or delete a service")
    ssub = svc.add_subparsers(dest="service_command", metavar="ACTION", required=True,
                              parser_class=_Parser)
    p = ssub.add_parser("set", parents=[common],
                        help="add a service (weight 0 unless given), or change what is given")
    p.add_argument("app")
    p.add_argument("service")
    p.add_argument("--backend", action="append", metavar="HOST:PORT",
                   help="its backends, all of them (repeat for more)")
    p.add_argument("--weight", type=_weight, help="its weight")
    _health_options(p)
    p.add_argument("--no-health-check", action="store_true",
                   help="remove its health check (a TCP connect is all a release waits for)")
    p.set_defaults(func=cmd_service_set)
    p = ssub.add_parser("delete", parents=[common], help="delete a service")
    p.add_argument("app")
    p.add_argument("service")
    p.set_defaults(func=cmd_service_delete)


def _state_commands(sub: "argparse._SubParsersAction[_Parser]", common: argparse.ArgumentParser) -> None:
    """The routing state as a whole: export, apply, history, conflicts."""
    p = sub.add_parser("export", parents=[common],
                       help="the apps as a configuration file (routerctl apply reads it)")
    p.add_argument("apps", nargs="*", metavar="APP", help="only these apps (default: all)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("apply", parents=[common],
                       help="make the apps of a configuration file the router's, in one change")
    p.add_argument("file", metavar="FILE", nargs="?",
                   help="a configuration file; - or none given with a pipe: standard input")
    p.add_argument("--dry-run", action="store_true",
                   help="show the changes, make none; exit 4 if the apply would be refused "
                        "without --force")
    p.add_argument("--force", action="store_true",
                   help="also close open releases and delete services clients are pinned to")
    p.set_defaults(func=cmd_apply)

    p = sub.add_parser("history", parents=[common], help="the changes, newest first")
    p.add_argument("app", nargs="?", help="only the changes of this app")
    p.add_argument("--limit", type=_limit, default=20, help="how many (default %(default)s)")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("conflicts", parents=[common],
                       help="states a replica held that etcd lost (docs/etcd.md); choose which to "
                            "keep")
    csub = p.add_subparsers(dest="conflicts_command", metavar="ACTION", parser_class=_Parser)
    r = csub.add_parser("resolve", parents=[common], help="keep the conflict's state, or the "
                                                          "store's")
    r.add_argument("name", metavar="NAME", help="the conflict, as listed")
    r.add_argument("--keep", required=True, choices=["conflict", "store"],
                   help="conflict: its state becomes the current one (one change); store: the "
                        "conflict is dropped")
    p.set_defaults(func=cmd_conflicts)


def _release_commands(sub: "argparse._SubParsersAction[_Parser]", common: argparse.ArgumentParser) -> None:
    """Blue-green releases and their ramps."""
    rel = sub.add_parser("release", parents=[common], help="blue-green releases")
    rsub = rel.add_subparsers(dest="release_command", metavar="ACTION", required=True,
                              parser_class=_Parser)
    p = rsub.add_parser("start", parents=[common], help="add the new service at weight 0")
    p.add_argument("app")
    p.add_argument("service")
    p.add_argument("--backend", action="append", required=True, metavar="HOST:PORT",
                   help="a backend of the new service (repeat for more)")
    _health_options(p)
    p.add_argument("--wait", action="store_true",
                   help="wait until every new backend is healthy (awaiting_confirmation)")
    p.add_argument("--wait-timeout", type=_positive, default=120.0, metavar="SECONDS",
                   help="give up waiting after this long (exit 1; default %(default)s)")
    p.set_defaults(func=cmd_release_start)

    p = rsub.add_parser("status", parents=[common], help="the open release (exit 1 if none)")
    p.add_argument("app")
    p.set_defaults(func=cmd_release_status)

    p = rsub.add_parser("confirm", parents=[common], help="delete the old services")
    p.add_argument("app")
    p.add_argument("--force", action="store_true",
                   help="first move all weight to the new service")
    p.add_argument("--remove", action="store_true", help=_REMOVE_HELP)
    p.set_defaults(func=cmd_release_confirm)

    p = rsub.add_parser("rollback", parents=[common],
                        help="delete the new service, restore the old weights")
    p.add_argument("app")
    p.add_argument("--remove", action="store_true", help=_REMOVE_HELP)
    p.set_defaults(func=cmd_release_rollback)

    p = rsub.add_parser("ramp", parents=[common],
                        help="raise the new version's share step by step, judging each step "
                             "against the old version; roll back when out of bounds")
    p.add_argument("app")
    p.add_argument("--steps", required=True, metavar="P,P,...",
                   help="the new version's share at each step, percent: 5,25,50,100")
    p.add_argument("--interval", metavar="DURATION", help="each step is judged over this long "
                   "(default 60s)")
    p.add_argument("--max-error-rate", metavar="RATE", help="how far the new version's error "
                   "rate may exceed the old one's: 1%% or 0.01 (the default)")
    p.add_argument("--max-latency-ratio", type=_positive, metavar="X",
                   help="how many times the old version's latency quantile the new one's may be "
                        "(default 2)")
    p.add_argument("--quantile", metavar="Q", help="the latency quantile compared: p99 (default)")
    p.add_argument("--latency-floor", metavar="DURATION",
                   help="latencies at or under this are within bounds (default 10ms)")
    p.add_argument("--min-requests", type=_limit, metavar="N",
                   help="requests each version needs in an interval to be judged (default 20)")
    p.add_argument("--max-waits", type=_count, metavar="N",
                   help="intervals with too little traffic before the ramp pauses (default 10)")
    p.add_argument("--wait", action="store_true",
                   help="follow the ramp until it is done (exit 0), or rolled back, aborted or "
                        "paused (exit 1)")
    p.add_argument("--wait-timeout", type=_positive, default=3600.0, metavar="SECONDS",
                   help="give up waiting after this long (exit 1; default %(default)s)")
    p.set_defaults(func=cmd_release_ramp)

    for move, text in (("pause", "stop judging the ramp; the weights stay"),
                       ("resume", "judge the current step again over a fresh interval"),
                       ("abort", "end the ramp: old weights back, the new version at weight 0")):
        p = rsub.add_parser(move, parents=[common], help=text)
        p.add_argument("app")
        p.set_defaults(func=cmd_ramp_move)

    p = rsub.add_parser("preview", parents=[common],
                        help="a link (and cookie) that shows a browser the new version, "
                             "whatever its weight")
    p.add_argument("app")
    p.add_argument("--ttl", metavar="DURATION", help="how long it works (default 1h, at most 7d)")
    p.set_defaults(func=cmd_release_preview)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # --help (0) or a bad command line (2)
        return e.code if isinstance(e.code, int) else EXIT_USAGE
    out = Output(args.json, sys.stdout)
    try:
        client = Client(args.url, args.token, args.timeout, args.if_match)
        code: int = args.func(client, args, out)
        sys.stdout.flush()
        return code
    except CtlError as e:
        sys.stdout.flush()
        print(f"routerctl: {e.message}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("routerctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # The reader went away (`routerctl export | head -1`): it has what it wanted. What is
        # left unwritten goes nowhere, so that the interpreter's own flush at exit does not
        # fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
