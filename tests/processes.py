"""Processes the tests start: free ports, waiting for one to answer, stopping by PID, a
router's workers; and the one bounded wait for a condition, :func:`until`. Without pytest, so
that the reliability harness (run standalone by ``benchmarks.reliability``) shares them."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import os
import signal
import socket
import subprocess
import time
from typing import Any, Callable, Iterable, Iterator

import aiohttp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def terminate(proc: subprocess.Popen[bytes], timeout: float) -> int:
    """SIGTERM, then SIGKILL if it has not exited within ``timeout`` seconds; its exit code."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
    return proc.wait()


async def until(check: Callable[[], Any], timeout: float, what: str,
                interval: float = 0.02) -> Any:
    """Call ``check`` (a plain or an async function) until it returns something true, and return
    that; AssertionError naming ``what`` (and the last value) after ``timeout`` seconds. The way
    a test waits for something to happen, rather than sleeping for as long as it usually takes."""
    deadline = time.monotonic() + timeout
    while True:
        got = check()
        if inspect.isawaitable(got):
            got = await got
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:g} s: {what} (last: {got!r})")
        await asyncio.sleep(interval)


async def answering(url: str, proc: subprocess.Popen[bytes], log: str, timeout: float = 30.0) -> None:
    """Wait until ``url`` answers 200; AssertionError with the end of ``log`` (a file) if
    ``proc`` exits or ``timeout`` passes first."""
    deadline = time.monotonic() + timeout
    async with aiohttp.ClientSession() as s:
        while True:
            try:
                async with s.get(url) as r:
                    if r.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                with open(log, errors="replace") as f:
                    raise AssertionError(f"{url} did not answer:\n" + f.read()[-3000:])
            await asyncio.sleep(0.05)


def worker_pids(master: int) -> list[int]:
    """The live child processes of ``master`` (a router's workers)."""
    out = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == master and fields[0] != "Z":
            out.append(int(pid))
    return sorted(out)


@contextlib.contextmanager
def stopped(pids: Iterable[int]) -> Iterator[None]:
    """``pids`` stopped (SIGSTOP) for the block, continued after it. The router's workers share
    one listening socket and which accepts a connection is a race: a stopped worker is the only
    one sure not to win it. The router's watchdog replaces a worker that stays silent longer
    than ``timeouts.worker``: set it above the block's length."""
    pids = list(pids)
    for pid in pids:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
