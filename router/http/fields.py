"""The header fields a request and a response treat alike on their way through the router.

Both ``request_head`` and ``response_head`` remove the hop-by-hop fields (RFC 9110 7.6.1) and
every field a ``Connection`` field names, but never the router's own fields and the cookies:
the names, and the one way a ``Connection`` field's names are read and removed, are here.
"""

from __future__ import annotations

from typing import Final

# Hop-by-hop fields (RFC 9110 7.6.1): meant for one connection, never passed on.
HOP: Final = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
                        b"transfer-encoding", b"upgrade"})
# The fields the router sets itself on a forwarded request, or frames the body with.
OWN: Final = frozenset({b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                        b"x-request-id", b"content-length", b"host"})
# What a Connection field may never remove.
PROTECTED: Final = OWN | {b"cookie", b"set-cookie"}


def connection_tokens(value: bytes, into: set[bytes] | None) -> set[bytes]:
    """The names in a ``Connection`` field's ``value``, lowercase, added to ``into`` (a new set
    with None): a field may come more than once."""
    toks = into if into is not None else set()
    for t in value.split(b","):
        t = t.strip().lower()
        if t:
            toks.add(t)
    return toks


def without_named(lines: list[bytes], tokens: set[bytes], start: int) -> list[bytes]:
    """``lines`` (from ``start`` on, one field each: ``name: value``) without the fields a
    ``Connection`` field's ``tokens`` name; the hop-by-hop fields are gone already, and the
    protected ones stay. The same list when it names none of them."""
    named = tokens - PROTECTED - HOP
    if not named:
        return lines
    return lines[:start] + [ln for ln in lines[start:]
                            if ln.split(b":", 1)[0].strip().lower() not in named]
