"""The response timeout, its exchanges linked in the order of their deadlines
(router.dataplane.deadlines): exchanges that stop waiting in any order, one that hangs at the
head, a retry that waits again, a reload that shortens the timeout. Driven in memory on a clock
the test moves (tests/memory.py)."""

from __future__ import annotations

from typing import Any

from router.config import config_from_dict
from tests.memory import Request
from tests.protocol.test_client import SHOP, get, ok, statuses, wire

HUNG = b"/hung"


def hang_or_ok(req: Request) -> tuple[list[bytes], bool] | None:
    return None if req.target.startswith(HUNG) else ok(req)


def waiting(w: Any) -> int:
    return len(w.ctx.deadlines.waiting())


def test_a_hung_request_at_the_head_times_out_alone():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = hang_or_ok
    hung = w.client(("127.0.0.9", 1))
    hung.send(get(HUNG))
    c = w.client()
    for i in range(300):  # answered behind it, each in turn
        c.send(get(b"/n%d" % i))
        w.loop.advance(0.01)
        assert c.take().endswith(b"seen /n%d" % i)
        assert waiting(w) == 1
    w.loop.advance(4.9 - 3.0)  # 4.9 s after the hung one was sent
    assert hung.take() == b"" and w.ctx.deadlines.waiting() != []
    w.loop.advance(0.2)
    assert statuses(hung.take()) == [504] and not hung.closed
    assert waiting(w) == 0
    assert statuses(c.take()) == []  # none of the others timed out


def test_exchanges_that_stop_waiting_out_of_order_time_out_on_their_own_deadlines():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = None  # every backend answers by hand
    a, b, d = w.client(("127.0.0.1", 1)), w.client(("127.0.0.2", 1)), w.client(("127.0.0.3", 1))
    a.send(get(b"/a"))  # t=0, deadline 5
    w.loop.advance(1)
    b.send(get(b"/b"))  # t=1, deadline 6
    w.loop.advance(1)
    d.send(get(b"/d"))  # t=2, deadline 7
    assert waiting(w) == 3
    # The one in the middle is answered first, then the oldest: neither at an end of the
    # order but the oldest, which is popped; the middle one is skipped when met.
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\nb", 1)
    assert b.take().endswith(b"\r\n\r\nb")
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 0)
    assert a.take().endswith(b"\r\n\r\na")
    assert waiting(w) == 1
    w.loop.advance(4.9)  # t=6.9: past the others' deadlines, not the last one's
    assert d.take() == b""
    w.loop.advance(0.2)
    assert statuses(d.take()) == [504]
    assert statuses(a.take() + b.take()) == []
    assert waiting(w) == 0


def test_the_oldest_answered_leaves_the_next_one_its_own_deadline():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = None
    a, b = w.client(("127.0.0.1", 1)), w.client(("127.0.0.2", 1))
    a.send(get(b"/a"))  # deadline 5: the timer is set for it
    w.loop.advance(2)
    b.send(get(b"/b"))  # deadline 7
    w.reply(SHOP, b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\na", 0)
    w.loop.advance(3.5)  # t=5.5: the timer fired for a, gone; set again for b
    assert b.take() == b""
    w.loop.advance(1.4)  # t=6.9
    assert b.take() == b""
    w.loop.advance(0.2)
    assert statuses(b.take()) == [504] and statuses(a.take()) == [200]


def test_a_retry_waits_its_full_timeout_again_and_does_not_hold_up_the_others():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = hang_or_ok
    hung, c, other = (w.client(("127.0.0.%d" % i, 1)) for i in (1, 2, 3))
    c.send(get(b"/first"))
    assert statuses(c.take()) == [200]  # its backend connection is pooled
    hung.send(get(HUNG))  # t=0: deadline 5
    w.loop.advance(1)
    c.send(get(HUNG + b"/retried"))  # t=1 on the pooled connection: deadline 6
    w.loop.advance(1)
    other.send(get(HUNG + b"/other"))  # t=2: deadline 7
    w.loop.advance(1)
    w.close_backend(SHOP, 0)  # the keep-alive race: sent again on a new connection at t=3
    assert len(w.backend(SHOP).connections) == 4
    assert waiting(w) == 3
    w.loop.advance(2.1)  # t=5.1
    assert statuses(hung.take()) == [504] and c.take() == b"" and other.take() == b""
    w.loop.advance(1.8)  # t=6.9: past the retried one's first deadline
    assert c.take() == b"" and other.take() == b""
    w.loop.advance(0.2)  # t=7.1: the other's deadline, though the first entry of the
    # retried one is before it
    assert statuses(other.take()) == [504] and c.take() == b""
    w.loop.advance(0.8)  # t=7.9
    assert c.take() == b""
    w.loop.advance(0.2)
    assert statuses(c.take()) == [504]
    assert waiting(w) == 0


def answer(c: Any, body: bytes) -> None:
    """The backend connection serving ``c``'s request answers it."""
    c.conn.active.upstream.data_received(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b"
                                         % (len(body), body))
    c.wire.loop.run()


def test_exchanges_answered_between_others_leave_the_order_at_once():
    w = wire(timeouts={"response": "5s"})
    w.backend(SHOP).answer = hang_or_ok
    hung = w.client(("127.0.0.9", 1))
    hung.send(get(HUNG))
    w.backend(SHOP).answer = None
    c1, c2 = w.client(("127.0.0.1", 1)), w.client(("127.0.0.2", 1))
    for i in range(200):
        c1.send(get(b"/one"))
        c2.send(get(b"/two"))
        answer(c1, b"%d" % i)  # neither the oldest nor the newest
        answer(c2, b"%d" % i)
        assert c1.take().endswith(b"\r\n\r\n%d" % i) and c2.take().endswith(b"\r\n\r\n%d" % i)
        assert waiting(w) == 1
    w.loop.advance(5.1)
    assert statuses(hung.take()) == [504]
    assert waiting(w) == 0


def test_a_reload_that_shortens_the_timeout_keeps_both_in_force():
    cfg: dict[str, Any] = {"timeouts": {"response": "10s"}}
    w = wire(**cfg)
    w.backend(SHOP).answer = None
    a, b = w.client(("127.0.0.1", 1)), w.client(("127.0.0.2", 1))
    a.send(get(b"/a"))  # t=0 with 10 s: deadline 10
    w.loop.advance(1)
    raw = {"apps": {"shop": {"routes": ["shop.test"], "session_sticky": False,
                             "services": {"web": {"backends": [SHOP]}}}},
           "timeouts": {"response": "2s"}}
    w.ctx.configure(config_from_dict(raw))
    b.send(get(b"/b"))  # t=1 with 2 s: deadline 3, before a's
    w.loop.advance(1.9)
    assert b.take() == b""
    w.loop.advance(0.2)  # t=3.1
    assert statuses(b.take()) == [504] and a.take() == b""
    w.loop.advance(6.8)  # t=9.9
    assert a.take() == b""
    w.loop.advance(0.2)
    assert statuses(a.take()) == [504]
    assert waiting(w) == 0
