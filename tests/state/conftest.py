"""Fixtures of the routing-state tests (reload, apply, history, export, the walkthrough)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from tests.integration.test_admin_api import admin_api  # noqa: F401  (a fixture)


async def wait_log(rp: Any, text: str, count: int = 1, timeout: float = 10.0) -> str:
    """Wait until the router's log holds ``text`` ``count`` times; the log."""
    deadline = time.monotonic() + timeout
    while True:
        log = rp.log()
        if log.count(text) >= count:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not {count} times in the log within {timeout} s:\n"
                                 + log[-3000:])
        await asyncio.sleep(0.05)
