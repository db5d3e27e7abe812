"""Preview routing through the request path, in memory (tests/memory.py): which service each
request reaches, exactly, with and without a marker; the pin a preview request leaves alone; the
preview link's redirect; and the tokens (router.dataplane.sticky)."""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from router.dataplane.sticky import PREVIEW_TOKEN_LEN, TokenCodec
from router.dataplane.table import TableBuilder
from tests.memory import Request, Wire

WEB, V2 = "10.0.0.1:80", "10.0.0.2:80"
STARTED = "2026-11-26T14:33:18Z"


def answer_with(name: bytes) -> Any:
    def ok(req: Request) -> tuple[list[bytes], bool]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b" % (len(name), name)], False
    return ok


def wire(web: int = 100, v2: int = 0, open_release: bool = True, **app: Any) -> Wire:
    w = Wire({"apps": {"shop": {"routes": ["shop.test"], "services": {
        "web": {"weight": web, "backends": [WEB]}, "v2": {"weight": v2, "backends": [V2]}},
        **app}}})
    w.backend(WEB).answer = answer_with(b"web")
    w.backend(V2).answer = answer_with(b"v2")
    if open_release:
        release(w)
    return w


def release(w: Wire, new: str | None = "v2", started: str = STARTED) -> None:
    """The routing table as the router builds it with (or without) an open release of ``new``."""
    w.ctx.table = w.builder.build(w.config.apps, 2, {"shop": (new, started)} if new else {})


def token(w: Wire, app: str = "shop", new: str = "v2", started: str = STARTED,
          ttl: int = 600) -> bytes:
    now = int(time.time())
    return w.codec.issue_preview(app.encode(), w.codec.preview_id(app, new, 0, started), now,
                                 now + ttl)


def send(w: Wire, extra: bytes = b"", target: bytes = b"/") -> tuple[int, dict[bytes, bytes],
                                                                    bytes]:
    c = w.client()
    c.send(b"GET " + target + b" HTTP/1.1\r\nHost: shop.test\r\n" + extra + b"\r\n")
    head, _, body = c.received().partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = {k.lower(): v for k, _, v in (line.partition(b": ") for line in lines[1:])}
    return int(lines[0].split()[1]), fields, body


def bodies(w: Wire, n: int, extra: bytes = b"") -> list[bytes]:
    return [send(w, extra)[2] for _ in range(n)]


def preview_count(w: Wire, service: str) -> int:
    return w.ctx.table.apps["shop"].by_name[service].stats.preview


def test_no_marker_no_preview_request_reaches_a_weight_0_version() -> None:
    w = wire(preview={"header": "X-Preview"})
    assert bodies(w, 20) == [b"web"] * 20
    assert bodies(w, 5, b"X-Preview: web\r\n") == [b"web"] * 5   # another value: not a marker
    assert bodies(w, 5, b"X-Previews: v2\r\n") == [b"web"] * 5   # another field
    assert w.backend(V2).requests() == [] and preview_count(w, "v2") == 0


def test_header_marker_reaches_the_new_version_unpinned() -> None:
    w = wire(preview={"header": "X-Preview"})
    for field in (b"X-Preview: v2\r\n", b"x-preview:  v2 \r\n"):
        status, fields, body = send(w, field)
        assert (status, body) == (200, b"v2") and b"set-cookie" not in fields
    assert preview_count(w, "v2") == 2


def test_header_marker_with_a_configured_value() -> None:
    w = wire(preview={"header": "X-Canary", "value": "s3cret"})
    assert bodies(w, 2, b"X-Canary: v2\r\n") == [b"web", b"web"]
    assert bodies(w, 2, b"X-Canary: s3cret\r\n") == [b"v2", b"v2"]


def test_no_header_marker_without_the_setting_but_the_cookie_works() -> None:
    w = wire()
    assert bodies(w, 3, b"X-Preview: v2\r\n") == [b"web"] * 3
    cookie = b"Cookie: CONTAINERID_PREVIEW=" + token(w) + b"\r\n"
    assert bodies(w, 3, cookie) == [b"v2"] * 3
    assert preview_count(w, "v2") == 3


def test_a_pinned_client_keeps_its_pin_while_previewing() -> None:
    w = wire(preview={"header": "X-Preview"})
    status, fields, body = send(w)
    pin = fields[b"set-cookie"].split(b";")[0]  # CONTAINERID=... pinned to web
    assert body == b"web" and pin.startswith(b"CONTAINERID=")
    both = b"Cookie: " + pin + b"; CONTAINERID_PREVIEW=" + token(w) + b"\r\n"
    for _ in range(3):
        status, fields, body = send(w, both)
        assert body == b"v2" and b"set-cookie" not in fields  # neither moved nor refreshed
    status, fields, body = send(w, b"Cookie: " + pin + b"\r\n")
    assert body == b"web"  # without the preview cookie: its version, as before
    assert w.ctx.table.apps["shop"].by_name["web"].stats.sticky == 1


def test_a_preview_request_weighted_to_the_new_version_is_pinned_as_any() -> None:
    w = wire(web=50, v2=50, preview={"header": "X-Preview"})
    # Smooth weighted round robin at 1:1 alternates web, v2. A marked request the weights send
    # to web goes to v2 unpinned; one they send to v2 is pinned there as usual.
    got = []
    for _ in range(4):
        status, fields, body = send(w, b"X-Preview: v2\r\n")
        got.append((body, b"set-cookie" in fields))
    assert got == [(b"v2", False), (b"v2", True), (b"v2", False), (b"v2", True)]
    assert preview_count(w, "v2") == 4 and preview_count(w, "web") == 0


def test_preview_link_sets_the_cookie_and_redirects_without_the_token() -> None:
    w = wire()
    t = token(w, ttl=120)
    for target, location in [(b"/?router-preview=" + t, b"/"),
                             (b"/cart?a=1&router-preview=" + t, b"/cart?a=1"),
                             (b"/cart?router-preview=" + t + b"&a=1", b"/cart?a=1"),
                             (b"/cart?a=1&router-preview=" + t + b"&b=2", b"/cart?a=1&b=2")]:
        status, fields, body = send(w, target=target)
        assert status == 303 and fields[b"location"] == location
        cookie = fields[b"set-cookie"]
        assert re.fullmatch(rb"CONTAINERID_PREVIEW=" + re.escape(t)
                            + rb"; Path=/; Max-Age=1(19|20); HttpOnly; SameSite=Lax", cookie)
    assert w.backend(V2).requests() == [] and w.backend(WEB).requests() == []


def test_the_preview_redirect_to_head_has_no_body() -> None:
    w = wire()
    c = w.client()
    c.send(b"HEAD /?router-preview=" + token(w) + b" HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    head, _, body = c.take().partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 303 ") and b"\r\nContent-Length: 5" in head and body == b""
    c.send(b"GET / HTTP/1.1\r\nHost: shop.test\r\n\r\n")
    assert c.take().startswith(b"HTTP/1.1 200 ")


@pytest.mark.parametrize("bad", ["forged", "expired", "other release", "other app",
                                 "sticky token"])
def test_a_marker_that_does_not_verify_is_no_marker(bad: str) -> None:
    w = wire()
    good = token(w)
    t = {"forged": good[:-2] + (b"BB" if good.endswith(b"AA") else b"AA"),
         "expired": token(w, ttl=-1),
         "other release": token(w, started="2026-11-26T14:33:19Z"),
         "other app": token(w, app="cart"),
         "sticky token": w.codec.issue(b"shop", w.codec.service_id("shop", "v2"),
                                       w.codec.backend_id("shop", "v2", V2), int(time.time()),
                                       int(time.time()))}[bad]
    assert bodies(w, 2, b"Cookie: CONTAINERID_PREVIEW=" + t + b"\r\n") == [b"web", b"web"]
    # A link with it is an ordinary request, sent on as it came.
    status, fields, body = send(w, target=b"/?router-preview=" + t)
    assert (status, body) == (200, b"web")
    assert w.backend(WEB).requests()[-1].target == b"/?router-preview=" + t
    assert w.backend(V2).requests() == []


def test_markers_do_nothing_once_the_release_is_closed() -> None:
    w = wire(preview={"header": "X-Preview"})
    cookie = b"Cookie: CONTAINERID_PREVIEW=" + token(w) + b"\r\n"
    assert bodies(w, 1, cookie) == [b"v2"]
    release(w, None)  # rolled back or confirmed: no open release
    assert bodies(w, 3, cookie) == [b"web"] * 3
    assert bodies(w, 3, b"X-Preview: v2\r\n") == [b"web"] * 3
    status, _, body = send(w, target=b"/?router-preview=" + token(w))
    assert (status, body) == (200, b"web")
    # A later release of a service of the same name is another release: the old token fails.
    release(w, "v2", "2026-11-27T09:00:00Z")
    assert bodies(w, 2, cookie) == [b"web"] * 2
    assert bodies(w, 2, b"X-Preview: v2\r\n") == [b"v2"] * 2  # the header names the service
    assert len(w.backend(V2).requests()) == 3


def test_preview_of_a_new_version_without_a_healthy_backend_is_a_503() -> None:
    w = wire(preview={"header": "X-Preview"})
    for be in w.builder.all_backends():
        if be.key == V2:
            be.healthy = False
    release(w)
    status, fields, body = send(w, b"X-Preview: v2\r\n")
    assert (status, body) == (503, b"preview: the new version has no healthy backend\n")
    assert fields[b"retry-after"] == b"5"
    assert bodies(w, 2) == [b"web", b"web"]


def test_tables_carry_a_preview_only_for_apps_with_an_open_release() -> None:
    codec = TokenCodec(b"k" * 32, 1800, 28800)
    from router.config import config_from_dict
    apps = config_from_dict({"apps": {
        "shop": {"routes": ["shop.test"], "preview": {"header": "X-Preview"},
                 "services": {"web": {"backends": [WEB]}, "v2": {"weight": 0, "backends": [V2]}}},
        "cart": {"routes": ["cart.test"], "services": {"web": {"backends": [WEB]}}}}}).apps
    b = TableBuilder(codec)
    assert all(a.preview is None for a in b.build(apps, 1).apps.values())
    t = b.build(apps, 2, {"shop": ("v2", STARTED), "cart": ("gone", STARTED)})
    pv = t.apps["shop"].preview
    assert pv is not None and pv.service is t.apps["shop"].by_name["v2"]
    assert (pv.header, pv.value) == (b"x-preview", b"v2")
    assert pv.token_id == codec.preview_id("shop", "v2", 0, STARTED)
    assert t.apps["cart"].preview is None  # a release whose service is not there: nothing


def test_preview_tokens() -> None:
    codec = TokenCodec(b"k" * 32, 1800, 28800)
    pid = codec.preview_id("shop", "v2", 0, STARTED)
    t = codec.issue_preview(b"shop", pid, 1000, 2000)
    assert len(t) == PREVIEW_TOKEN_LEN and re.fullmatch(rb"[A-Za-z0-9_-]+", t)
    assert codec.verify_preview(b"shop", t, 1999) == (pid, 2000)
    assert codec.verify_preview(b"shop", t, 2000) is None  # expired
    assert codec.verify_preview(b"cart", t, 1500) is None
    assert TokenCodec(b"j" * 32, 1800, 28800).verify_preview(b"shop", t, 1500) is None
    assert codec.verify(b"shop", t, 1500) is None  # never a sticky pin
    for bad in (t[:-1], t + b"A", t.replace(t[5:6], b"+" if t[5:6] != b"+" else b"-"), b""):
        assert codec.verify_preview(b"shop", bad, 1500) is None
    assert pid != codec.preview_id("shop", "v2", 0, "2026-11-26T14:33:19Z")
    assert pid != codec.service_id("shop", "v2")


def test_a_preview_request_retried_elsewhere_is_still_not_pinned() -> None:
    other = "10.0.0.3:80"
    w = Wire({"apps": {"shop": {"routes": ["shop.test"], "preview": {"header": "X-Preview"},
                                "services": {"web": {"weight": 100, "backends": [WEB]},
                                             "v2": {"weight": 0, "backends": [V2, other]}}}}})
    w.backend(WEB).answer = answer_with(b"web")
    w.backend(other).answer = answer_with(b"v2 other")
    w.backend(V2).refuse = True  # connect refused: the request goes to v2's other backend
    release(w)
    status, fields, body = send(w, b"X-Preview: v2\r\n")
    assert (status, body) == (200, b"v2 other") and b"set-cookie" not in fields
    w.backend(other).refuse = True  # and now to web by weight: still not pinned
    w.close_backend(other)  # its pooled connection too
    status, fields, body = send(w, b"X-Preview: v2\r\n")
    assert (status, body) == (200, b"web") and b"set-cookie" not in fields
