"""The exposition of ``Metrics``: Prometheus' conventions, series born with their first event,
bounded labels."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from relay.metrics import (
    DEAD_CLASSES,
    EVENT_TYPE_LIMIT,
    LATENCY_BUCKETS,
    OTHER,
    RETRY_CLASSES,
    ROUTE_LIMIT,
    Metrics,
    relay_version,
)

DOC = Path(__file__).parents[2] / "docs" / "classification.md"
ROUTE_LABELS = {"country": "dk", "tenant": "abcinsurance"}


def samples(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    text = generate_latest(metrics.registry).decode()
    return {
        (item.name, frozenset(item.labels.items())): item.value
        for family in text_string_to_metric_families(text)
        for item in family.samples
    }


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return samples(metrics).get((name, frozenset(labels.items())))


def test_no_created_series() -> None:
    metrics = Metrics()
    metrics.count_published("payment_status_updated", "dk/abcinsurance")
    metrics.observe_publish("dk", "abcinsurance", 0.1)
    text = generate_latest(metrics.registry).decode()
    assert "_created" not in text
    assert "relay_events_published_total" in text


def test_labels_known_in_advance_have_series_at_zero_from_the_start() -> None:
    metrics = Metrics()
    for reason in ("paused", "lease_too_short", "liveness_lost", "shutdown"):
        assert value(metrics, "relay_rows_given_back_total", reason=reason) == 0
    for reason in ("unavailable", "rejected"):
        assert value(metrics, "relay_token_failures_total", reason=reason) == 0
    for kind in ("retry_after", "circuit", "configuration"):
        assert value(metrics, "relay_paused", kind=kind) == 0
    for operation in ("claim", "record", "extend", "pauses"):
        assert value(metrics, "relay_database_errors_total", operation=operation) == 0


def test_the_circuit_state_is_one_series_per_state() -> None:
    metrics = Metrics()
    assert [value(metrics, "relay_circuit_state", state=s) for s in ("closed", "half_open")] == [
        1,
        0,
    ]
    metrics.show_circuit("open")
    states = {s: value(metrics, "relay_circuit_state", state=s) for s in ("closed", "open")}
    assert states == {"closed": 0, "open": 1}
    assert value(metrics, "relay_circuit_state", state="half_open") == 0


def test_build_info_names_the_release() -> None:
    metrics = Metrics()
    [(name, labels)] = [key for key in samples(metrics) if key[0] == "relay_build_info"]
    assert dict(labels)["version"] == relay_version() != "unknown"
    assert samples(metrics)[(name, labels)] == 1


def test_outcome_series_are_born_with_their_first_event() -> None:
    metrics = Metrics()
    labels = {"event_type": "payment_status_updated", **ROUTE_LABELS}
    metrics.count_published("payment_status_updated", "dk/abcinsurance")
    assert value(metrics, "relay_events_published_total", **labels) == 1
    outcomes = ("relay_events_dead_lettered_total", "relay_events_retried_total")
    assert not [key for key in samples(metrics) if key[0] in outcomes]  # none ahead of time
    metrics.count_dead("payment_status_updated", "dk/abcinsurance", "http_400")
    [dead] = [key for key in samples(metrics) if key[0] == "relay_events_dead_lettered_total"]
    assert dict(dead[1])["outcome_class"] == "http_400"
    assert samples(metrics)[dead] == 1


def test_the_series_follow_the_traffic() -> None:
    """Two routes and two event types, every event published, one retried and one dead: the
    series of what happened and the process's own, no more (193 when every outcome class
    was made ahead of time)."""
    metrics = Metrics()
    baseline = len(samples(metrics))  # the process's own series, before any event
    for route in ("dk/abcinsurance", "dk/budgetinsurance"):
        metrics.expect_route(*route.split("/"))
        metrics.expect_receive_route(*route.split("/"))
        for event_type in ("case_created", "payment_status_updated"):
            metrics.count_published(event_type, route)
    metrics.count_retried("case_created", "dk/abcinsurance", "http_503")
    metrics.count_dead("case_created", "dk/abcinsurance", "http_400")
    grown = {key for key in samples(metrics)} - set(samples(Metrics()))
    families: dict[str, int] = {}
    for name, _labels in grown:
        families[name] = families.get(name, 0) + 1
    assert families == {
        "relay_events_published_total": 4,
        "relay_events_retried_total": 1,
        "relay_events_dead_lettered_total": 1,
        # per route: 12 buckets, +Inf, count and sum
        "relay_publish_latency_seconds_bucket": 2 * (len(LATENCY_BUCKETS) + 1),
        "relay_publish_latency_seconds_count": 2,
        "relay_publish_latency_seconds_sum": 2,
        "relay_inbox_polling": 2,
        "relay_inbox_items_malformed_total": 2,
    }
    # the process's own series (claim batch histogram, database error classes, ...) carry no
    # route and no event type: they do not grow with the traffic
    assert baseline < 60
    assert not [labels for _name, labels in samples(Metrics()) if "event_type" in dict(labels)]


def test_routes_past_the_limit_and_invalid_ones_fold_into_other() -> None:
    metrics = Metrics()
    tenants = [f"tenant{number}" for number in range(ROUTE_LIMIT + 20)]
    for tenant in tenants:
        metrics.observe_publish("dk", tenant, 0.01)
    metrics.observe_publish("dk", "..", 0.01)
    counts = {
        dict(labels)["tenant"]: sample
        for (name, labels), sample in samples(metrics).items()
        if name == "relay_publish_latency_seconds_count"
    }
    assert set(counts) == {*tenants[:ROUTE_LIMIT], OTHER}
    assert counts[OTHER] == 21
    # A route already known keeps its own labels.
    metrics.count_published("payment_status_updated", "dk/tenant0")
    assert (
        value(
            metrics,
            "relay_events_published_total",
            event_type="payment_status_updated",
            country="dk",
            tenant="tenant0",
        )
        == 1
    )


@pytest.mark.parametrize("event_type", ["x" * 101, "payment status", "caf\u00e9", ""])
def test_an_implausible_event_type_is_other(event_type: str) -> None:
    metrics = Metrics()
    metrics.count_dead(event_type, "dk/abcinsurance", "invalid_event_type")
    key = {"event_type": OTHER, **ROUTE_LABELS, "outcome_class": "invalid_event_type"}
    assert value(metrics, "relay_events_dead_lettered_total", **key) == 1


def test_event_types_past_the_limit_are_other() -> None:
    metrics = Metrics()
    for number in range(EVENT_TYPE_LIMIT + 3):
        metrics.count_published(f"type_{number}", "dk/abcinsurance")
    types = {
        dict(labels)["event_type"]
        for (name, labels) in samples(metrics)
        if name == "relay_events_published_total"
    }
    assert len(types) == EVENT_TYPE_LIMIT + 1
    assert OTHER in types


def test_pauses_show_per_route_and_for_every_route() -> None:
    metrics = Metrics()
    metrics.show_pauses({"circuit"}, {("*", "circuit"), ("dk/abcinsurance", "configuration")})
    assert value(metrics, "relay_paused", kind="circuit") == 1
    assert value(metrics, "relay_route_paused", country="*", tenant="*", kind="circuit") == 1
    assert value(metrics, "relay_route_paused", **ROUTE_LABELS, kind="configuration") == 1
    metrics.show_pauses(set(), set())
    assert value(metrics, "relay_paused", kind="circuit") == 0
    assert value(metrics, "relay_route_paused", **ROUTE_LABELS, kind="configuration") is None


def documented_classes() -> dict[str, tuple[str, bool]]:
    """error_class -> (kind, for every route) for each row of the table with a fixed class."""
    rows = re.findall(
        r"^\| (.+?) \| (published|transient|permanent|configuration) \| `(\w+)`([^|]*)\| (.+) \|$",
        DOC.read_text(),
        re.M,
    )
    assert len(rows) > 30
    return {
        error_class: (kind, "for all routes" in why.lower() or "for_all_routes" in why)
        for _, kind, error_class, more, why in rows
        if not re.fullmatch(r"http_\dxx", error_class)
    }


def test_the_outcome_classes_are_those_of_the_classification_table() -> None:
    retried, dead = set(), set()
    for error_class, (kind, _every_route) in documented_classes().items():
        if error_class == "token_unavailable":
            continue  # nothing was sent: the row goes back without an attempt
        if kind == "transient":
            retried.add(error_class)
        if kind in ("transient", "permanent"):
            dead.add(error_class)
    dead.add("invalid_event")  # the relay's own: a row it cannot send (docs/operations.md)
    assert set(RETRY_CLASSES) == retried
    assert set(DEAD_CLASSES) == dead
    assert len(set(DEAD_CLASSES)) == len(DEAD_CLASSES)


def test_the_latency_histogram_exports_as_prometheus_clients_would() -> None:
    """The route latency histogram is counted without prometheus_client's per-observation lock;
    its exposition is the one a prometheus_client Histogram gives for the same observations."""
    observations = [0.001, 0.005, 0.0051, 0.3, 1, 2.5, 29.9, 30, 31, 1e9]
    metrics = Metrics()
    registry = CollectorRegistry()
    reference = Histogram(
        "relay_publish_latency_seconds",
        "Duration of one publish request, token included.",
        ["country", "tenant"],
        buckets=LATENCY_BUCKETS,
        registry=registry,
    )
    for seconds in observations:
        metrics.observe_publish("dk", "abcinsurance", seconds)
        reference.labels("dk", "abcinsurance").observe(seconds)

    def exposition(text: bytes) -> list[str]:
        return [
            line
            for line in text.decode().splitlines()
            if line.startswith("relay_publish_latency_seconds")
            or (line.startswith("#") and "relay_publish_latency_seconds" in line)
        ]

    ours = exposition(generate_latest(metrics.registry))
    theirs = [line for line in exposition(generate_latest(registry)) if "_created" not in line]
    assert ours == theirs
    assert (
        'relay_publish_latency_seconds_bucket{country="dk",le="0.005",tenant="abcinsurance"} 2.0'
        in ours
    )
