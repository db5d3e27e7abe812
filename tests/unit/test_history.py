"""History entries: what ``describe`` says for every kind of change, exactly; the entry's JSON
form; changes that change nothing; and how the file store keeps the history."""

from __future__ import annotations

import asyncio
import json
import os
from dataclasses import replace
from typing import Any

import pytest

from router.control import state as ops
from router.config import config_from_dict
from router.errors import Conflict, PreconditionFailed
from router.control.history import HISTORY_LIMIT, ROUTER, Actor, Change, describe, fingerprint
from router.control.manager import StateManager
from router.control.transition import next_state
from router.control.release import Action
from router.control.store import FileStateStore
from router.control.store.file import history_path


def _apps(apps: dict[str, Any]) -> tuple:
    return config_from_dict({"apps": apps}).apps


def _svc(weight: int, *backends: str, **extra: Any) -> dict[str, Any]:
    return {"weight": weight, "backends": list(backends), **extra}


SHOP = {"routes": ["shop.test"], "services": {"web": _svc(50, "10.0.0.1:80"),
                                               "web-v2": _svc(50, "10.0.0.2:80")}}


def _state(apps: dict[str, Any] = {"shop": SHOP}) -> ops.State:
    return ops.State.initial(_apps(apps))


def _run(state: ops.State, op: ops.Operation, actor: Actor = ROUTER) -> ops.State:
    return next_state(state, op, None, None, actor)


def test_the_contract_example():
    new = _run(_state(), ops.set_weights("shop", {"web": 0, "web-v2": 100}),
               Actor("127.0.0.1", fingerprint("s3cret")))
    assert new.change is not None
    entry = new.change.to_dict()
    assert set(entry) == {"generation", "time", "client", "token", "operation", "apps", "changes"}
    assert entry["generation"] == 2 and entry["client"] == "127.0.0.1"
    assert entry["token"] == "sha256:1ec1c26b"
    assert entry["operation"] == "set_weights" and entry["apps"] == ["shop"]
    assert entry["changes"] == ["weights web 50->0, web-v2 50->100"]
    assert len(entry["time"]) == 20 and entry["time"].endswith("Z")
    assert Change.from_dict(json.loads(json.dumps(entry))) == new.change
    assert new.change.summary() == ("set_weights of shop by 127.0.0.1 (token sha256:1ec1c26b): "
                                    "weights web 50->0, web-v2 50->100")


def test_fingerprint_is_short_and_stable():
    import hashlib

    assert fingerprint("s3cret") == "sha256:" + hashlib.sha256(b"s3cret").hexdigest()[:8]
    assert fingerprint("s3cret") != fingerprint("s3cret2")


def test_seed_entry():
    s = _state()
    assert s.change is not None and s.change.to_dict()["operation"] == "seed"
    assert s.change.client == "router" and s.change.token is None
    assert s.change.changes == (
        "app added (routes shop.test; session_sticky on; drain_timeout none)",
        "service web added (weight 50; backends 10.0.0.1:80)",
        "service web-v2 added (weight 50; backends 10.0.0.2:80)")


CHANGES = [
    (ops.patch_app("shop", {"routes": ["shop.test", "example.com/shop"]}),
     ["routes shop.test -> shop.test, example.com/shop"]),
    (ops.patch_app("shop", {"session_sticky": False, "drain_timeout": "10m"}),
     ["session_sticky on -> off", "drain_timeout none -> 10m"]),
    (ops.put_service("shop", "web", _svc(50, "10.0.0.1:80", "10.0.0.3:80")),
     ["backends web +10.0.0.3:80"]),
    (ops.put_service("shop", "web", _svc(50, "10.0.0.3:80")),
     ["backends web +10.0.0.3:80, -10.0.0.1:80"]),
    (ops.put_service("shop", "web", _svc(20, "10.0.0.1:80", health_check={
        "path": "/healthz", "interval": "2s"})),
     ["weights web 50->20",
      "health_check web none -> GET /healthz every 2s, timeout 1s, rise 2, fall 3"]),
    (ops.put_service("shop", "web-v3", _svc(0, "10.0.0.9:80", health_check={"interval": 1})),
     ["service web-v3 added (weight 0; backends 10.0.0.9:80; health_check TCP connect every "
      "1s, timeout 1s, rise 2, fall 3)"]),
    (ops.delete_service("shop", "web-v2"), ["service web-v2 deleted"]),
    (ops.put_app("shop", {"routes": ["shop.test"], "services": {
        "web-v2": _svc(50, "10.0.0.2:80"), "web": _svc(50, "10.0.0.1:80")}}),
     ["order of services web, web-v2 -> web-v2, web"]),
    (ops.put_app("blog", {"routes": ["blog.test"], "session_sticky": False,
                          "services": {"w": _svc(100, "10.0.0.5:80")}}),
     ["app added (routes blog.test; session_sticky off; drain_timeout none)",
      "service w added (weight 100; backends 10.0.0.5:80)"]),
    (ops.delete_app("shop"), ["app deleted"]),
    (ops.start("shop", {"service": "web-v3", "backends": ["10.0.0.9:80"]}),
     ["service web-v3 added (weight 0; backends 10.0.0.9:80)",
      "release of web-v3 started (in_progress; old: web, web-v2)"]),
]


@pytest.mark.parametrize(("op", "changes"), CHANGES, ids=[c[1][0][:40] for c in CHANGES])
def test_every_kind_of_change_is_described(op, changes):
    before = _state()
    new = _run(before, op)
    assert new.generation == 2 and new.change is not None
    assert list(new.change.changes) == changes
    assert new.change.operation == op.name
    apps = [n for n in ("shop", "blog") if n in {a.name for a in new.apps} | {"shop"}]
    assert list(new.change.apps) == [n for n in apps if n in new.change.apps]


def test_release_lifecycle_descriptions():
    s = _run(_state(), ops.start("shop", {"service": "web-v3", "backends": ["10.0.0.9:80"]}))
    ready = _run(s, ops.mark_ready("shop", "web-v3"))
    assert ready.change.operation == "release_ready"
    assert ready.change.changes == ("release of web-v3 in_progress -> awaiting_confirmation",)
    back = _run(ready, ops.put_service("shop", "web-v3", _svc(0, "10.0.0.8:80")))
    assert back.change.changes == ("backends web-v3 +10.0.0.8:80, -10.0.0.9:80",
                                   "release of web-v3 awaiting_confirmation -> in_progress")
    moved = _run(ready, ops.set_weights("shop", {"web": 0, "web-v3": 100}))
    rolled = _run(moved, ops.rollback("shop"))
    assert rolled.change.operation == "rollback_release"
    assert rolled.change.changes == ("service web-v3 deleted", "weights web 0->50",
                                     "release of web-v3 rolled back (web-v3 deleted)")
    confirmed = _run(ready, ops.confirm("shop", force=True))
    assert confirmed.change.changes == (
        "service web deleted", "service web-v2 deleted", "weights web-v3 0->100",
        "release of web-v3 confirmed (web, web-v2 deleted)")
    gone = _run(ready, ops.delete_app("shop"))
    assert gone.change.changes == ("app deleted", "release of web-v3 closed (app deleted)")


def test_several_apps_name_the_app_in_each_change():
    both = _apps({"shop": {**SHOP, "services": {"web": _svc(100, "10.0.0.1:80")}},
                  "blog": {"routes": ["blog.test"], "services": {"w": _svc(100, "10.0.0.5:80")}}})
    new = _run(_state(), ops.apply_apps(both))
    assert new.change.operation == "apply" and new.change.apps == ("shop", "blog")
    assert new.change.changes == (
        "shop: service web-v2 deleted", "shop: weights web 50->100",
        "blog: app added (routes blog.test; session_sticky on; drain_timeout none)",
        "blog: service w added (weight 100; backends 10.0.0.5:80)")
    assert new.app_generations == {"shop": 2, "blog": 2}


def test_describe_of_equal_states_is_empty():
    s = _state()
    assert describe(s.apps, s.releases, s.apps, s.releases) == ((), ())


NOOPS = [
    ops.set_weights("shop", {"web": 50}),
    ops.set_weights("shop", {"web": 50, "web-v2": 50}),
    ops.put_app("shop", SHOP),
    ops.patch_app("shop", {"session_sticky": True}),
    ops.patch_app("shop", {"routes": ["shop.test"], "drain_timeout": None}),
    ops.put_service("shop", "web", _svc(50, "10.0.0.1:80")),
    ops.apply_apps(_apps({"shop": SHOP})),
]


@pytest.mark.parametrize("op", NOOPS, ids=[op.name for op in NOOPS])
def test_an_operation_that_changes_nothing_is_no_new_state(op):
    s = _state()
    assert _run(s, op) is s
    # ... and still answers a stale If-Match with 412: the caller's view is stale all the same.
    with pytest.raises(PreconditionFailed):
        next_state(s, op, '"7"', None, ROUTER)


def test_marking_a_marked_release_ready_again_changes_nothing():
    s = _run(_state(), ops.start("shop", {"service": "web-v3", "backends": ["10.0.0.9:80"]}))
    ready = _run(s, ops.mark_ready("shop", "web-v3"))
    assert _run(ready, ops.mark_ready("shop", "web-v3")) is ready


# -- apply --------------------------------------------------------------------------------------
def _open_release() -> ops.State:
    s = _run(_state(), ops.start("shop", {"service": "web-v3", "backends": ["10.0.0.9:80"]}))
    return _run(s, ops.mark_ready("shop", "web-v3"))


def test_apply_keeps_an_open_release_whose_services_stay():
    s = _open_release()
    file = _apps({"shop": {"routes": ["shop.test"], "services": {
        "web": _svc(0, "10.0.0.1:80"), "web-v2": _svc(0, "10.0.0.2:80"),
        "web-v3": _svc(100, "10.0.0.9:80")}}})
    new = _run(s, ops.apply_apps(file))
    assert new.releases["shop"] == s.releases["shop"]
    # New backends for the new service: back to in_progress, as with PUT .../services/...
    file = _apps({"shop": {"routes": ["shop.test"], "services": {
        "web": _svc(0, "10.0.0.1:80"), "web-v2": _svc(0, "10.0.0.2:80"),
        "web-v3": _svc(100, "10.0.0.7:80")}}})
    new = _run(s, ops.apply_apps(file))
    assert new.releases["shop"] == s.releases["shop"].apply(Action.NOT_READY)


def test_apply_refuses_to_close_a_release_unless_forced():
    s = _open_release()
    for file, why in ((_apps({"shop": SHOP}), "closes the open release of 'shop': the file has "
                                              "no service 'web-v3'"),
                      (_apps({}), "deletes app 'shop', closing its open release of 'web-v3'")):
        with pytest.raises(Conflict) as info:
            _run(s, ops.apply_apps(file))
        assert info.value.message == f"apply {why}; apply with force to do it anyway"
        assert info.value.field == "force"
    new = _run(s, ops.apply_apps(_apps({"shop": SHOP}), force=True))
    assert new.releases == {} and [x.name for x in new.app("shop").services] == ["web", "web-v2"]
    assert new.change.changes[-1] == "release of web-v3 rolled back (web-v3 deleted)"


def test_apply_refuses_to_delete_a_pinned_service_whatever_its_weight():
    file = _apps({"shop": {"routes": ["shop.test"], "services": {"web-v2": _svc(100, "10.0.0.2:80")}}})
    # Drained to weight 0, or still serving (its clients lose their session either way).
    for weights in ({"web": 0, "web-v2": 100}, {"web": 10, "web-v2": 90}):
        s = _run(_state(), ops.set_weights("shop", weights))
        with pytest.raises(Conflict, match="deletes service 'web' of 'shop', which clients are "
                                           r"still pinned to \(recent requests by cookie\)"):
            _run(s, ops.apply_apps(file, pinned=frozenset({("shop", "web")})))
        # Not pinned, or forced: deleted.
        assert _run(s, ops.apply_apps(file)).app("shop").services[0].name == "web-v2"
        assert _run(s, ops.apply_apps(file, force=True, pinned=frozenset({("shop", "web")}))) is not s


def test_apply_keeps_the_order_of_apps_and_appends_new_ones():
    s = _state({"a": {"routes": ["a.test"], "services": {"w": _svc(1, "10.0.0.1:80")}},
                "b": {"routes": ["b.test"], "services": {"w": _svc(1, "10.0.0.1:80")}}})
    file = _apps({"c": {"routes": ["c.test"], "services": {"w": _svc(1, "10.0.0.1:80")}},
                  "b": {"routes": ["b.test"], "services": {"w": _svc(2, "10.0.0.1:80")}},
                  "a": {"routes": ["a.test"], "services": {"w": _svc(1, "10.0.0.1:80")}}})
    new = _run(s, ops.apply_apps(file))
    assert [a.name for a in new.apps] == ["a", "b", "c"]
    assert new.change.apps == ("b", "c")
    assert new.app_generations == {"a": 1, "b": 2, "c": 2}


# -- the file store's history ---------------------------------------------------------------------
def _entry(gen: int) -> dict[str, Any]:
    return Change(gen, "2026-11-29T14:03:07Z", "127.0.0.1", None, "set_weights", ("shop",),
                  (f"weights web {gen}->{gen + 1}",)).to_dict()


async def test_file_store_history_is_bounded_and_survives_a_restart(tmp_path, monkeypatch):
    limit = 10  # HISTORY_LIMIT, made small: two fsyncs per save
    monkeypatch.setattr("router.control.store.file.HISTORY_LIMIT", limit)
    assert HISTORY_LIMIT == 1000
    path = str(tmp_path / "router-state.yaml")
    store = FileStateStore(path)
    assert history_path(path) == str(tmp_path / "router-state.history.jsonl")
    version = 0
    for gen in range(1, 2 * limit + 5):
        version = await store.save({"generation": gen}, version, _entry(gen))
    kept = await store.history()
    newest = 2 * limit + 4
    assert [e["generation"] for e in kept] == list(range(newest, newest - limit, -1))
    with open(history_path(path)) as f:
        lines = [json.loads(line)["generation"] for line in f]
    assert lines == list(range(2 * limit - limit + 1, newest + 1))  # rewritten once at 2 * limit
    again = FileStateStore(path)
    await again.load()
    assert await again.history() == kept


async def test_file_store_puts_back_an_entry_a_crash_lost(tmp_path):
    path = str(tmp_path / "router-state.yaml")
    store = FileStateStore(path)
    await store.save({"generation": 2, "change": _entry(2)}, 0, _entry(2))
    # The process stops after writing the state of generation 3, before its history entry.
    store.file.save({"generation": 3, "change": _entry(3)})
    with open(history_path(path), "ab") as f:
        f.write(b'{"generation": 3, "torn')  # and a torn line, which is skipped
    again = FileStateStore(path)
    await again.load()
    assert [e["generation"] for e in await again.history()] == [3, 2]
    third = FileStateStore(path)
    await third.load()
    assert [e["generation"] for e in await third.history()] == [3, 2]


async def test_manager_writes_nothing_for_a_change_that_changes_nothing(tmp_path):
    path = str(tmp_path / "router-state.yaml")
    store = FileStateStore(path)
    applied: list[int] = []
    mgr = StateManager(_state(), store, lambda s: applied.append(s.generation))
    state, entry = await mgr.run(ops.set_weights("shop", {"web": 0}), actor=Actor("10.1.2.3"))
    assert state.generation == 2 and entry is not None and entry.client == "10.1.2.3"
    stat = os.stat(path)
    again, none = await mgr.run(ops.set_weights("shop", {"web": 0}))
    assert again is state and none is None and applied == [2]
    assert os.stat(path).st_mtime_ns == stat.st_mtime_ns
    assert [e["generation"] for e in await mgr.history()] == [2]
    assert await mgr.history(app="nope") == []
    await asyncio.sleep(0)


def test_change_from_dict_refuses_bad_entries():
    good = _entry(3)
    for key, bad in (("generation", "3"), ("generation", True), ("apps", "shop"),
                     ("changes", [1]), ("token", 5), ("client", None)):
        with pytest.raises(ValueError, match=key):
            Change.from_dict({**good, key: bad})
    assert Change.from_dict(replace(Change.from_dict(good)).to_dict()) == Change.from_dict(good)
