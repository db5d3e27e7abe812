"""The history of changes through the admin API, with the file store: every kind of change,
who made it, filters, and the history kept across a restart."""

from __future__ import annotations

import json

from router.control.history import fingerprint
from tests.conftest import app_config, router_config
from tests.state.changes import check_history, every_kind_of_change

TOKEN = "history-token"


async def test_every_kind_of_change_gets_its_entry(backend, admin_api, tmp_path):
    b1, b2 = await backend("one"), await backend("two")
    (tmp_path / "token").write_text(TOKEN)
    cfg = router_config({"shop": app_config({"web": (100, [b1.addr])}, routes=["shop.test"])},
                        admin={"listen": "127.0.0.1:0", "token_file": str(tmp_path / "token")})
    store = str(tmp_path / "router-state.yaml")
    api, srv = await admin_api(cfg, store, TOKEN)
    expected = await every_kind_of_change(api, b1.addr, b2.addr)

    status, body, _ = await api.call("GET", "/history")
    assert status == 200 and list(body) == ["history"]
    entries = body["history"]
    seed = entries.pop()
    assert (seed["generation"], seed["operation"], seed["client"], seed["token"]) == (
        1, "seed", "router", None)
    assert seed["apps"] == ["shop"]
    check_history(entries, expected, "127.0.0.1", fingerprint(TOKEN), 2)
    assert TOKEN not in json.dumps(body)

    # Filters: by app (also one deleted since), newest first, limited.
    status, body, _ = await api.call("GET", "/history?app=blog")
    assert [e["operation"] for e in body["history"]] == ["delete_app", "apply"]
    status, body, _ = await api.call("GET", "/history?app=cart&limit=2")
    assert [e["operation"] for e in body["history"]] == ["apply", "confirm_release"]
    assert (await api.call("GET", "/history?app=nope"))[1] == {"history": []}
    for bad in ("limit=0", "limit=1001", "limit=x", "limit=%C2%B2", "app=Bad_Name"):
        status, err, _ = await api.call("GET", f"/history?{bad}")
        assert status == 422 and err["error"]["field"] == bad.split("=")[0], (bad, err)
    assert (await api.call("GET", "/history", headers={"Authorization": "Bearer x"}))[0] == 401

    # The log line of a change says what changed, as the entry does.
    # (kept in the store: a new router on the same store shows the same history)
    await srv.stop()
    api2, _ = await admin_api(cfg, store, TOKEN)
    status, again, _ = await api2.call("GET", "/history?limit=1000")
    assert again["history"] == entries + [seed]
    with open(tmp_path / "router-state.history.jsonl") as f:
        assert [json.loads(line) for line in f][::-1] == entries + [seed]


async def test_change_log_lines_say_what_changed(backend, admin_api, caplog):
    b1 = await backend("one")
    api, _ = await admin_api(router_config({"shop": app_config(
        {"web": (50, [b1.addr]), "v2": (50, [b1.addr])}, routes=["shop.test"])}))
    caplog.set_level("INFO", logger="router.admin")
    assert (await api.call("PUT", "/apps/shop/weights", {"web": 0, "v2": 100}))[0] == 200
    assert (await api.call("PUT", "/apps/shop/weights", {"web": 0, "v2": 100}))[0] == 200
    lines = [r.getMessage() for r in caplog.records if r.name == "router.admin"]
    assert lines == ["generation 2: set_weights of shop by 127.0.0.1: weights web 50->0, v2 50->100"]
