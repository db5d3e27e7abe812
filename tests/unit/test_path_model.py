"""Generated paths against models of how common backends read a path.

The router routes by path prefix; the backend then reads the forwarded path its own way. If the
backend's reading is a path the router would route to another app, a client reaches that app's
paths through this app's route (``/;/admin/x`` routed to the root app, which Tomcat serves as
``/admin/x``). The invariant, for every generated target: the router refuses it (400), or routes
it to the app it would route each model backend's reading to (or that backend refuses the path
itself). A backend that reads the path literally agrees with the router by construction.

The models follow the real code paths:

- Tomcat 10.1 (``CoyoteAdapter.postParseRequest``): ``;parameters`` removed from each segment of
  the raw path, then percent-decoding (an encoded ``/`` or ``\\`` and a NUL are refused), then
  ``normalize``: a ``\\`` refused, runs of ``/`` merged, ``.`` and ``..`` segments resolved, above
  the root refused;
- Spring MVC's ``UrlPathHelper`` (``removeSemicolonContent``, then decoding, then
  ``getSanitizedPath`` merging ``//``), dot segments left as they are.
"""

from __future__ import annotations

import itertools
import re
from typing import Callable

from hypothesis import given, settings
from hypothesis import strategies as st

from router.http.request_head import normalise_path

# The apps' path prefixes, as the routing table matches them: whole segments, longest first.
PREFIXES = (b"/api/v1", b"/admin", b"/a", b"/")


def app_of(path: bytes) -> bytes:
    for prefix in PREFIXES:
        if prefix == b"/" or path == prefix or path.startswith(prefix + b"/"):
            return prefix
    raise AssertionError(path)


_PCT = re.compile(rb"%([0-9A-Fa-f]{2})")


def _decode(path: bytes) -> bytes | None:
    if path.count(b"%") != len(_PCT.findall(path)):
        return None  # a malformed escape: 400 in both
    return _PCT.sub(lambda m: bytes((int(m.group(1), 16),)), path)


def _strip_parameters(path: bytes) -> bytes:
    return b"/".join(seg.split(b";", 1)[0] for seg in path.split(b"/"))


def tomcat(path: bytes) -> bytes | None:
    path = _strip_parameters(path)
    if re.search(rb"%(2[fF]|5[cC]|00)", path):
        return None  # encodedSolidusHandling=reject, and no encoded "\" or NUL
    decoded = _decode(path)
    if decoded is None or b"\\" in decoded:
        return None  # ALLOW_BACKSLASH is false by default
    out: list[bytes] = []
    for seg in decoded.split(b"/")[1:]:
        if seg == b"..":
            if not out:
                return None  # above the root
            out.pop()
        elif seg not in (b"", b"."):
            out.append(seg)
    trailing = decoded.endswith(b"/") or decoded.split(b"/")[-1] in (b".", b"..")
    return b"/" + b"/".join(out) + (b"/" if trailing and out else b"")


def spring(path: bytes) -> bytes | None:
    decoded = _decode(_strip_parameters(path))
    if decoded is None:
        return None
    while b"//" in decoded:
        decoded = decoded.replace(b"//", b"/")
    return decoded


MODELS: dict[str, Callable[[bytes], bytes | None]] = {"tomcat": tomcat, "spring": spring}


def routed_app(path: bytes) -> bytes:
    """The app the router sends ``path`` to (by its literal prefix if the router refuses it)."""
    out = normalise_path(path)
    return app_of(path if out is None else out[1])

# Pieces a path is made of: every character that changes how a backend reads it, in the raw and
# percent-encoded forms, and the names of the apps' prefixes.
PIECES = [b"/", b"//", b";", b";x", b";a=b", b".", b"..", b"%2e", b"%2E%2e", b"%", b"%2f",
          b"%2F", b"%5c", b"%3b", b"%00", b"%41", b"%61dmin", b"\\", b"a", b"admin", b"api",
          b"v1", b"x", b"%7e", b"~"]
# Every path of up to this many pieces is checked (16,276 of them, a tenth of a second); longer
# ones are generated.
EVERY_UP_TO = 3
paths = st.lists(st.sampled_from(PIECES), min_size=EVERY_UP_TO + 1, max_size=10).map(
    lambda parts: b"/" + b"".join(parts))


def _refused_or_routed_as_read(target: bytes) -> None:
    out = normalise_path(target)
    if out is None:
        return  # 400: nothing forwarded
    forwarded, routed = out
    for name, read in MODELS.items():
        seen = read(forwarded)
        if seen is None:
            continue  # that backend answers 400 itself
        assert routed_app(seen) == app_of(routed), (name, target, forwarded, routed, seen)
    assert normalise_path(forwarded) == out  # normalising is idempotent


def test_every_short_path_is_refused_or_routed_to_the_app_every_backend_reads() -> None:
    for n in range(EVERY_UP_TO + 1):
        for parts in itertools.product(PIECES, repeat=n):
            _refused_or_routed_as_read(b"/" + b"".join(parts))


# Hypothesis spends milliseconds on each example, the check microseconds: a few hundred of the
# longer paths, shrunk to the shortest failing one.
@settings(max_examples=500, deadline=None)
@given(paths)
def test_a_path_is_refused_or_routed_to_the_app_every_backend_reads(target: bytes) -> None:
    _refused_or_routed_as_read(target)


def test_parameters_alone_in_a_segment_do_not_hide_a_prefix() -> None:
    # Tomcat reads /;/admin/x as /admin/x: the router routes it to /admin, not to the root app.
    assert normalise_path(b"/;/admin/x") == (b"/;/admin/x", b"/admin/x")
    assert normalise_path(b"/;x/;y/admin") == (b"/;x/;y/admin", b"/admin")
