"""The router's two sides of a takeover (``router.process.handoff``; docs/upgrade.md), parts of
``router.process.server.Server``: the successor's (``router serve --takeover``: the sockets, the store and
the connections of the router running there) and the predecessor's (the
``router.process.handoff.OldRouter`` the handoff server drives: handing them over, or taking them back
when the successor fails), and SIGUSR2, which runs both in turn to upgrade in place.

Mixins of ``Server``: they use its sockets, store, state manager, data plane and workers, and
its own steps of a start (``_open_state``, ``_build``, ``_serve_data``, ...).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from typing import Any, Callable

from .handoff import (LOCK_WAIT, STEP_TIMEOUT, NoPredecessor, Takeover, TakeoverError,
                      bind_handoff)
from .listeners import addresses, port_of, shown_address
from ..control.manager import StateManager, load_state

log = logging.getLogger("router")


class SuccessorSide:
    """A router that takes over from the one running at its handoff socket."""

    async def _start_successor(self, path: str) -> None:
        """``--takeover``: the listening sockets, the store and the connections of the router
        at ``path`` (the steps of ``router.process.handoff``). Whatever goes wrong before this router
        serves is undone here and told to the old router, which serves on."""
        takeover = Takeover(path)
        try:
            await takeover.connect(self.store_name)
        except NoPredecessor as e:
            # Nothing to take over: a start like any other (which still fails, naming them, if
            # a router holds the addresses or the state without listening there).
            log.info("%s; starting afresh", e)
            await self._start_fresh()
            return
        try:
            self._listen = takeover.role("data")
            admin_socks = takeover.role("admin")
            if self.admin is not None:
                self._admin_socks = admin_socks
            else:
                for s in admin_socks:
                    s.close()
            handoff = takeover.role("handoff")
            if handoff and self.handoff_path == path:
                self._handoff_sock = handoff[0]
            else:
                for s in handoff:
                    s.close()
            self._check_addresses(takeover.pid)
            # A first reading of the state while the old router still serves and writes it: the
            # workers start from it (the slow part), and serve only once the store is ours.
            state, version, _, secret = await self._open_state()
            self._build(state, version, secret)
            if self.nworkers > 1:
                await self._serve_data(hold=True)
            self._check_stopping()
            served = await takeover.release()
            if self._lock is not None:
                await self._lock.wait(LOCK_WAIT)
            assert self.store is not None or self.store_spec is None
            if self.store is not None:
                state, version, _ = await load_state(self.store, state, self.config.source)
            if state.generation < served:
                raise TakeoverError(f"{self.store_name} holds generation {state.generation}, "
                                    f"older than the {served} the old router served")
            self._manager = StateManager(state, self.store, self.apply_state, version)
            self._watch_state()
            assert self.health is not None
            self.health.update(state.apps)
            self.plane.apply(state.apps, state.generation, self.health.states(), state.previews())
            if self.workers is not None:
                await self.workers.serve()
            else:
                await self._serve_data()
            self._check_stopping()
            if self.handoff_path is not None and self._handoff_sock is None:
                self._handoff_sock = bind_handoff(self.handoff_path)
            await takeover.serving()
        except BaseException as e:
            reason = str(e) if isinstance(e, TakeoverError) else repr(e)
            log.error("takeover of the router at %s failed: %s", path, reason)
            await takeover.abort(reason)
            await self._undo_start()
            raise
        await self._start_admin()
        await self._start_control()
        self._spawn(self._take_connections(takeover))

    def _check_stopping(self) -> None:
        if self._stopping.is_set():
            raise TakeoverError("this router was told to stop during the takeover")

    def _check_addresses(self, pid: int) -> None:
        """A takeover keeps the addresses: the configuration must name the ones received."""
        cfg = self.config
        for what, socks, host, port in (
                ("listen", self._listen, cfg.listen_host, cfg.listen_port),
                ("admin.listen", self._admin_socks, cfg.admin.host, cfg.admin.port)):
            if what == "admin.listen" and self.admin is None:
                continue
            have = sorted(s.getsockname()[:2] for s in socks)
            want = sorted(a[:2] for a in addresses(host, port))
            if port == 0:
                have, want = [h for h, _ in have], [h for h, _ in want]  # any port: the old one
            if have != want:
                raise TakeoverError(
                    f"{what} {shown_address(host, port)} is not where the old router (pid {pid}) "
                    f"listens ({', '.join(map(str, have)) or 'nowhere'}): a takeover keeps the "
                    "addresses; change them with a stop and a start")
        self.port = port_of(self._listen)

    async def _take_connections(self, takeover: Takeover) -> None:
        """The old router's connections as they turn idle; then this router is the one a
        successor takes over from."""
        await takeover.connections(self._adopt, self.config.timeouts.grace + STEP_TIMEOUT)
        self._start_handoff()
        workers = {w.pid for w in self.workers.workers} if self.workers is not None else set()
        if takeover.pid not in workers:  # a pid the old router gave, maybe from another namespace
            await _reap(takeover.pid, self.config.timeouts.grace + 10)

    async def _adopt(self, fds: list[int]) -> None:
        if self.workers is not None:
            await self.workers.give(fds)
        else:
            await self.plane.adopt(fds)

    async def _undo_start(self) -> None:
        """A takeover that failed: let go of everything taken; the old router takes it back."""
        if self.workers is not None:
            await self.workers.stop(0, 0)
        if self._plane is not None:
            self.plane.stop_accepting()
        if self.store is not None:
            await self.store.close()
        if self._lock is not None:
            self._lock.release()
        self._close_sockets()


class PredecessorSide:
    """A router a successor takes over from (``router.process.handoff.OldRouter``), and SIGUSR2."""

    # -- a successor takes over (router.process.handoff.OldRouter) ----------------------------
    def handoff_sockets(self) -> tuple[list[dict[str, Any]], list[socket.socket]]:
        info: list[dict[str, Any]] = []
        socks: list[socket.socket] = []
        handoff = [self._handoff_sock] if self._handoff_sock is not None else []
        for role, group in (("data", self._listen), ("admin", self._admin_socks),
                            ("handoff", handoff)):
            for sock in group:
                info.append({"role": role, "address": str(sock.getsockname())})
                socks.append(sock)
        return info, socks

    async def release_state(self) -> int:
        self._refuse_unstored()
        await self._stop_admin()
        await self.controllers.stop()
        try:
            self._refuse_unstored()  # one may have come while the admin requests ended
        except TakeoverError:
            await self._start_control()
            await self._start_admin()
            raise
        self.manager.close()
        if self.store is not None:
            await self.store.close()
        if self._lock is not None:
            self._lock.release()
        generation = self.manager.state.generation
        log.info("the routing state (generation %d) handed to the successor", generation)
        return generation

    def _refuse_unstored(self) -> None:
        """A change in effect that the store has not taken (a rollback while it could not be
        written) lives only in this process: a successor reading the store would undo it."""
        unstored = self.manager.unstored()
        if unstored:
            raise TakeoverError(f"this router holds {len(unstored)} change(s) the store has not "
                                "taken yet (router_store_pending_changes); a takeover would undo "
                                "them: try again once they are stored")

    async def reclaim_state(self) -> None:
        try:
            if self._lock is not None:
                await self._lock.wait(LOCK_WAIT)
            before = self.manager.state
            state, version, _, _ = await self._open_state()
            self._manager = StateManager(state, self.store, self.apply_state, version)
            self._watch_state()
            if state != before:
                await self.apply_state(state)
            log.info("the routing state is this router's again (generation %d)",
                     state.generation)
        except Exception as e:
            log.error("could not take the routing state back: %s; admin changes are refused "
                      "until a restart", e)
        await self._start_control()
        await self._start_admin()

    async def stop_accepting(self) -> None:
        if self.workers is not None:
            # The workers start giving up connections at once: kept here until hand_over.
            self._early = []
            await self.workers.begin_handover(self.config.timeouts.grace)
        else:
            self.plane.stop_accepting()

    async def resume_accepting(self) -> None:
        self._post = None
        if self._early is not None:
            self.take_back(self._early)
            self._early = None
        if self.workers is not None:
            await self.workers.resume()
        else:
            self.plane.resume()
            await self.plane.serve(self._listen)

    async def hand_over(self, post: Callable[[list[int]], None]) -> tuple[int, int]:
        if self.workers is not None:
            self._post = post
            if self._early:
                post(self._early)
            self._early = None
            return await self.workers.end_handover()
        return await self.plane.hand_over(post, self.config.timeouts.grace)

    def take_back(self, fds: list[int]) -> None:
        self._spawn(self._adopt(fds))

    def _pass_on(self, fds: list[int]) -> None:
        """Connections a worker gave up: to the successor, or back to the workers."""
        if self._post is not None:
            self._post(fds)
        elif self._early is not None:
            self._early.extend(fds)
        else:
            self.take_back(fds)

    async def handed_over(self, successor: int) -> None:
        self._handed = True
        if self._upgrade is not None and self._upgrade.pid == successor and self.argv:
            # SIGUSR2: the new code has proven it starts; now it runs as this process, and
            # takes everything back from the temporary successor.
            self.exec_argv = self._successor_argv()
        self._stopping.set()

    # -- SIGUSR2: an upgrade in place -------------------------------------------------------
    def upgrade(self) -> None:
        """SIGUSR2: run the router installed on disk in this process, keeping its pid (a
        container's PID 1), with nothing lost (docs/upgrade.md, "In place"): a new process
        takes over from this one; this one then runs the new code and takes everything back."""
        why = ("not started from the command line" if self.argv is None
               else "no handoff socket (no state directory; set handoff.socket)"
               if self._handoff is None
               else "an upgrade is already running" if self._upgrade is not None
               else f"a takeover by pid {self._handoff.busy} is running"
               if self._handoff.busy is not None
               else "the router is stopping" if self.stopping else None)
        if why is not None:
            log.warning("SIGUSR2 ignored: %s", why)
            return
        self._spawn(self._upgrade_in_place())

    def _successor_argv(self) -> list[str]:
        assert self.argv is not None and self.handoff_path is not None
        return [*self.argv, f"--takeover={self.handoff_path}"]

    async def _upgrade_in_place(self) -> None:
        argv = self._successor_argv()
        log.info("SIGUSR2: upgrading in place: a new router from the code on disk takes over, "
                 "then this process (pid %d) runs it and takes over in turn", os.getpid())
        try:
            self._upgrade = await asyncio.create_subprocess_exec(*argv)
        except OSError as e:
            log.error("upgrade failed: cannot start %s: %s; this router serves on", argv[0], e)
            return
        code = await self._upgrade.wait()
        if not self._handed:
            log.error("upgrade failed: the new router (pid %d) exited with status %d before it "
                      "took over (its log says why); this router serves on",
                      self._upgrade.pid, code)
            self._upgrade = None


async def _reap(pid: int, within: float) -> None:
    """Wait for the exit of ``pid`` if it is this process's child: the router that SIGUSR2
    started, taken over in turn by the new code in this process, would stay a zombie."""
    if pid <= 0:
        return
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        try:
            done, _ = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            return  # not ours (or reaped already)
        if done:
            return
        await asyncio.sleep(0.2)
