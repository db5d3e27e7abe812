"""One change of every kind through the admin API, and the history entry each must leave.

Used with the file store and with etcd: the entries must be the same.
"""

from __future__ import annotations

from typing import Any

from tests.integration.test_admin_api import Api, _awaiting

# (operation, apps, client, changes): "api" for the admin API's client, "router" for the router.
Expected = tuple[str, list[str], str, list[str]]


async def _ok(api: Api, method: str, path: str, body: Any = None) -> dict[str, Any]:
    status, out, _ = await api.call(method, path, body)
    assert status in (200, 201, 204), (method, path, status, out)
    return out or {}


async def _same(api: Api, method: str, path: str, body: Any) -> None:
    """A call that changes nothing: answered 200, the same generation."""
    before = (await api.call("GET", "/apps"))[2]["etag"]
    status, out, _ = await api.call(method, path, body)
    assert status == 200, (method, path, status, out)
    assert (await api.call("GET", "/apps"))[2]["etag"] == before, (method, path)


async def every_kind_of_change(api: Api, b1: str, b2: str) -> list[Expected]:
    """Makes them (the app "shop" exists, with no release); the expected entries, oldest first."""
    out: list[Expected] = []
    cart = {"routes": ["cart.test"], "services": {"web": {"weight": 100, "backends": [b1]}}}
    await _ok(api, "PUT", "/apps/cart", cart)
    out.append(("put_app", ["cart"], "api", [
        "app added (routes cart.test; session_sticky on; drain_timeout none)",
        f"service web added (weight 100; backends {b1})"]))
    await _same(api, "PUT", "/apps/cart", cart)

    patch = {"session_sticky": False, "drain_timeout": "10m"}
    await _ok(api, "PATCH", "/apps/cart", patch)
    out.append(("patch_app", ["cart"], "api", ["session_sticky on -> off",
                                                "drain_timeout none -> 10m"]))
    await _same(api, "PATCH", "/apps/cart", patch)

    await _ok(api, "PUT", "/apps/cart/services/web-v2", {"weight": 0, "backends": [b2]})
    out.append(("put_service", ["cart"], "api", [f"service web-v2 added (weight 0; backends {b2})"]))

    await _ok(api, "PUT", "/apps/cart/weights", {"web": 50, "web-v2": 50})
    out.append(("set_weights", ["cart"], "api", ["weights web 100->50, web-v2 0->50"]))
    await _same(api, "PUT", "/apps/cart/weights", {"web-v2": 50})

    await _ok(api, "DELETE", "/apps/cart/services/web-v2")
    out.append(("delete_service", ["cart"], "api", ["service web-v2 deleted"]))

    for new in ("v2", "v3"):
        await _ok(api, "POST", "/apps/cart/release", {"service": new, "backends": [b2]})
        out.append(("start_release", ["cart"], "api", [
            f"service {new} added (weight 0; backends {b2})",
            f"release of {new} started (in_progress; old: web)"]))
        await _awaiting(api, "cart")
        out.append(("release_ready", ["cart"], "router", [
            f"release of {new} in_progress -> awaiting_confirmation"]))
        if new == "v2":
            await _ok(api, "POST", "/apps/cart/release/rollback")
            out.append(("rollback_release", ["cart"], "api", [
                "service v2 deleted", "release of v2 rolled back (v2 deleted)"]))
    await _ok(api, "POST", "/apps/cart/release/confirm", {"force": True})
    out.append(("confirm_release", ["cart"], "api", [
        "service web deleted", "weights v3 0->100", "release of v3 confirmed (web deleted)"]))

    status, shop, _ = await api.call("GET", "/apps/shop")
    assert status == 200
    apps = {
        "shop": {k: shop[k] for k in ("routes", "session_sticky", "drain_timeout")}
        | {"services": {n: {k: s[k] for k in ("weight", "backends", "health_check")}
                        for n, s in shop["services"].items()}},
        "cart": {"routes": ["cart.test", "www.cart.test"], "session_sticky": False,
                 "drain_timeout": "10m", "services": {"v3": {"weight": 100, "backends": [b2]}}},
        "blog": {"routes": ["blog.test"], "services": {"w": {"backends": [b1]}}},
    }
    result = await _ok(api, "POST", "/apply", {"apps": apps})
    out.append(("apply", ["cart", "blog"], "api", [
        "cart: routes cart.test -> cart.test, www.cart.test",
        "blog: app added (routes blog.test; session_sticky on; drain_timeout none)",
        f"blog: service w added (weight 100; backends {b1})"]))
    assert result["changes"] == out[-1][3] and result["dry_run"] is False
    again = await _ok(api, "POST", "/apply", {"apps": apps})
    assert (again["changes"], again["generation"]) == ([], result["generation"])

    await _ok(api, "DELETE", "/apps/blog")
    out.append(("delete_app", ["blog"], "api", ["app deleted"]))
    return out


def check_history(entries: list[dict[str, Any]], expected: list[Expected], client: str,
                  token: str | None, first_generation: int) -> None:
    """``entries`` (newest first) are ``expected`` (oldest first) from ``first_generation`` on,
    each with its generation, and the API's ``client`` and ``token``."""
    got = [(e["operation"], e["apps"], e["client"], e["changes"]) for e in reversed(entries)]
    want = [(op, apps, client if who == "api" else "router", changes)
            for op, apps, who, changes in expected]
    assert got == want
    assert [e["generation"] for e in reversed(entries)] == list(
        range(first_generation, first_generation + len(expected)))
    for e in entries:
        assert e["token"] == (token if e["client"] != "router" else None), e
        assert len(e["time"]) == 20 and e["time"].endswith("Z")
