"""The admin API of the ramp and of preview: status codes, error bodies, ETags, the shapes."""

from __future__ import annotations

from typing import Any

from tests.conftest import app_config, router_config
from tests.integration.test_admin_api import Api, _awaiting
from tests.processes import until


async def _router(admin_api: Any, backend: Any, **app: Any) -> tuple[Api, Any]:
    blue, green = await backend("blue"), await backend("green")
    api, srv = await admin_api(router_config({"shop": app_config(
        {"blue": (100, [blue.addr])}, routes=["shop.test", "example.test/shop"], **app)}))
    return api, green


async def _release(api: Api, green: Any) -> None:
    status, body, _ = await api.call("POST", "/apps/shop/release",
                                     {"service": "green", "backends": [green.addr]})
    assert status == 201, body
    await _awaiting(api)


def _error(status: int, body: Any) -> tuple[int, str, str | None]:
    return status, body["error"]["code"], body["error"]["field"]


async def test_ramp_endpoints_refuse_what_cannot_be(admin_api, backend):
    api, green = await _router(admin_api, backend)
    ramp = {"steps": [5, 100], "interval": "1h"}
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp", ramp)
    assert _error(status, body) == (404, "not_found", "release")
    status, body, _ = await api.call("POST", "/apps/nope/release/ramp", ramp)
    assert _error(status, body) == (404, "not_found", "app")
    for move in ("pause", "resume", "abort"):
        status, body, _ = await api.call("POST", f"/apps/shop/release/ramp/{move}")
        assert _error(status, body) == (404, "not_found", "release")
    await _release(api, green)
    status, body, _ = await api.call("GET", "/apps/shop/release/ramp")
    assert _error(status, body) == (404, "not_found", "ramp")
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp/pause")
    assert _error(status, body) == (409, "conflict", "ramp")
    for bad, field in [({"steps": [5, 100], "interval": "soon"}, "interval"),
                       ({"steps": []}, "steps"), ({"steps": [5], "max_error_rate": 2}, "max_error_rate"),
                       ({"steps": [5], "typo": 1}, "typo")]:
        status, body, _ = await api.call("POST", "/apps/shop/release/ramp", bad)
        assert _error(status, body) == (422, "invalid", field), body
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp", raw=b"{")
    assert status == 400
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp", ramp,
                                     headers={"If-Match": '"1"'})
    assert _error(status, body) == (412, "precondition_failed", "If-Match")
    status, body, headers = await api.call("POST", "/apps/shop/release/ramp", ramp)
    assert status == 201 and body["ramp"]["steps"] == [5, 100] and body["ramp"]["interval"] == 3600
    assert headers["etag"] == f'"{(await api.call("GET", "/apps/shop"))[1]["generation"]}"'
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp", ramp)
    assert _error(status, body) == (409, "conflict", "ramp")
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp/pause", {"now": True})
    assert _error(status, body) == (422, "invalid", "now")


async def test_ramp_progress_shows_the_step_and_its_window(admin_api, backend):
    api, green = await _router(admin_api, backend)
    await _release(api, green)
    status, _, _ = await api.call("POST", "/apps/shop/release/ramp",
                                  {"steps": [5, 100], "interval": "1h"})
    assert status == 201

    async def at_step_1() -> Any:
        got = await api.call("GET", "/apps/shop/release/ramp")
        return got if got[1]["ramp"]["step"] == 1 and got[1]["window"] is not None else None
    status, progress, headers = await until(at_step_1, 5, "the ramp at step 1, with a window")
    assert status == 200 and headers["cache-control"] == "no-store"
    assert (progress["app"], progress["new"], progress["old"]) == ("shop", "green", ["blue"])
    assert progress["driving"] is True and progress["last"] is None
    assert progress["ramp"]["status"] == "running" and progress["ramp"]["share"] == 5
    window = progress["window"]
    assert set(window) == {"seconds", "new", "old"} and window["seconds"] >= 0
    assert window["new"] == {"requests": 0, "errors": 0, "error_rate": 0.0, "latency": None,
                             "stuck": 0, "pinned": 0}
    status, body, _ = await api.call("POST", "/apps/shop/release/ramp/abort")
    assert status == 200 and body["ramp"] is None
    status, body, _ = await api.call("GET", "/apps/shop/release/ramp")
    assert _error(status, body) == (404, "not_found", "ramp")


async def test_preview_endpoint(admin_api, backend):
    api, green = await _router(admin_api, backend, preview={"header": "X-Canary",
                                                            "value": "s3cret"})
    status, body, _ = await api.call("POST", "/apps/shop/release/preview")
    assert _error(status, body) == (404, "not_found", "release")
    await _release(api, green)
    for ttl in ("0s", "8d", "soon", True):
        status, body, _ = await api.call("POST", "/apps/shop/release/preview", {"ttl": ttl})
        assert _error(status, body) == (422, "invalid", "ttl"), (ttl, body)
    status, body, _ = await api.call("POST", "/apps/shop/release/preview", {"for": "me"})
    assert _error(status, body) == (422, "invalid", "for")
    status, pv, headers = await api.call("POST", "/apps/shop/release/preview", {"ttl": "2h"})
    assert status == 200 and headers["cache-control"] == "no-store"
    token = pv["cookie"]["value"]
    # The data plane's port: the links reach this router (tests/integration/test_ctl.py
    # follows one).
    port = pv["links"][0].split(":")[2].split("/")[0]
    assert port.isdigit() and port != "80"
    assert pv["links"] == [f"http://shop.test:{port}/?router-preview={token}",
                           f"http://example.test:{port}/shop?router-preview={token}"]
    assert pv["cookie"]["name"] == "CONTAINERID_PREVIEW"
    assert pv["header"] == {"name": "X-Canary", "value": "s3cret"}
    status, pv2, _ = await api.call("POST", "/apps/shop/release/preview")  # default: 1 h
    assert pv2["expires_at"] < pv["expires_at"]


async def test_preview_setting_through_patch(admin_api, backend):
    api, _ = await _router(admin_api, backend)
    status, app, _ = await api.call("PATCH", "/apps/shop", {"preview": {"header": "X-Preview"}})
    assert status == 200 and app["preview"] == {"header": "X-Preview", "value": None}
    for bad, field in [({"header": "Host"}, "preview.header"),
                       ({"header": "X-Preview", "value": "a b"}, "preview.value"),
                       ("X-Preview", "preview")]:
        status, body, _ = await api.call("PATCH", "/apps/shop", {"preview": bad})
        assert _error(status, body) == (422, "invalid", field), body
    status, app, _ = await api.call("PATCH", "/apps/shop", {"preview": None})
    assert status == 200 and app["preview"] is None
