"""Random sequences of admin operations keep the state's invariants (hypothesis, rule-based).

The operations are the real ones (``router.control.state``) run through the real ``StateManager`` with
the real file store; each step is checked: at most one open release per app, weights 0..100,
the generation growing by one per change and unchanged by a refused call or one that changes
nothing, a release's services present, the file on disk equal to the state in memory, and one
history entry per generation, in the history file too.
"""

from __future__ import annotations

import asyncio
import tempfile

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from router.control import state as ops
from router.config import config_from_dict
from router.errors import RouterError
from router.control.manager import StateManager
from router.control.release import Status
from router.control.store import FileStateStore

# Up to 1800 operations, each change stored with fsync: seconds, not milliseconds.
pytestmark = pytest.mark.slow

APPS = ("shop", "blog")
SERVICES = ("web", "web-v2", "web-v3")
ADDRS = ("10.0.0.1:80", "10.0.0.2:80", "10.0.0.3:80")

weights = st.integers(min_value=-5, max_value=105) | st.sampled_from([True, 1.5, "7", None])


class StateOps(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.dir = tempfile.TemporaryDirectory()
        self.store = FileStateStore(self.dir.name + "/state.yaml")
        cfg = config_from_dict({"apps": {"shop": {"routes": ["shop.test"], "services": {
            "web": {"weight": 100, "backends": ["10.0.0.1:80"]}}}}})
        self.applied: list[int] = []
        self.mgr = StateManager(ops.State.initial(cfg.apps), self.store,
                                    lambda s: self.applied.append(s.generation))
        self.loop = asyncio.new_event_loop()
        self.accepted = 0
        self.refused = 0
        self.unchanged = 0

    def teardown(self) -> None:
        self.loop.close()
        self.dir.cleanup()

    def run(self, op: ops.Operation) -> None:
        before = self.mgr.state
        try:
            self.loop.run_until_complete(self.mgr.change(op))
        except RouterError as e:
            assert 400 <= e.status < 500, e
            assert self.mgr.state is before  # refused: nothing changed
            self.refused += 1
        else:
            after = self.mgr.state
            if after is before:  # it changed nothing: no generation, no write, no entry
                self.unchanged += 1
                return
            assert (after.apps, after.releases) != (before.apps, before.releases)
            assert after.generation == before.generation + 1
            assert self.applied[-1] == after.generation  # live before answering
            assert after.change is not None and after.change.generation == after.generation
            assert after.change.changes, after.change  # something is described
            self.accepted += 1

    @rule(app=st.sampled_from(APPS), svc=st.sampled_from(SERVICES), addr=st.sampled_from(ADDRS),
          sticky=st.booleans())
    def put_app(self, app: str, svc: str, addr: str, sticky: bool) -> None:
        self.run(ops.put_app(app, {"routes": [f"{app}.test"], "session_sticky": sticky,
                                   "services": {svc: {"weight": 50, "backends": [addr]}}}))

    @rule(app=st.sampled_from(APPS), w=st.dictionaries(st.sampled_from(SERVICES + ("nope",)), weights, max_size=3))
    def set_weights(self, app: str, w: dict) -> None:
        self.run(ops.set_weights(app, w))

    @rule(app=st.sampled_from(APPS), svc=st.sampled_from(SERVICES), w=weights,
          addrs=st.lists(st.sampled_from(ADDRS), max_size=3))
    def put_service(self, app: str, svc: str, w: object, addrs: list[str]) -> None:
        self.run(ops.put_service(app, svc, {"weight": w, "backends": addrs}))

    @rule(app=st.sampled_from(APPS), svc=st.sampled_from(SERVICES))
    def delete_service(self, app: str, svc: str) -> None:
        self.run(ops.delete_service(app, svc))

    @rule(app=st.sampled_from(APPS), svc=st.sampled_from(SERVICES), addr=st.sampled_from(ADDRS))
    def start_release(self, app: str, svc: str, addr: str) -> None:
        self.run(ops.start(app, {"service": svc, "backends": [addr]}))

    @rule(app=st.sampled_from(APPS))
    def ready(self, app: str) -> None:
        r = self.mgr.state.releases.get(app)
        self.run(ops.mark_ready(app, r.new if r else "web"))

    @rule(app=st.sampled_from(APPS), force=st.booleans())
    def confirm(self, app: str, force: bool) -> None:
        self.run(ops.confirm(app, force))

    @rule(app=st.sampled_from(APPS))
    def rollback(self, app: str) -> None:
        self.run(ops.rollback(app))

    @rule(app=st.sampled_from(APPS))
    def delete_app(self, app: str) -> None:
        self.run(ops.delete_app(app))

    @rule(app=st.sampled_from(APPS), sticky=st.sampled_from([True, False, "yes"]))
    def patch_app(self, app: str, sticky: object) -> None:
        self.run(ops.patch_app(app, {"session_sticky": sticky}))

    @rule(apps=st.lists(st.sampled_from(APPS), unique=True), svc=st.sampled_from(SERVICES),
          weight=st.integers(min_value=0, max_value=100), force=st.booleans())
    def apply(self, apps: list[str], svc: str, weight: int, force: bool) -> None:
        cfg = config_from_dict({"apps": {a: {"routes": [f"{a}.test"], "services": {
            svc: {"weight": weight, "backends": ["10.0.0.1:80"]}}} for a in apps}})
        self.run(ops.apply_apps(cfg.apps, force))

    @invariant()
    def invariants(self) -> None:
        s = self.mgr.state
        names = [a.name for a in s.apps]
        assert len(names) == len(set(names))
        for app in s.apps:
            assert app.services, app
            for svc in app.services:
                assert isinstance(svc.weight, int) and not isinstance(svc.weight, bool)
                assert 0 <= svc.weight <= 100
            release = s.releases.get(app.name)
            if release is not None:
                present = {x.name for x in app.services}
                assert release.new in present and set(release.old) <= present
                assert release.status in (Status.IN_PROGRESS, Status.AWAITING_CONFIRMATION)
        assert set(s.releases) <= set(names)  # one release per app at most, for existing apps
        assert set(s.app_generations) == set(names)
        assert all(g <= s.generation for g in s.app_generations.values())
        disk = self.store.file.load()
        if disk is None:
            assert s.generation == 1
        else:
            assert ops.State.from_dict(disk, self.store.name) == s
        history = self.loop.run_until_complete(self.mgr.history())
        assert [e["generation"] for e in history] == list(range(s.generation, 1, -1))
        assert [e["generation"] for e in reversed(self.store.history_file.load())] == \
            list(range(s.generation, 1, -1))
        if s.generation > 1:
            assert history[0] == s.change.to_dict()


StateOps.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)
test_state_operations = StateOps.TestCase
