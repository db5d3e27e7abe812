"""One router process from start to exit: the descriptor limit, the event loop, the server
with its admin API, and the exit code (0 after a graceful stop or a takeover by a successor, 1
when the environment refuses: a port taken, the etcd store unreachable at start, a takeover
refused or failed; 2 for a bad stored state) -- or the new code in its place after an upgrade
(SIGUSR2).
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys

import uvloop

from router.admin.app import create_app

from ..config import Config, ConfigError
from .handoff import TakeoverError
from .server import Server
from ..control.store import StoreError, StoreUnavailable


def raise_nofile_limit() -> None:
    """Soft RLIMIT_NOFILE up to the hard limit (as Go's runtime does): every client connection
    and its backend connection is a descriptor, and the default soft 1024 caps a proxy at a few
    hundred clients. Worker processes inherit it."""
    try:
        import resource

        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != hard:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ImportError, OSError, ValueError) as e:
        logging.getLogger("router").warning("cannot raise RLIMIT_NOFILE: %s", e)


def serve(config: Config, store: str | None, workers: int = 1, state_dir: str | None = None,
          takeover: str | None = None, argv: list[str] | None = None) -> int:
    """Run the router until it stops; its exit code. ``takeover`` and ``argv``: see
    ``router.process.server.Server``. A router that handed over to its own upgrade (SIGUSR2) does not
    return: it runs the new code in this process (``os.execv``)."""
    raise_nofile_limit()
    server: Server | None = None

    async def main() -> None:
        nonlocal server
        server = Server(config, store, workers, admin=create_app, state_dir=state_dir,
                        takeover=takeover, argv=argv)
        server.handle_signals()
        await server.start()
        await server.serve_forever()

    try:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(main())
    except StoreUnavailable as e:  # etcd not reachable within the start timeout
        print(f"router: {e}", file=sys.stderr)
        return 1
    except (ConfigError, StoreError) as e:  # a corrupt state file
        print(f"router: {e}", file=sys.stderr)
        return 2
    except (OSError, TakeoverError) as e:  # e.g. the port is taken, a takeover refused
        print(f"router: {e}", file=sys.stderr)
        return 1
    if server is not None and server.exec_argv is not None:
        _run_in_place(server.exec_argv)
    return 0


def _run_in_place(argv: list[str]) -> None:
    """The new code in this process, keeping its pid (docs/upgrade.md, "In place")."""
    log = logging.getLogger("router")
    log.info("running %s in this process (pid %d)", " ".join(argv), os.getpid())
    for handler in logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(argv[0], argv)
