"""`router serve` and `router demo`: arguments -> Config -> Server; exit codes.

Exit 0 after a graceful stop or a takeover by a successor, 2 for a bad command line or
configuration or a state directory it cannot write, 1 when the environment refuses (a port
taken, the etcd store unreachable at start, a takeover refused or failed).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import os
import sys
import tempfile

from . import eventlog, version
from .config import Config, ConfigError, DockerProviderConfig, load_config, parse_docker_endpoint
from .process.handoff import SOCKET_NAME
from .process.run import serve

# The demo's backends and their default addresses: the README's walkthrough uses them.
DEMO_BACKENDS = {"blue": "127.0.0.1:18001", "green": "127.0.0.1:18002",
                 "green-v2": "127.0.0.1:18003"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="Weighted blue-green HTTP router")
    p.add_argument("--version", action="version", version=f"router {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the data plane and the admin API")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration (README: Configuration)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the port (default 1)")
    serve.add_argument("--store", metavar="URL",
                       help="where the routing state lives: a file path, file:///path, or "
                            "etcd://HOST:PORT[/prefix] shared by several replicas "
                            "(default: router-state.yaml in the state directory)")
    serve.add_argument("--state-dir", metavar="DIR",
                       help="the routing state and the sticky secret (env ROUTER_STATE_DIR; "
                            "default: the configuration's directory if writable, else "
                            f"{DEFAULT_STATE_DIR})")
    serve.add_argument("--docker", nargs="?", const="", metavar="ENDPOINT",
                       help="discover apps from Docker labels (providers.docker): the Engine at "
                            "ENDPOINT, unix:///var/run/docker.sock by default, or tcp://HOST:PORT")
    serve.add_argument("--takeover", nargs="?", const="", metavar="PATH",
                       help="take over from the router running on this state: its listening "
                            "sockets, its state store and, between requests, its client "
                            "connections, through its handoff socket (PATH; default: "
                            "handoff.socket, or handoff.sock in the state directory); with no "
                            "router there, start as without it (docs/upgrade.md)")
    serve.add_argument("--log-level", default="info",
                       choices=["debug", "info", "warning", "error"])
    demo = sub.add_parser("demo", help="run demo backends (blue, green, and green-v2 for a "
                                       "release) and a router")
    demo.add_argument("--listen", default="127.0.0.1:8080", help="data plane (default %(default)s)")
    demo.add_argument("--admin", default="127.0.0.1:9090", help="admin API (default %(default)s)")
    for name, addr in DEMO_BACKENDS.items():
        demo.add_argument(f"--{name}", default=addr, metavar="HOST:PORT",
                          help=f"the {name} backend (default %(default)s; port 0: any free one)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        eventlog.setup()
        from .process.demo import run_demo

        return run_demo(args.listen, args.admin,
                        {name: getattr(args, name.replace("-", "_")) for name in DEMO_BACKENDS})
    eventlog.setup(args.log_level)
    code, why = _serve(args, argv)
    if why is not None:
        print(f"router: {why}", file=sys.stderr)
        if args.takeover is not None:
            # The router it was to replace logs why too (docs/upgrade.md, "Failures").
            _report(args, why)
    return code


def _serve(args: argparse.Namespace, argv: list[str] | None) -> tuple[int, str | None]:
    """(exit code, what stopped it before it ran)."""
    if not 1 <= args.workers <= 64:
        return 2, f"--workers: must be 1..64 (got {args.workers})"
    from .control.store import check_store

    try:
        store = check_store(args.store) if args.store is not None else None
    except ValueError as e:
        return 2, f"--store: {e}"
    try:
        config = load_config(args.config) if args.config else Config()
        if args.docker is not None:
            config = with_docker(config, args.docker)
    except ConfigError as e:
        return 2, str(e)
    eventlog.use(config.logging.format)
    explicit = args.state_dir or os.environ.get("ROUTER_STATE_DIR") or None
    state = None
    try:
        if store is None or not store.startswith("etcd://"):
            state = state_dir(explicit, args.config)
            if store is None:
                store = os.path.join(state, STATE_FILE)
        elif explicit:  # etcd holds the state and the secret; the directory, a handoff socket
            state = state_dir(explicit, args.config)
    except StateDirError as e:
        return 2, str(e)
    if store is not None and not store.startswith("etcd://"):
        from .providers.container import warn_if_lost

        for where in dict.fromkeys((state, os.path.dirname(store))):
            if where is not None:
                warn_if_lost(where)
    takeover = None
    if args.takeover is not None:
        takeover = args.takeover or handoff_path(config, state)
        if not takeover:
            return 2, ("--takeover: no handoff socket to find the running router at: give its "
                       "path, set handoff.socket, or a state directory")
    # The command that runs this router again (SIGUSR2): only a real command line.
    again = None if argv is not None else [sys.executable, *without_takeover(sys.orig_argv[1:])]
    return serve(config, store, args.workers, state, takeover, again), None


def handoff_path(config: Config, state: str | None) -> str | None:
    """Where a router listens for its successor (``router.process.handoff``)."""
    if config.handoff.socket is not None:
        return config.handoff.socket
    return os.path.join(state, SOCKET_NAME) if state is not None else None


def without_takeover(args: list[str]) -> list[str]:
    """A command line without its ``--takeover [PATH]``."""
    out: list[str] = []
    skip = False
    for i, arg in enumerate(args):
        if skip:
            skip = False
        elif arg == "--takeover":
            skip = i + 1 < len(args) and not args[i + 1].startswith("-")
        elif not arg.startswith("--takeover="):
            out.append(arg)
    return out


def _report(args: argparse.Namespace, why: str) -> None:
    """Tell the router a failed ``--takeover`` was to replace why (best effort: the path may
    be what could not be worked out)."""
    import asyncio

    from .process.handoff import report_failure

    path = args.takeover
    if not path:
        try:
            config = load_config(args.config) if args.config else Config()
        except ConfigError:
            config = Config()
        base = (args.state_dir or os.environ.get("ROUTER_STATE_DIR")
                or (os.path.dirname(os.path.abspath(args.config)) if args.config else os.getcwd()))
        path = handoff_path(config, base)
    if path and os.path.exists(path):
        asyncio.run(report_failure(path, f"the successor (pid {os.getpid()}) could not start: "
                                         f"{why}"))


def with_docker(config: Config, endpoint: str) -> Config:
    """``--docker [ENDPOINT]``: the Docker provider on, at ENDPOINT when one is given."""
    docker = config.providers.docker or DockerProviderConfig()
    if endpoint:
        docker = replace(docker, endpoint=parse_docker_endpoint(endpoint, "--docker", "command line"))
    return replace(config, providers=replace(config.providers, docker=docker))


# Where the state goes when the configuration's directory is read-only (a mounted ConfigMap,
# /etc owned by root): the Filesystem Hierarchy Standard's place for a program's state.
DEFAULT_STATE_DIR = "/var/lib/router"
STATE_FILE = "router-state.yaml"


class StateDirError(Exception):
    """The state directory cannot be used; the message names it and says why."""


def state_dir(explicit: str | None, config_path: str | None) -> str:
    """The directory of the routing state and the sticky secret.

    ``explicit`` (``--state-dir`` or ``ROUTER_STATE_DIR``) if given; else the configuration's
    directory (the current one without ``--config``) if this process can write there; else
    DEFAULT_STATE_DIR. Created if missing (mode 0700); ``StateDirError`` if it cannot be written.
    """
    if explicit:
        return _usable(os.path.abspath(explicit), "")
    base = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
    if _writable(base) is None:
        return base
    return _usable(DEFAULT_STATE_DIR, f" (the default: {base} is not writable)")


def _usable(path: str, why: str) -> str:
    try:
        os.makedirs(path, mode=0o700, exist_ok=True)
    except OSError as e:
        raise StateDirError(f"state directory {path}{why}: cannot create it: "
                            f"{e.strerror or e}; set --state-dir or ROUTER_STATE_DIR") from None
    problem = _writable(path)
    if problem is not None:
        raise StateDirError(f"state directory {path}{why}: not writable ({problem}); set "
                            "--state-dir or ROUTER_STATE_DIR to a directory this user can write")
    return path


def _writable(path: str) -> str | None:
    """None if a file can be created in ``path``; else why not. Tried for real: permissions,
    a read-only mount and ACLs all answer the same way."""
    try:
        fd, name = tempfile.mkstemp(prefix=".router-probe-", dir=path)
    except OSError as e:
        return e.strerror or str(e)
    os.close(fd)
    os.unlink(name)
    return None


if __name__ == "__main__":
    sys.exit(main())
