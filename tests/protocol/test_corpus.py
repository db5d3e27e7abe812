"""The hostile-request corpus (tests/reliability/corpus.py) against the request path in memory:
the same verdicts as end to end over sockets, without a socket -- so the head modules and the
phases are judged directly, case by case, in milliseconds."""

from __future__ import annotations

import httptools
import pytest

from tests.memory import Request, Wire
from tests.reliability.corpus import CORPUS, Case
from tests.reliability.faultserver import Seen
from tests.reliability.harness import verdict

SHOP, ADMIN = "10.0.0.1:80", "10.0.0.2:80"


class _Statuses:
    def __init__(self) -> None:
        self.statuses: list[int] = []
        self.parser = httptools.HttpResponseParser(self)

    def on_headers_complete(self) -> None:
        self.statuses.append(self.parser.get_status_code())


def _ok(name: bytes):  # type: ignore[no-untyped-def]
    def answer(req: Request) -> tuple[list[bytes], bool]:
        return [b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%b\n" % (len(name) + 1, name)], False
    return answer


def _seen(req: Request) -> Seen:
    return Seen(req.method.decode(), req.target.decode("latin-1"), req.headers, req.body, "ok")


@pytest.mark.parametrize("case", CORPUS, ids=[c.name for c in CORPUS])
def test_corpus_case_in_memory(case: Case) -> None:
    w = Wire({"apps": {
        "shop": {"routes": ["app.test"], "session_sticky": False,
                 "services": {"web": {"weight": 1, "backends": [SHOP]}}},
        "admin": {"routes": ["app.test/admin"], "session_sticky": False,
                  "services": {"web": {"weight": 1, "backends": [ADMIN]}}},
    }})
    w.backend(SHOP).answer = _ok(b"shop")
    w.backend(ADMIN).answer = _ok(b"admin")
    c = w.client()
    c.send(case.data)
    r = _Statuses()
    try:
        r.parser.feed_data(c.received())
    except httptools.HttpParserError:
        pass
    seen = [_seen(q) for q in w.backend(SHOP).requests() + w.backend(ADMIN).requests()]
    assert verdict(r.statuses, c.closed) == case.expect, case.reason
    assert len(seen) == case.forwarded, case.reason
    assert not any("smuggled" in s.path for s in seen)
    if case.check is not None:
        case.check(seen)
