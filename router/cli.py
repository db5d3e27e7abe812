"""`router serve` and `router demo`: arguments -> Config -> Server; exit codes.

Exit 0 after a graceful stop, 2 for a bad command line or configuration (SPEC 3), 1 when the
environment refuses (a port taken, the etcd store unreachable at start).
"""

from __future__ import annotations

import argparse
from dataclasses import replace
import logging
import os
import sys

from . import version
from .config import Config, ConfigError, DockerProviderConfig, load_config, parse_docker_endpoint
from .process import serve

# The demo's backends and their default addresses: the README's walkthrough uses them.
DEMO_BACKENDS = {"blue": "127.0.0.1:18001", "green": "127.0.0.1:18002",
                 "green-v2": "127.0.0.1:18003"}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="router", description="Weighted blue-green HTTP router")
    p.add_argument("--version", action="version", version=f"router {version()}")
    sub = p.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the data plane and the admin API")
    serve.add_argument("--config", metavar="FILE", help="YAML configuration (SPEC 3.1)")
    serve.add_argument("--workers", type=int, default=1, metavar="N",
                       help="worker processes sharing the port (default 1)")
    serve.add_argument("--store", metavar="URL",
                       help="where the routing state lives: a file path, file:///path, or "
                            "etcd://HOST:PORT[/prefix] shared by several replicas "
                            "(default: router-state.yaml next to the configuration)")
    serve.add_argument("--docker", nargs="?", const="", metavar="ENDPOINT",
                       help="discover apps from Docker labels (providers.docker): the Engine at "
                            "ENDPOINT, unix:///var/run/docker.sock by default, or tcp://HOST:PORT")
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


def _logging(level: str) -> None:
    logging.basicConfig(level=getattr(logging, level.upper()), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.command == "demo":
        _logging("info")
        from .demo import run_demo

        return run_demo(args.listen, args.admin,
                        {name: getattr(args, name.replace("-", "_")) for name in DEMO_BACKENDS})
    _logging(args.log_level)
    if not 1 <= args.workers <= 64:
        print(f"router: --workers: must be 1..64 (got {args.workers})", file=sys.stderr)
        return 2
    try:
        store = store_spec(args.store, args.config)
    except ValueError as e:
        print(f"router: --store: {e}", file=sys.stderr)
        return 2
    try:
        config = load_config(args.config) if args.config else Config()
        if args.docker is not None:
            config = with_docker(config, args.docker)
    except ConfigError as e:
        print(f"router: {e}", file=sys.stderr)
        return 2
    return serve(config, store, args.workers)


def with_docker(config: Config, endpoint: str) -> Config:
    """``--docker [ENDPOINT]``: the Docker provider on, at ENDPOINT when one is given."""
    docker = config.providers.docker or DockerProviderConfig()
    if endpoint:
        docker = replace(docker, endpoint=parse_docker_endpoint(endpoint, "--docker", "command line"))
    return replace(config, providers=replace(config.providers, docker=docker))


def store_spec(url: str | None, config_path: str | None) -> str:
    """``--store`` checked (an absolute file path or an etcd:// URL); without it,
    router-state.yaml next to the configuration. ``ValueError`` for a bad one."""
    if url is None:
        base = os.path.dirname(os.path.abspath(config_path)) if config_path else os.getcwd()
        return os.path.join(base, "router-state.yaml")
    from .store import check_store

    return check_store(url)


if __name__ == "__main__":
    sys.exit(main())
