"""Binding before listening: a taken address is an error naming it; no SO_REUSEPORT."""

from __future__ import annotations

import socket

import pytest

from router.process.listeners import ListenError, bind, listen, port_of


def test_taken_address_is_named():
    first = bind("127.0.0.1", 0, "data plane")
    try:
        port = port_of(first)
        # Two routers starting at once may both bind; the second to listen fails, naming it.
        second = bind("127.0.0.1", port, "admin API")
        listen(first, 16, "data plane")
        with pytest.raises(ListenError) as e:
            listen(second, 16, "admin API")
        assert str(e.value) == f"cannot listen on 127.0.0.1:{port} (admin API): address already in use"
        second[0].close()
        # Once one listens, a later router fails at bind.
        with pytest.raises(ListenError) as e:
            bind("127.0.0.1", port, "data plane")
        assert str(e.value) == f"cannot listen on 127.0.0.1:{port} (data plane): address already in use"
        # A process that asks for SO_REUSEPORT cannot join it either.
        other = socket.socket()
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        with pytest.raises(OSError):
            other.bind(("127.0.0.1", port))
        other.close()
        assert not first[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT)
    finally:
        for s in first:
            s.close()


def test_ipv6_and_unknown_hosts():
    try:
        socks = bind("::1", 0, "data plane")
    except ListenError:
        pytest.skip("no IPv6 loopback here")
    try:
        assert socks[0].getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
    finally:
        for s in socks:
            s.close()
    with pytest.raises(ListenError, match=r"cannot listen on no-such-host\.invalid:80 \(data plane\)"):
        bind("no-such-host.invalid", 80, "data plane")
