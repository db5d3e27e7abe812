"""`router demo`: demo backends answering ``blue``, ``green`` and ``green-v2``, and a router in
front of the first two.

The quick start's first command, and what the README's release walkthrough runs against:
``green-v2`` is the new version it releases. The backends run in a child process so that the
router process is exactly what `router serve` runs; the app is routed for ``localhost`` and
``127.0.0.1`` at weights 50/50 with stickiness on, so ``curl`` shows the split at once.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import sys
import tempfile

from aiohttp import web

from ..config import ConfigError, load_config, split_hostport
from .run import serve


def _demo_backend_app(name: str) -> web.Application:
    async def hello(request: web.Request) -> web.Response:
        return web.Response(text=f"{name}\n", headers={"X-Backend": name})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", hello)
    return app


def _run_backends(socks: dict[str, socket.socket]) -> None:
    import asyncio

    async def main() -> None:
        for name, sock in socks.items():
            runner = web.AppRunner(_demo_backend_app(name), access_log=None)
            await runner.setup()
            await web.SockSite(runner, sock).start()
        await asyncio.Event().wait()

    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass


def _listen_socket(addr: str) -> socket.socket:
    host, port = split_hostport(addr)
    s = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((host, port))
    s.listen(128)
    return s


def _address(s: socket.socket) -> str:
    host, port = s.getsockname()[:2]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _reachable(host: str, port: int) -> str:
    """A listen address as a client on this machine reaches it (not the wildcard)."""
    host = {"0.0.0.0": "127.0.0.1", "::": "::1"}.get(host, host)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


DEMO_CONFIG = """\
# The demo: app "demo" with a blue and a green version at 50/50, sticky on.
listen: {listen}
admin: {{listen: {admin}}}
apps:
  demo:
    routes: [localhost, 127.0.0.1]
    services:
      blue:  {{weight: 50, backends: ["{blue}"]}}
      green: {{weight: 50, backends: ["{green}"]}}
"""


def run_demo(listen: str, admin: str, backends: dict[str, str]) -> int:
    """``backends``: name -> HOST:PORT to listen on (port 0: any free one)."""
    socks: dict[str, socket.socket] = {}
    try:
        for name, addr in backends.items():
            socks[name] = _listen_socket(addr)
    except (OSError, ValueError) as e:
        print(f"router: demo backend {name} on {addr}: {e} (choose another with --{name})",
              file=sys.stderr)
        return 1
    addrs = {n: _address(s) for n, s in socks.items()}
    proc = multiprocessing.get_context("fork").Process(target=_run_backends, args=(socks,), daemon=True)
    proc.start()
    for s in socks.values():
        s.close()
    # The demo's configuration and state: gone when it stops.
    workdir = tempfile.mkdtemp(prefix="router-demo-")
    path = os.path.join(workdir, "router.yaml")
    with open(path, "w") as f:
        f.write(DEMO_CONFIG.format(listen=listen, admin=admin, blue=addrs["blue"],
                                   green=addrs["green"]))
    try:
        config = load_config(path)
        # routerctl with this demo's admin address: on a machine where another router has the
        # default one, the commands must not go there.
        ctl = f"routerctl --url http://{_reachable(config.admin.host, config.admin.port)}"
        print("demo backends: " + ", ".join(f"{n} on {a}" for n, a in addrs.items())
              + " (green-v2 is the new version of the README's release walkthrough)",
              file=sys.stderr)
        print(f"configuration: {path}  (change its apps and run `{ctl} apply {path}`)",
              file=sys.stderr)
        print(f"try: curl -i http://{_reachable(config.listen_host, config.listen_port)}/  and  "
              f"{ctl} apps", file=sys.stderr)
        return serve(config, os.path.join(workdir, "router-state.yaml"), state_dir=workdir)
    except ConfigError as e:
        print(f"router: demo: {e}", file=sys.stderr)
        return 2
    finally:
        proc.terminate()
        proc.join(5)
        shutil.rmtree(workdir, ignore_errors=True)
