"""Active health checks of backends.

Every backend of a service with a ``health_check`` is probed every ``interval``: an HTTP
``GET <path>`` that must answer 2xx or 3xx within ``timeout``, or, with no path, a TCP
connect. ``fall`` failures in a row mark it unhealthy (no new requests), ``rise`` successes
in a row healthy again -- HAProxy's ``check inter rise fall``. A backend starts healthy, as
in HAProxy, so a configured service serves at once; the checker only takes it out.

Passive health (``passive_health`` in the configuration): the data plane reports every
failure of a request on a backend (cannot connect, reset or closed before the response on a
new connection, malformed response, response timeout) with ``report_failure``, and any
response with ``report_success``. ``failures`` in a row eject the backend for ``cooldown``:
it gets no new requests, then it is tried again (a failing one is ejected again at once, as
in nginx). An active check cannot end an ejection early -- a backend can pass its check and
still fail requests, which is what passive health is for -- but a backend that comes back
after the cooldown must also pass its active check if it has one. The last healthy backend
of a service is not ejected: the retries of its requests move them to another service.

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

# Consecutive request failures, only of backends that have some: the proxy's success path
# checks this dict's truth first, so a process without failures pays one test per response.
failing: dict[Backend, int] = {}
# The checker that owns each routed backend, and the backends of its service. The proxy
# reports by Backend object, which belongs to one TableBuilder, so routers never mix.
_owners: dict[Backend, tuple["HealthChecker", tuple[Backend, ...]]] = {}


def report_failure(be: Backend, failures: int, cooldown: float) -> None:
    """A request failed on ``be`` (before its response began, or cut mid-response)."""
    if failures <= 0:
        return
    n = failing.get(be, 0) + 1
    failing[be] = n
    if n >= failures:
        owner = _owners.get(be)
        if owner is not None:
            owner[0].eject(be, owner[1], cooldown, n)


def report_success(be: Backend) -> None:
    failing.pop(be, None)


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
    __slots__ = ("backend", "config", "task", "ok_run", "fail_run", "passed", "up")

    def __init__(self, backend: Backend, config: HealthCheckConfig) -> None:
        self.backend = backend
        self.config = config
        self.task: asyncio.Task[None] | None = None
        self.ok_run = 0
        self.fail_run = 0
        self.passed = 0  # successful probes so far (a release waits for one per backend)
        self.up = True  # the active check's own verdict; a backend starts healthy


class HealthChecker:
    """Runs one probe loop per checked backend; follows the configured apps."""

    def __init__(self, builder: TableBuilder, on_change: Callable[[], None]) -> None:
        self._builder = builder
        self._on_change = on_change
        self._checks: dict[tuple[str, str, str], _Check] = {}
        self._ejected: dict[Backend, asyncio.TimerHandle] = {}
        self._owned: set[Backend] = set()

    def update(self, apps: tuple[AppConfig, ...]) -> None:
        """Start checks for new or changed backends, stop those no longer configured."""
        wanted: dict[tuple[str, str, str], HealthCheckConfig] = {}
        owned: dict[Backend, tuple[Backend, ...]] = {}
        for app in apps:
            for svc in app.services:
                group = tuple(b for b in (self._builder.backend(app.name, svc.name, a)
                                          for a in svc.backends) if b is not None)
                for b in group:
                    owned[b] = group
                if svc.health_check is None:
                    continue
                for addr in svc.backends:
                    wanted[(app.name, svc.name, addr)] = svc.health_check
        for b in self._owned - owned.keys():
            _owners.pop(b, None)
            failing.pop(b, None)
            timer = self._ejected.pop(b, None)
            if timer is not None:
                timer.cancel()
        for b, group in owned.items():
            _owners[b] = (self, group)
        self._owned = set(owned)
        changed = False
        for key, check in list(self._checks.items()):
            if wanted.get(key) != check.config or self._builder.backend(*key) is not check.backend:
                if check.task is not None:
                    check.task.cancel()
                del self._checks[key]
                be = check.backend
                if not be.healthy and be not in self._ejected:
                    be.healthy = True  # unchecked backends are healthy
                    changed = True
        for key, cfg in wanted.items():
            if key in self._checks:
                continue
            found = self._builder.backend(*key)
            if found is None:
                continue
            check = _Check(found, cfg)
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
                if not check.up and check.ok_run >= cfg.rise:
                    check.up = True
                    if be not in self._ejected:
                        be.healthy = True
                        log.warning("backend %s of %s/%s is healthy again", be.key, key[0], key[1])
                        self._on_change()
            else:
                check.fail_run += 1
                check.ok_run = 0
                if check.up and check.fail_run >= cfg.fall:
                    check.up = False
                    if be.healthy:
                        be.healthy = False
                        log.warning("backend %s of %s/%s is unhealthy: %d failed checks",
                                    be.key, key[0], key[1], check.fail_run)
                        self._on_change()
            await asyncio.sleep(cfg.interval)

    # -- passive health ---------------------------------------------------------------------
    def eject(self, be: Backend, group: tuple[Backend, ...], cooldown: float, fails: int) -> None:
        if not be.healthy or be in self._ejected:
            return
        if not any(b.healthy for b in group if b is not be):
            return  # the last healthy backend of its service stays
        be.healthy = False
        failing.pop(be, None)
        self._ejected[be] = asyncio.get_running_loop().call_later(cooldown, self._readmit, be)
        log.warning("backend %s ejected for %gs: %d requests failed in a row", be.key, cooldown, fails)
        self._on_change()

    def ejected(self, be: Backend) -> bool:
        return be in self._ejected

    def _readmit(self, be: Backend) -> None:
        self._ejected.pop(be, None)
        check = next((c for c in self._checks.values() if c.backend is be), None)
        if check is None or check.up:
            be.healthy = True
            log.warning("backend %s back after its passive-health cooldown", be.key)
            self._on_change()

    def stop(self) -> None:
        for check in self._checks.values():
            if check.task is not None:
                check.task.cancel()
        self._checks.clear()
        for timer in self._ejected.values():
            timer.cancel()
        self._ejected.clear()
        for b in self._owned:
            _owners.pop(b, None)
            failing.pop(b, None)
        self._owned = set()
