"""The router's listening sockets, bound before anything listens.

A router binds its data-plane and admin addresses first, and only once every one is bound does
any of them listen: a port already taken (listened on by another process) means exit 1 naming
it, with nothing served for a moment, as with nginx and HAProxy. No socket has SO_REUSEPORT: a
second process can never join our port and split its traffic. The worker processes of
``--workers N`` share the data-plane socket by inheriting it from the master (docs/workers.md
says why that, and not one SO_REUSEPORT socket per worker); a successor takes the very sockets
over from the router it replaces (docs/upgrade.md).
"""

from __future__ import annotations

import errno
import socket
from typing import Any


class ListenError(OSError):
    """An address that cannot be bound; the message names it and says why."""

    def __str__(self) -> str:
        return str(self.strerror)


def shown_address(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _infos(host: str, port: int, what: str) -> list[tuple[Any, ...]]:
    """``getaddrinfo`` for listening on host:port, each address once."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise ListenError(errno.EADDRNOTAVAIL,
                          f"cannot listen on {shown_address(host, port)} ({what}): {e}") from None
    seen = set()
    out = []
    for info in infos:
        if info[4] not in seen:
            seen.add(info[4])
            out.append(info)
    return out


def addresses(host: str, port: int) -> list[tuple[Any, ...]]:
    """The socket addresses ``bind(host, port)`` binds (a successor checks that the sockets it
    took over are the ones its configuration names)."""
    return [info[4] for info in _infos(host, port, "")]


def bind(host: str, port: int, what: str) -> list[socket.socket]:
    """Sockets bound to every address of ``host`` (one for an IP address), not yet listening.

    Port 0 asks the kernel for a free port, the same for every address. ``ListenError`` if any
    cannot be bound (those already bound are closed).
    """
    shown = shown_address(host, port)
    infos = _infos(host, port, what)
    socks: list[socket.socket] = []
    try:
        for family, kind, proto, _, addr in infos:
            sock = socket.socket(family, kind, proto)
            socks.append(sock)
            # SO_REUSEADDR lets a restarted router bind while old connections sit in TIME_WAIT;
            # on Linux it never lets two sockets listen on one address.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            if port == 0 and len(socks) > 1:
                addr = (addr[0], socks[0].getsockname()[1], *addr[2:])
            try:
                sock.bind(addr)
            except OSError as e:
                reason = (e.strerror or str(e)).lower()
                raise ListenError(e.errno or errno.EADDRINUSE,
                                  f"cannot listen on {shown} ({what}): {reason}") from None
    except BaseException:
        for s in socks:
            s.close()
        raise
    return socks


def listen(socks: list[socket.socket], backlog: int, what: str) -> None:
    """Start listening. Two routers started at the same instant may both bind (SO_REUSEADDR
    allows it until one listens): the second to listen gets the same error as a late one."""
    for s in socks:
        try:
            s.listen(backlog)
        except OSError as e:
            host, port = s.getsockname()[:2]
            reason = (e.strerror or str(e)).lower()
            raise ListenError(e.errno or errno.EADDRINUSE,
                              f"cannot listen on {shown_address(host, port)} ({what}): "
                              f"{reason}") from None


def port_of(socks: list[socket.socket]) -> int:
    return int(socks[0].getsockname()[1])
