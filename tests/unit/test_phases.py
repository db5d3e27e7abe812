"""The phase tables driven alone, with no connection around them (as h11's test_state.py drives
its state machine): every move each table allows and refuses, the paths a request, a client
connection and a backend connection take, and the named questions the request path asks."""

from __future__ import annotations

import pytest

from router.dataplane import phases as P

MACHINES = [
    ("exchange", P.EXCHANGE_PHASES, P.EXCHANGE_MOVES, P.exchange_move, P.ROUTING),
    ("connection", P.CONNECTION_PHASES, P.CONNECTION_MOVES, P.connection_move, P.IDLE),
    ("upstream", P.UPSTREAM_PHASES, P.UPSTREAM_MOVES, P.upstream_move, P.UP_IDLE),
]


@pytest.mark.parametrize("name, names, moves, move, start", MACHINES)
def test_each_phase_is_named_and_has_a_row(name, names, moves, move, start):
    assert len(names) == len(moves) == len(set(names))
    for i, n in enumerate(names):
        assert getattr(P, n) == i, n


@pytest.mark.parametrize("name, names, moves, move, start", MACHINES)
def test_every_move_is_allowed_exactly_when_the_table_says(name, names, moves, move, start):
    for frm in range(len(names)):
        for to in range(len(names)):
            if to in moves[frm]:
                assert move(frm, to) == to
            else:
                with pytest.raises(P.PhaseError) as e:
                    move(frm, to)
                assert str(e.value) == f"{name}: {names[frm]} -> {names[to]}"


@pytest.mark.parametrize("name, names, moves, move, start", MACHINES)
def test_every_phase_is_reached_from_the_start(name, names, moves, move, start):
    seen, todo = {start}, [start]
    while todo:
        for to in moves[todo.pop()]:
            if to not in seen:
                seen.add(to)
                todo.append(to)
    assert seen == set(range(len(names)))


def walk(move, start, path):
    phase = start
    for to in path:
        phase = move(phase, to)
    return phase


# -- an exchange ----------------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    [P.SENT, P.HEAD, P.BODY, P.DONE],                           # a pooled connection
    [P.CONNECTING, P.SENT, P.HEAD, P.BODY, P.DONE],             # a new one
    [P.SENT, P.CONNECTING, P.SENT, P.SENT, P.HEAD, P.DONE],     # stale, then another backend
    [P.DONE],                                                   # 404, 503, a refusal
    [P.CONNECTING, P.DONE],                                     # 502: no backend reachable
    [P.SENT, P.HEAD, P.DONE],                                   # a 502 for a head not passed on
    [P.SENT, P.HEAD, P.TUNNEL],                                 # 101
    [P.SENT, P.HEAD, P.BODY, P.ABORTED],                        # cut short once committed
    [P.SENT, P.ABORTED],                                        # the client gave up (499)
])
def test_exchange_paths(path):
    assert walk(P.exchange_move, P.ROUTING, path) == path[-1]


@pytest.mark.parametrize("path", [
    [P.SENT, P.HEAD, P.BODY, P.DONE, P.DONE],     # ended twice
    [P.SENT, P.HEAD, P.BODY, P.HEAD],             # a head after the body began
    [P.SENT, P.HEAD, P.BODY, P.TUNNEL],           # a tunnel after a body
    [P.SENT, P.HEAD, P.CONNECTING],               # a retry once a head is accepted
    [P.SENT, P.HEAD, P.TUNNEL, P.ABORTED],        # a tunnel is the connection's, not ours
    [P.HEAD],                                     # a head for a request never sent
])
def test_exchange_paths_refused(path):
    with pytest.raises(P.PhaseError):
        walk(P.exchange_move, P.ROUTING, path)


def test_exchange_questions():
    phases = range(len(P.EXCHANGE_PHASES))
    assert {p for p in phases if P.ended(p)} == {P.TUNNEL, P.DONE, P.ABORTED}
    assert {p for p in phases if P.answerable(p)} == {P.ROUTING, P.CONNECTING, P.SENT, P.HEAD}
    assert {p for p in phases if P.awaiting_head(p)} == {P.ROUTING, P.CONNECTING, P.SENT}
    for p in phases:
        # An ended exchange moves no more; what cannot be answered never can again; a head,
        # once accepted, is never awaited again.
        assert not P.ended(p) or not P.EXCHANGE_MOVES[p]
        for to in P.EXCHANGE_MOVES[p]:
            assert P.answerable(p) or not P.answerable(to)
            assert P.awaiting_head(p) or not P.awaiting_head(to)
        # Every exchange that has not ended can still end.
        assert P.ended(p) or P.EXCHANGE_MOVES[p] & {P.DONE, P.ABORTED}


# -- a client connection --------------------------------------------------------------------------
@pytest.mark.parametrize("path", [
    [P.READING_HEAD, P.READING_BODY, P.IDLE, P.READING_HEAD, P.READING_BODY, P.CLOSING,
     P.CLOSED],                                                            # keep-alive
    [P.READING_HEAD, P.READING_BODY, P.UPGRADE_WAIT, P.TUNNELLING, P.CLOSED],  # upgrade, no body
    [P.READING_HEAD, P.READING_BODY, P.DECODING_BODY, P.UPGRADE_WAIT, P.TUNNELLING,
     P.CLOSING, P.CLOSED],                                                 # upgrade with a body
    [P.READING_HEAD, P.READING_BODY, P.RESUMED_BODY, P.IDLE],              # h2c with a body
    [P.READING_HEAD, P.READING_BODY, P.DECODING_BODY, P.CLOSING],          # a bad body: 400
    [P.READING_HEAD, P.CLOSING, P.CLOSED],                                 # 408, 431
    [P.CLOSED],                                                            # refused at the cap
])
def test_connection_paths(path):
    assert walk(P.connection_move, P.IDLE, path) == path[-1]


@pytest.mark.parametrize("path", [
    [P.READING_BODY],                                      # a body with no head
    [P.READING_HEAD, P.READING_BODY, P.RESUMED_BODY, P.UPGRADE_WAIT],  # h2c is not a tunnel
    [P.READING_HEAD, P.READING_BODY, P.DECODING_BODY, P.IDLE],  # an upgrade's body read, no answer
    [P.READING_HEAD, P.READING_BODY, P.UPGRADE_WAIT, P.IDLE],   # reading on after an upgrade
    [P.READING_HEAD, P.CLOSING, P.READING_HEAD],           # reading after a closing answer
    [P.CLOSED, P.CLOSING],
])
def test_connection_paths_refused(path):
    with pytest.raises(P.PhaseError):
        walk(P.connection_move, P.IDLE, path)


def test_connection_questions():
    phases = range(len(P.CONNECTION_PHASES))
    assert {p for p in phases if P.shut(p)} == {P.CLOSING, P.CLOSED}
    assert {p for p in phases if P.reading_body(p)} == {P.READING_BODY, P.DECODING_BODY,
                                                         P.RESUMED_BODY}
    assert {p for p in phases if P.reads_heads(p)} == {P.IDLE, P.READING_HEAD}
    assert {p for p in phases if P.llhttp_done(p)} == {P.DECODING_BODY, P.UPGRADE_WAIT,
                                                        P.TUNNELLING, P.CLOSING, P.CLOSED}
    for p in phases:
        # Shut stays shut; every phase but CLOSED can close.
        for to in P.CONNECTION_MOVES[p]:
            assert not P.shut(p) or P.shut(to)
        assert p == P.CLOSED or P.CLOSED in P.CONNECTION_MOVES[p]


# -- a backend connection's reading side ------------------------------------------------------
@pytest.mark.parametrize("path", [
    [P.UP_HEAD, P.UP_LENGTH, P.UP_IDLE, P.UP_HEAD, P.UP_CHUNKED, P.UP_IDLE],  # two on one
    [P.UP_HEAD, P.UP_EOF, P.UP_IDLE],                                         # to the close
    [P.UP_HEAD, P.UP_IDLE],                           # no body (204, HEAD), or a bad head
    [P.UP_HEAD, P.UP_TUNNEL],                         # 101
])
def test_upstream_paths(path):
    assert walk(P.upstream_move, P.UP_IDLE, path) == path[-1]


@pytest.mark.parametrize("path", [
    [P.UP_LENGTH],                                    # a body with no head
    [P.UP_HEAD, P.UP_LENGTH, P.UP_CHUNKED],           # a second framing for one body
    [P.UP_HEAD, P.UP_LENGTH, P.UP_HEAD],              # a head before the body ends
    [P.UP_HEAD, P.UP_TUNNEL, P.UP_IDLE],              # a tunnel back in the pool
    [P.UP_HEAD, P.UP_HEAD],                           # attached twice
])
def test_upstream_paths_refused(path):
    with pytest.raises(P.PhaseError):
        walk(P.upstream_move, P.UP_IDLE, path)
