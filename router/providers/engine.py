"""A small client of the Docker Engine API: aiohttp over the Engine's Unix socket (or TCP).

Only what the provider needs: list containers, services, tasks and nodes, follow the event
stream, stop and remove containers, remove services. Paths carry API version 1.41 (Docker
20.10), which every Engine since then still serves, so the answers have one shape.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any, AsyncIterator

import aiohttp

API = "/v1.41"


class DockerError(Exception):
    """The Engine API could not be reached, or answered with an error status."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class DockerClient:
    """One connection pool to one Engine; ``endpoint`` is ``unix:///path`` or ``tcp://h:p``."""

    def __init__(self, endpoint: str, timeout: float = 10.0) -> None:
        self.endpoint = endpoint
        self._timeout = timeout
        if endpoint.startswith("unix://"):
            self._connector_args: tuple[str | None, str] = (endpoint[len("unix://"):],
                                                            "http://docker")
        else:
            self._connector_args = (None, "http://" + endpoint.split("://", 1)[1])
        self._session: aiohttp.ClientSession | None = None

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            path, _ = self._connector_args
            connector: aiohttp.BaseConnector = (aiohttp.UnixConnector(path=path) if path is not None
                                                else aiohttp.TCPConnector())
            self._session = aiohttp.ClientSession(connector=connector)
        return self._session

    def _url(self, path: str) -> str:
        return self._connector_args[1] + API + path

    async def request(self, method: str, path: str, params: dict[str, str] | None = None,
                      timeout: float | None = None) -> Any:
        """The decoded JSON answer (None for an empty one); ``DockerError`` otherwise."""
        total = timeout if timeout is not None else self._timeout
        try:
            async with self._http().request(method, self._url(path), params=params,
                                            timeout=aiohttp.ClientTimeout(total=total)) as resp:
                body = await resp.read()
        except TimeoutError:
            raise DockerError(f"{method} {path}: no answer from {self.endpoint} within "
                              f"{total:g} s") from None
        except (aiohttp.ClientError, OSError) as e:
            raise DockerError(f"{method} {path}: {self.endpoint}: {str(e) or type(e).__name__}"
                              ) from None
        if resp.status >= 400:
            raise DockerError(f"{method} {path}: {resp.status} {_message(body)}", resp.status)
        if not body:
            return None
        try:
            return json.loads(body)
        except ValueError:
            raise DockerError(f"{method} {path}: not JSON: {body[:100]!r}") from None

    async def get(self, path: str, **params: str) -> Any:
        return await self.request("GET", path, params or None)

    async def events(self, filters: dict[str, list[str]],
                     opened: asyncio.Event | None = None) -> AsyncIterator[dict[str, Any]]:
        """The event stream from now on, one decoded event at a time, until it breaks
        (``DockerError``). ``opened`` is set once the Engine has accepted the stream: a listing
        made after that misses no event."""
        url = self._url("/events")
        params = {"filters": json.dumps(filters)}
        # No total timeout: the stream is open for as long as the Engine runs.
        limit = aiohttp.ClientTimeout(total=None, sock_connect=self._timeout)
        try:
            async with self._http().get(url, params=params, timeout=limit) as resp:
                if resp.status >= 400:
                    raise DockerError(f"GET /events: {resp.status} {_message(await resp.read())}",
                                      resp.status)
                if opened is not None:
                    opened.set()
                while True:
                    line = await resp.content.readline()
                    if not line:
                        break
                    if line.strip():
                        yield json.loads(line)
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise DockerError(f"{self.endpoint}: event stream: {str(e) or type(e).__name__}"
                              ) from None
        raise DockerError(f"{self.endpoint}: the event stream ended")

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def _message(body: bytes) -> str:
    try:
        return str(json.loads(body)["message"])
    except (ValueError, KeyError, TypeError):
        return body[:200].decode("utf-8", "replace")
