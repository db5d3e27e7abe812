"""One router process from start to exit: the descriptor limit, the event loop, the server
with its admin API, and the exit code (0 after a graceful stop, 1 when the environment refuses:
a port taken, the etcd store unreachable at start; 2 for a bad stored state).
"""

from __future__ import annotations

import asyncio
import logging
import sys

import uvloop

from admin.app import create_app

from .config import Config, ConfigError
from .server import Server
from .store import StoreError, StoreUnavailable


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


def serve(config: Config, store: str | None, workers: int = 1, state_dir: str | None = None) -> int:
    raise_nofile_limit()

    async def main() -> None:
        server = Server(config, store, workers, admin=create_app, state_dir=state_dir)
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
    except OSError as e:  # e.g. the port is taken
        print(f"router: {e}", file=sys.stderr)
        return 1
    return 0
