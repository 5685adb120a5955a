"""The demo's receive side, without a database: how many events it feeds, and how it judges
the inbox against the emulator's streams."""

from __future__ import annotations

import pytest

from relay.demo.receiving import (
    LIVE_BURSTS,
    MAX_RECEIVED,
    MIN_RECEIVED,
    RECEIVE_ROUTES,
    InboxTally,
    RouteTally,
    receive_plan,
)


@pytest.mark.parametrize(
    ("events", "received"),
    [(10, MIN_RECEIVED), (300, 100), (1000, 333), (3000, MAX_RECEIVED), (1_000_000, MAX_RECEIVED)],
)
def test_the_plan_feeds_a_third_of_the_outbox_within_bounds(events: int, received: int) -> None:
    plan = receive_plan(events)
    assert [route.name for route in plan] == [f"{c}/{t}" for c, t, _ in RECEIVE_ROUTES]
    assert sum(route.total for route in plan) == received
    for route in plan:
        assert route.backlog > 0  # some wait before the relay starts ...
        assert route.burst >= 1  # ... and some arrive while it polls
        assert route.total == route.backlog + route.burst * LIVE_BURSTS


def tally(**routes: RouteTally) -> InboxTally:
    return InboxTally(routes=routes, counted={}, latencies=[])


def test_an_inbox_that_is_its_streams_is_complete_once_and_in_order() -> None:
    route = RouteTally(["_1", "_2", "_3"], stored=["_1", "_2", "_3"])
    route.by_type = {"case_created": {"processed": 2, "pending": 1}}
    route.malformed = {"not an event: no id": 1}
    inbox = tally(abc=route)
    assert route.in_stream_order
    assert (inbox.duplicates, inbox.missing, route.unknown) == (0, 0, 0)
    assert (inbox.events, inbox.malformed, inbox.received) == (3, 1, 4)
    assert (inbox.processed, inbox.pending, inbox.failed) == (2, 1, 1)


def test_an_inbox_stopped_early_holds_a_prefix_of_each_stream() -> None:
    route = RouteTally(["_1", "_2", "_3"], stored=["_1", "_2"])
    assert route.in_stream_order
    assert (route.missing, route.duplicates, route.unknown) == (1, 0, 0)


def test_duplicates_strangers_and_disorder_are_each_seen() -> None:
    assert RouteTally(["_1", "_2"], stored=["_1", "_1"]).duplicates == 1
    assert RouteTally(["_1", "_2"], stored=["_1", "_9"]).unknown == 1
    assert not RouteTally(["_1", "_2"], stored=["_2", "_1"]).in_stream_order


def test_latency_percentiles_are_nearest_rank() -> None:
    inbox = InboxTally(routes={}, counted={}, latencies=[n / 1000 for n in range(100, 0, -1)])
    assert inbox.percentile(0.5) == pytest.approx(0.050)
    assert inbox.percentile(0.99) == pytest.approx(0.099)
    assert tally().percentile(0.5) is None
