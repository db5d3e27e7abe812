"""Continuous background traffic through the data plane while a test changes the routing: the
load behind every "N requests, 0 failed" in the suite."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from dataclasses import dataclass, field

import aiohttp

from tests.processes import until


@dataclass
class Load:
    """``clients`` loops each send one GET after another (``pause`` between) until ``stop``,
    ``max_requests`` in all, or ``max_seconds``: bounded in count and time.

    The first ``pinned`` clients keep the stickiness cookie, as browsers do; the others never
    send one. An answer counts in ``by_body`` (its body, stripped) when it is a 200 whose body
    is one of ``expect``; anything else, and every connection error, is in ``failed``.
    """

    url: str
    host: str = "app.test"
    clients: int = 4
    pinned: int = 0
    pause: float = 0.0
    expect: tuple[str, ...] = ("blue\n", "green\n")
    max_requests: int = 200_000
    max_seconds: float = 60.0
    sent: int = 0
    failed: list[str] = field(default_factory=list)
    by_body: Counter[str] = field(default_factory=Counter)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _stop: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def answered(self) -> int:
        return sum(self.by_body.values()) + len(self.failed)

    async def _client(self, keep_cookie: bool) -> None:
        deadline = time.monotonic() + self.max_seconds
        cookie: str | None = None
        async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as s:
            while not self._stop.is_set() and self.sent < self.max_requests and time.monotonic() < deadline:
                headers = {"Host": self.host}
                if cookie:
                    headers["Cookie"] = cookie
                self.sent += 1
                try:
                    async with s.get(self.url, headers=headers) as r:
                        body = (await r.read()).decode(errors="replace")
                        if r.status == 200 and body in self.expect:
                            self.by_body[body.strip()] += 1
                        else:
                            self.failed.append(f"{r.status} {body[:80]!r}")
                        if keep_cookie:
                            for morsel in r.cookies.values():
                                cookie = f"{morsel.key}={morsel.value}"
                except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                    self.failed.append(repr(e))
                if self.pause:
                    await asyncio.sleep(self.pause)  # the load's pace

    def start(self) -> None:
        self._tasks = [asyncio.get_running_loop().create_task(self._client(i < self.pinned))
                       for i in range(self.clients)]

    async def stop(self) -> None:
        self._stop.set()
        await asyncio.gather(*self._tasks)

    async def wait_more(self, n: int, timeout: float = 15.0) -> None:
        """Until ``n`` more requests have been answered (the load is really running)."""
        target = self.answered + n
        await until(lambda: self.answered >= target, timeout, f"{n} more answers from the load")
