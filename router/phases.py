"""The phases of an exchange and of a client connection, and the only table of legal moves.

Everything that decides what may happen next on the request path lives in this file, in the way
h11's ``_state.py`` holds its state machine: one phase variable per exchange and one per client
connection, and for each phase the set of phases it may move to. A move that is not in the table
raises ``PhaseError``: a bug shows up as a loud error at the line that made it (the connection is
dropped and the error logged), never as a silent combination of flags that forwards what it
should not. docs/request-path.md draws both machines.

Two facts are kept apart from the phases because they change independently of them: whether the
request body has been read to its end (``Exchange.body_done``) and whether the backend connection
may serve another request (``ResponseHead.reusable`` and the backend's keep-alive).

The phases are ``Final`` ints: mypyc compiles them to constants, so a phase costs what an int
comparison costs.
"""

from __future__ import annotations

from typing import Final

# -- one exchange: a request and its response ---------------------------------------------------
ROUTING: Final = 0     # its head is read; it waits its turn (pipelining) or is being routed
CONNECTING: Final = 1  # a backend is chosen; a new connection to it is being opened
SENT: Final = 2        # on a backend connection: its head is sent, no final response head yet
HEAD: Final = 3        # a final response head is accepted; nothing of it written to the client
BODY: Final = 4        # the response is committed: its head is written, its body streams
TUNNEL: Final = 5      # the backend switched protocols (101): the connection is a tunnel now
DONE: Final = 6        # answered whole, by the backend or by the router, and counted
ABORTED: Final = 7     # cut short: the client connection is dropped, never a short response

EXCHANGE_PHASES: Final = ("ROUTING", "CONNECTING", "SENT", "HEAD", "BODY", "TUNNEL", "DONE",
                          "ABORTED")

# Before anything is written to the client (ROUTING .. HEAD) the router may still answer the
# request itself (DONE with a 4xx/5xx); once BODY, only the backend's response or an abort.
EXCHANGE_MOVES: Final[tuple[frozenset[int], ...]] = (
    frozenset({CONNECTING, SENT, DONE, ABORTED}),                # ROUTING
    frozenset({CONNECTING, SENT, DONE, ABORTED}),                # CONNECTING (another backend)
    frozenset({CONNECTING, SENT, HEAD, DONE, ABORTED}),          # SENT (retries; 1xx stay SENT)
    frozenset({BODY, TUNNEL, DONE, ABORTED}),                    # HEAD
    frozenset({DONE, ABORTED}),                                  # BODY
    frozenset[int](),                                            # TUNNEL
    frozenset[int](),                                            # DONE
    frozenset[int](),                                            # ABORTED
)

# -- one client connection, as its reading side sees it ----------------------------------------
IDLE: Final = 0          # between requests: nothing of the next one read (idle timer if none
                         # is being answered)
READING_HEAD: Final = 1  # a request head is arriving (header timer)
READING_BODY: Final = 2  # a head is read and its body is arriving (body timer)
UPGRADE_WAIT: Final = 3  # an upgrade request is read whole: waiting for the backend's answer,
                         # reading paused, later bytes held for the tunnel
TUNNELLING: Final = 4    # bytes are relayed both ways
CLOSING: Final = 5       # a closing answer is decided: nothing more is read or forwarded
CLOSED: Final = 6

CONNECTION_PHASES: Final = ("IDLE", "READING_HEAD", "READING_BODY", "UPGRADE_WAIT",
                            "TUNNELLING", "CLOSING", "CLOSED")

CONNECTION_MOVES: Final[tuple[frozenset[int], ...]] = (
    frozenset({READING_HEAD, CLOSING, CLOSED}),                  # IDLE
    frozenset({READING_BODY, CLOSING, CLOSED}),                  # READING_HEAD
    frozenset({IDLE, UPGRADE_WAIT, CLOSING, CLOSED}),            # READING_BODY
    frozenset({TUNNELLING, CLOSING, CLOSED}),                    # UPGRADE_WAIT
    frozenset({CLOSING, CLOSED}),                                # TUNNELLING
    frozenset({CLOSED}),                                         # CLOSING
    frozenset[int](),                                            # CLOSED
)




def _masks(moves: tuple[frozenset[int], ...]) -> tuple[int, ...]:
    """The table as bit masks (bit ``to`` of entry ``frm`` set when the move is legal): a move
    is checked with a shift, not a set lookup."""
    return tuple(sum(1 << p for p in allowed) for allowed in moves)


_EXCHANGE_MASKS: Final = _masks(EXCHANGE_MOVES)
_CONNECTION_MASKS: Final = _masks(CONNECTION_MOVES)


class PhaseError(Exception):
    """A move the table does not allow: a bug of the router, never of its peers."""


def exchange_move(frm: int, to: int) -> int:
    """``to``, if an exchange in phase ``frm`` may move there; else ``PhaseError``."""
    if not (_EXCHANGE_MASKS[frm] >> to) & 1:
        raise PhaseError(f"exchange: {EXCHANGE_PHASES[frm]} -> {EXCHANGE_PHASES[to]}")
    return to


def connection_move(frm: int, to: int) -> int:
    """``to``, if a client connection in phase ``frm`` may move there; else ``PhaseError``."""
    if not (_CONNECTION_MASKS[frm] >> to) & 1:
        raise PhaseError(f"connection: {CONNECTION_PHASES[frm]} -> {CONNECTION_PHASES[to]}")
    return to
