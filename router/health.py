"""Active health checks of backends.

Every backend of a service with a ``health_check`` is probed every ``interval``: an HTTP
``GET <path>`` that must answer 2xx or 3xx within ``timeout``, or, with no path, a TCP
connect. ``fall`` failures in a row mark it unhealthy (no new requests), ``rise`` successes
in a row healthy again -- HAProxy's ``check inter rise fall``. A backend starts healthy, as
in HAProxy, so a configured service serves at once; the checker only takes it out.

Health lives on the ``Backend`` object that successive routing tables share; a change asks
the owner for a new table (``on_change``) so candidates and pickers are recomputed.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Callable

from .config import AppConfig, HealthCheckConfig
from .table import Backend, TableBuilder

log = logging.getLogger("router.health")


async def probe(host: str, port: int, check: HealthCheckConfig) -> bool:
    """One check: True if the backend answered as it should within the timeout."""
    try:
        async with asyncio.timeout(check.timeout):
            reader, writer = await asyncio.open_connection(host, port)
            try:
                if check.path is None:
                    return True
                hosthdr = f"[{host}]" if ":" in host else host
                writer.write(f"GET {check.path} HTTP/1.1\r\nHost: {hosthdr}:{port}\r\n"
                             "User-Agent: router-health\r\nConnection: close\r\n\r\n".encode())
                line = await reader.readline()
                parts = line.split(None, 2)
                return (len(parts) >= 2 and parts[0].startswith(b"HTTP/1.")
                        and parts[1].isdigit() and 200 <= int(parts[1]) < 400)
            finally:
                writer.close()
    except (OSError, TimeoutError, ValueError):
        return False


class _Check:
    __slots__ = ("backend", "config", "task", "ok_run", "fail_run", "passed")

    def __init__(self, backend: Backend, config: HealthCheckConfig) -> None:
        self.backend = backend
        self.config = config
        self.task: asyncio.Task[None] | None = None
        self.ok_run = 0
        self.fail_run = 0
        self.passed = 0  # successful probes so far (a release waits for one per backend)


class HealthChecker:
    """Runs one probe loop per checked backend; follows the configured apps."""

    def __init__(self, builder: TableBuilder, on_change: Callable[[], None]) -> None:
        self._builder = builder
        self._on_change = on_change
        self._checks: dict[tuple[str, str, str], _Check] = {}

    def update(self, apps: tuple[AppConfig, ...]) -> None:
        """Start checks for new or changed backends, stop those no longer configured."""
        wanted: dict[tuple[str, str, str], HealthCheckConfig] = {}
        for app in apps:
            for svc in app.services:
                if svc.health_check is None:
                    continue
                for addr in svc.backends:
                    wanted[(app.name, svc.name, addr)] = svc.health_check
        changed = False
        for key, check in list(self._checks.items()):
            if wanted.get(key) != check.config or self._builder.backend(*key) is not check.backend:
                if check.task is not None:
                    check.task.cancel()
                del self._checks[key]
                if not check.backend.healthy:
                    check.backend.healthy = True  # unchecked backends are healthy
                    changed = True
        for key, cfg in wanted.items():
            if key in self._checks:
                continue
            be = self._builder.backend(*key)
            if be is None:
                continue
            check = _Check(be, cfg)
            check.task = asyncio.get_running_loop().create_task(self._run(key, check))
            self._checks[key] = check
        if changed:
            self._on_change()

    def passed(self, app: str, service: str, addr: str) -> bool | None:
        """Whether the backend has passed a check (None: it has no check)."""
        check = self._checks.get((app, service, addr))
        return None if check is None else check.passed > 0

    async def _run(self, key: tuple[str, str, str], check: _Check) -> None:
        cfg = check.config
        be = check.backend
        while True:
            ok = await probe(be.host, be.port, cfg)
            if ok:
                check.passed += 1
                check.ok_run += 1
                check.fail_run = 0
                if not be.healthy and check.ok_run >= cfg.rise:
                    be.healthy = True
                    log.warning("backend %s of %s/%s is healthy again", be.key, key[0], key[1])
                    self._on_change()
            else:
                check.fail_run += 1
                check.ok_run = 0
                if be.healthy and check.fail_run >= cfg.fall:
                    be.healthy = False
                    log.warning("backend %s of %s/%s is unhealthy: %d failed checks",
                                be.key, key[0], key[1], check.fail_run)
                    self._on_change()
            await asyncio.sleep(cfg.interval)

    def stop(self) -> None:
        for check in self._checks.values():
            if check.task is not None:
                check.task.cancel()
        self._checks.clear()
