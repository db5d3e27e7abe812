"""The request path's invariant, on generated streams (tests/protocol/streams.py): backends read
exactly the requests the router accepted, whole and in order, nothing after a closing answer;
each client gets one response per request, in order, its own. ``python3 -m
benchmarks.invariant`` runs many more examples."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings

from tests.protocol.streams import check, streams


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(streams())
def test_backends_read_what_was_accepted_and_clients_get_their_own_answers(stream):
    reqs, splits = stream
    check(reqs, splits)
