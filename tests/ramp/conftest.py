"""Fixtures and helpers of the guarded ramp's and preview's end-to-end tests: backends that fail
or slow down on purpose, a poller of the ramp's progress, and the history of an app."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import serve
from tests.integration.test_admin_api import Api, admin_api  # noqa: F401  (a fixture)


@dataclass
class Flaky:
    """A backend answering its name, but 500 to every ``every``-th request (0: never), after
    ``delay`` seconds."""

    name: str
    every: int = 0
    delay: float = 0.0
    port: int = 0
    requests: int = 0
    failed: int = 0
    runner: web.AppRunner | None = None

    @property
    def addr(self) -> str:
        return f"127.0.0.1:{self.port}"


@pytest.fixture
async def flaky() -> AsyncIterator[Callable[..., Awaitable[Flaky]]]:
    started: list[Flaky] = []

    async def start(name: str, every: int = 0, delay: float = 0.0) -> Flaky:
        be = Flaky(name, every, delay)

        async def answer(request: web.Request) -> web.Response:
            be.requests += 1
            if be.delay:
                await asyncio.sleep(be.delay)
            if be.every and be.requests % be.every == 0:
                be.failed += 1
                return web.Response(status=500, text="failed\n")
            return web.Response(text=be.name + "\n")

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", answer)
        be.runner, be.port = await serve(app)
        started.append(be)
        return be

    yield start
    for be in started:
        assert be.runner is not None
        await be.runner.cleanup()


@dataclass
class Seen:
    """What polling the ramp saw: each (step, status) in order, with the time it was first seen."""

    steps: list[tuple[int, str, float]] = field(default_factory=list)
    end: str = ""


async def follow_ramp(api: Api, app: str = "shop", timeout: float = 60.0,
                      on_step: Callable[[int, str], Awaitable[None]] | None = None,
                      until_step: int | None = None) -> Seen:
    """Poll the ramp of ``app`` every 20 ms until it is done, paused or gone (``end``: "done",
    "paused", "gone"), or has reached ``until_step`` (``end``: "step"); ``on_step`` is awaited
    at each new (step, status)."""
    seen = Seen()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status, body, _ = await api.call("GET", f"/apps/{app}/release/ramp")
        if status == 404:
            seen.end = "gone"
            return seen
        assert status == 200, body
        ramp = body["ramp"]
        now = (ramp["step"], ramp["status"])
        if not seen.steps or seen.steps[-1][:2] != now:
            seen.steps.append((*now, time.monotonic()))
            if on_step is not None:
                await on_step(*now)
        if ramp["status"] != "running":
            seen.end = ramp["status"]
            return seen
        if until_step is not None and ramp["step"] >= until_step:
            seen.end = "step"
            return seen
        await asyncio.sleep(0.02)
    raise AssertionError(f"the ramp of {app} still runs after {timeout} s: {seen.steps}")


async def history(api: Api, app: str = "shop") -> list[dict[str, Any]]:
    """The app's history, oldest first."""
    status, body, _ = await api.call("GET", f"/history?app={app}&limit=1000")
    assert status == 200, body
    return list(reversed(body["history"]))


async def metric(s: aiohttp.ClientSession, admin_url: str, line_start: str) -> float | None:
    """The value of the first series whose line starts with ``line_start``."""
    async with s.get(admin_url + "/metrics") as r:
        for line in (await r.text()).splitlines():
            if line.startswith(line_start):
                return float(line.rsplit(" ", 1)[1])
    return None
