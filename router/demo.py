"""`router demo`: two demo backends answering ``blue`` and ``green``, and a router in front.

The quick start's first command. The backends run in a child process so that the router
process is exactly what `router serve` runs; the app is routed for ``localhost`` and
``127.0.0.1`` at weights 50/50 with stickiness on, so ``curl`` shows the split at once.
"""

from __future__ import annotations

import multiprocessing
import os
import socket
import sys
import tempfile

from aiohttp import web

from .config import load_config
from .process import serve


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


def _listen_socket() -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("127.0.0.1", 0))
    s.listen(128)
    return s


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


def run_demo(listen: str, admin: str) -> int:
    socks = {"blue": _listen_socket(), "green": _listen_socket()}
    addrs = {n: "127.0.0.1:%d" % s.getsockname()[1] for n, s in socks.items()}
    proc = multiprocessing.get_context("fork").Process(target=_run_backends, args=(socks,), daemon=True)
    proc.start()
    for s in socks.values():
        s.close()
    workdir = tempfile.mkdtemp(prefix="router-demo-")
    path = os.path.join(workdir, "router.yaml")
    with open(path, "w") as f:
        f.write(DEMO_CONFIG.format(listen=listen, admin=admin, **addrs))
    print(f"demo backends: blue on {addrs['blue']}, green on {addrs['green']}", file=sys.stderr)
    print(f"configuration: {path}  (edit it and send SIGHUP to reload)", file=sys.stderr)
    print(f"try: curl -i http://{listen.replace('0.0.0.0', '127.0.0.1')}/", file=sys.stderr)
    try:
        return serve(load_config(path), os.path.join(workdir, "router-state.yaml"), state_dir=workdir)
    finally:
        proc.terminate()
        proc.join(5)
