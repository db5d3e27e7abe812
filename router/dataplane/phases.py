"""The phases of an exchange and of a client connection, and the only table of legal moves.

Everything that decides what may happen next on the request path lives in this file, in the way
h11's ``_state.py`` holds its state machine: one phase variable per exchange and one per client
connection, and for each phase the set of phases it may move to. A move that is not in the table
raises ``PhaseError``: a bug shows up as a loud error at the line that made it (the connection is
dropped and the error logged), never as a silent combination of flags that forwards what it
should not. docs/request-path.md draws both machines.

Three machines: an exchange, a client connection, a backend connection's reading side. Each
phase's meaning for the code around it is a named question below (``ended``, ``answerable``,
...): no caller compares phases by their order.

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
IDLE: Final = 0           # between requests: nothing of the next one read (idle timer if none
                          # is being answered)
READING_HEAD: Final = 1   # a request head is arriving (header timer)
READING_BODY: Final = 2   # a head is read and llhttp reads its body (body timer)
DECODING_BODY: Final = 3  # the body of an upgrade request, which llhttp stops before: read by
                          # router.http.framing's decoder (body timer)
RESUMED_BODY: Final = 4   # the body of an upgrade the router does not tunnel (h2c): a fresh
                          # llhttp parser reads it behind a stand-in head (body timer)
UPGRADE_WAIT: Final = 5   # an upgrade request is read whole: waiting for the backend's answer,
                          # reading paused, later bytes held for the tunnel
TUNNELLING: Final = 6     # bytes are relayed both ways
CLOSING: Final = 7        # a closing answer is decided: nothing more is read or forwarded
CLOSED: Final = 8

CONNECTION_PHASES: Final = ("IDLE", "READING_HEAD", "READING_BODY", "DECODING_BODY",
                            "RESUMED_BODY", "UPGRADE_WAIT", "TUNNELLING", "CLOSING", "CLOSED")

CONNECTION_MOVES: Final[tuple[frozenset[int], ...]] = (
    frozenset({READING_HEAD, CLOSING, CLOSED}),                  # IDLE
    frozenset({READING_BODY, CLOSING, CLOSED}),                  # READING_HEAD
    frozenset({IDLE, DECODING_BODY, RESUMED_BODY, UPGRADE_WAIT,  # READING_BODY
               CLOSING, CLOSED}),
    frozenset({UPGRADE_WAIT, CLOSING, CLOSED}),                  # DECODING_BODY
    frozenset({IDLE, CLOSING, CLOSED}),                          # RESUMED_BODY
    frozenset({TUNNELLING, CLOSING, CLOSED}),                    # UPGRADE_WAIT
    frozenset({CLOSING, CLOSED}),                                # TUNNELLING
    frozenset({CLOSED}),                                         # CLOSING
    frozenset[int](),                                            # CLOSED
)

# -- one backend connection, as its reading side sees it ---------------------------------------
UP_IDLE: Final = 0     # no response being read: pooled, new, or the response read whole
UP_HEAD: Final = 1     # a response head (1xx heads come and go in this phase)
UP_LENGTH: Final = 2   # a Content-Length body
UP_CHUNKED: Final = 3  # a chunked body, through llhttp
UP_EOF: Final = 4      # a body that ends with the connection
UP_TUNNEL: Final = 5   # the backend switched protocols: bytes are relayed, nothing is parsed

UPSTREAM_PHASES: Final = ("UP_IDLE", "UP_HEAD", "UP_LENGTH", "UP_CHUNKED", "UP_EOF", "UP_TUNNEL")

# A response that fails or whose connection is lost ends in UP_IDLE from wherever it was.
UPSTREAM_MOVES: Final[tuple[frozenset[int], ...]] = (
    frozenset({UP_HEAD}),                                        # UP_IDLE
    frozenset({UP_LENGTH, UP_CHUNKED, UP_EOF, UP_TUNNEL, UP_IDLE}),  # UP_HEAD
    frozenset({UP_IDLE}),                                        # UP_LENGTH
    frozenset({UP_IDLE}),                                        # UP_CHUNKED
    frozenset({UP_IDLE}),                                        # UP_EOF
    frozenset[int](),                                            # UP_TUNNEL
)


def _packed(moves: tuple[frozenset[int], ...]) -> int:
    """A table of up to eight phases as one int: bit ``frm * 8 + to`` set when the move is
    legal."""
    return sum(1 << (frm * 8 + to) for frm, allowed in enumerate(moves) for to in allowed)


# The tables as ints that fit in a machine word (their last rows are empty), written out so that
# mypyc compiles them to constants -- a move is then checked with a shift -- and checked against
# the tables above here.
_EXCHANGE_PACKED: Final = 0xC0F0CEC6C6
_UPSTREAM_PACKED: Final = 0x101013D02
# The connection's table has nine phases: a move to CLOSED (legal from every phase but CLOSED,
# checked here) is left out, and the rest fits.
_CONNECTION_PACKED: Final = 0x80C081A0B98482
assert _CONNECTION_PACKED == _packed(tuple(frozenset(allowed - {CLOSED})
                                           for allowed in CONNECTION_MOVES[:CLOSED]))
assert all(CLOSED in allowed for allowed in CONNECTION_MOVES[:CLOSED])
assert not CONNECTION_MOVES[CLOSED]
assert _EXCHANGE_PACKED == _packed(EXCHANGE_MOVES), hex(_packed(EXCHANGE_MOVES))
assert _UPSTREAM_PACKED == _packed(UPSTREAM_MOVES), hex(_packed(UPSTREAM_MOVES))


# The moves every proxied keep-alive request makes: a head begins, its body follows, it ends;
# sent, answered, streamed, done. ``RequestReader._move`` and ``Exchange._move`` make these
# without the lookup below (a few comparisons, where the lookup's arithmetic on tagged ints
# costs about a hundred instructions a move); every other move is looked up.
COMMON_MOVES: Final = (("connection", IDLE, READING_HEAD),
                       ("connection", READING_HEAD, READING_BODY),
                       ("connection", READING_BODY, IDLE), ("exchange", ROUTING, SENT),
                       ("exchange", SENT, HEAD), ("exchange", HEAD, BODY),
                       ("exchange", BODY, DONE))
assert all(to in (CONNECTION_MOVES if kind == "connection" else EXCHANGE_MOVES)[frm]
           for kind, frm, to in COMMON_MOVES)


class PhaseError(Exception):
    """A move the table does not allow: a bug of the router, never of its peers."""


def exchange_move(frm: int, to: int) -> int:
    """``to``, if an exchange in phase ``frm`` may move there; else ``PhaseError``."""
    if not (_EXCHANGE_PACKED >> (frm * 8 + to)) & 1:
        raise PhaseError(f"exchange: {EXCHANGE_PHASES[frm]} -> {EXCHANGE_PHASES[to]}")
    return to


def connection_move(frm: int, to: int) -> int:
    """``to``, if a client connection in phase ``frm`` may move there; else ``PhaseError``."""
    if not (frm != CLOSED if to == CLOSED else (_CONNECTION_PACKED >> (frm * 8 + to)) & 1):
        raise PhaseError(f"connection: {CONNECTION_PHASES[frm]} -> {CONNECTION_PHASES[to]}")
    return to


def upstream_move(frm: int, to: int) -> int:
    """``to``, if a backend connection in phase ``frm`` may move there; else ``PhaseError``."""
    if not (_UPSTREAM_PACKED >> (frm * 8 + to)) & 1:
        raise PhaseError(f"upstream: {UPSTREAM_PHASES[frm]} -> {UPSTREAM_PHASES[to]}")
    return to


# -- what a phase means: the questions the request path asks, answered here only ---------------
# (bit masks over the phases: a question costs a shift, and no caller depends on their order)
_ANSWERABLE: Final = 1 << ROUTING | 1 << CONNECTING | 1 << SENT | 1 << HEAD
_NO_HEAD: Final = 1 << ROUTING | 1 << CONNECTING | 1 << SENT
_ENDED: Final = 1 << TUNNEL | 1 << DONE | 1 << ABORTED
_BODY_PHASES: Final = 1 << READING_BODY | 1 << DECODING_BODY | 1 << RESUMED_BODY
_HEAD_READS: Final = 1 << IDLE | 1 << READING_HEAD
_LLHTTP_DONE: Final = (1 << DECODING_BODY | 1 << UPGRADE_WAIT | 1 << TUNNELLING | 1 << CLOSING
                       | 1 << CLOSED)
_SHUT: Final = 1 << CLOSING | 1 << CLOSED


def answerable(phase: int) -> bool:
    """Nothing of the response is written yet: the router may still answer the request itself
    (an exchange in ROUTING, CONNECTING, SENT or HEAD)."""
    return bool((_ANSWERABLE >> phase) & 1)


def awaiting_head(phase: int) -> bool:
    """No final response head has been accepted yet (ROUTING, CONNECTING, SENT)."""
    return bool((_NO_HEAD >> phase) & 1)


def ended(phase: int) -> bool:
    """The exchange is over for its client: answered, aborted, or become a tunnel."""
    return bool((_ENDED >> phase) & 1)


def reading_body(phase: int) -> bool:
    """A client connection reads a request body, by whichever reader (the body timer runs)."""
    return bool((_BODY_PHASES >> phase) & 1)


def reads_heads(phase: int) -> bool:
    """A client connection's next read is of request heads (the smaller read buffer serves)."""
    return bool((_HEAD_READS >> phase) & 1)


def llhttp_done(phase: int) -> bool:
    """llhttp reads no more of this connection: an upgrade request took the rest, or it closes."""
    return bool((_LLHTTP_DONE >> phase) & 1)


def shut(phase: int) -> bool:
    """A client connection reads and forwards nothing more (CLOSING or CLOSED)."""
    return bool((_SHUT >> phase) & 1)
