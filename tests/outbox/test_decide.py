"""The row's next state, as a table: prepare(), decide() and give_back() are pure."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.outbox.decide import Policy, Prepared, Unsendable, decide, give_back, prepare
from relay.outbox.queries import ENVELOPE_FIELDS
from relay.outbox.store import ClaimedRow
from relay.retry import GiveUpPolicy, RetryPolicy

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = Policy(
    retry=RetryPolicy(timedelta(seconds=1), timedelta(minutes=10), random=lambda: 0.5),
    give_up=GiveUpPolicy(max_attempts=5, max_age=timedelta(hours=1)),
    configuration_pause=timedelta(seconds=60),
)
GOOD = (
    '{"case": {"number": "1", "amount": 12345678901234567.89}, "eventType": "case_created", '
    '"timestamp": "2017-07-25T10:31:28Z", "payloadVersion": "1.0.0", '
    '"correlationId": "70C6D351-016F-4C9E-B1A9-D581FC3A596B"}'
)
JSON_KINDS = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}


def _kind(value: object) -> str:
    return JSON_KINDS.get(type(value), "number")


def row(
    payload: str = GOOD,
    attempts: int = 1,
    age: timedelta = timedelta(0),
    stops: int = 0,
    **kw: str,
) -> ClaimedRow:
    """A claimed row as the claim returns it; the envelope read out as PostgreSQL would."""
    document: Any = json.loads(payload)
    fields = document if isinstance(document, dict) else {}
    return ClaimedRow(
        id=7,
        token=1 << 32 | 1,
        event_type="case_created",
        payload=payload,
        tenant=kw.get("tenant"),
        country=kw.get("country"),
        ordering_key=None,
        attempts=attempts,
        stops=stops,
        created_at=NOW - age,
        traceparent=None,
        tracestate=None,
        envelope_ok=False,  # the claim's fast path is PostgreSQL's: here every row is read out
        correlation_id=fields.get("correlationId")
        if isinstance(fields.get("correlationId"), str)
        else None,
        payload_type=_kind(document),
        envelope={
            name: fields[name] if isinstance(fields.get(name), str) else None
            for name in ENVELOPE_FIELDS
        },
        envelope_kinds={
            name: _kind(fields[name]) if name in fields else None for name in ENVELOPE_FIELDS
        },
    )


def test_prepare_sends_the_stored_text_unchanged_and_routes_by_row_then_default() -> None:
    prepared = prepare(row(tenant="budget"), "dk", "abc", max_stops=5)
    assert isinstance(prepared, Prepared)
    assert prepared.body == GOOD.encode()
    assert b"12345678901234567.89" in prepared.body
    assert prepared.route == "dk/budget"
    assert prepared.correlation_id == "70C6D351-016F-4C9E-B1A9-D581FC3A596B"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("[1]", "payload must be a JSON object, not a JSON array"),
        ('"text"', "payload must be a JSON object, not a JSON string"),
        ("1e400", "payload must be a JSON object, not a JSON number"),
        (
            '{"eventType": "case_created"}',
            "payload is missing payloadVersion, correlationId, timestamp",
        ),
        (
            GOOD.replace('"1.0.0"', "[1, 0, 0]"),
            "payload fields must be JSON strings: payloadVersion is a JSON array",
        ),
        (GOOD.replace('"1.0.0"', "null"), "payload is missing payloadVersion"),
        (GOOD.replace('"case_created"', '"claim_updated"', 1), "disagrees with event_type"),
        (GOOD.replace("70C6D351", "nope"), "payload correlationId is not a UUID"),
    ],
)
def test_prepare_refuses_unsendable_rows(payload: str, reason: str) -> None:
    prepared = prepare(row(payload), "dk", "abc", max_stops=5)
    assert isinstance(prepared, Unsendable)
    assert reason in prepared.reason


def test_prepare_needs_a_route() -> None:
    prepared = prepare(row(), None, None, max_stops=5)
    assert isinstance(prepared, Unsendable)
    assert "RELAY_TENANT" in prepared.reason


@pytest.mark.parametrize(("country", "tenant"), [("..", "abc"), ("dk", ".."), ("dk", "a/b")])
def test_prepare_refuses_a_route_that_could_steer_the_request(country: str, tenant: str) -> None:
    prepared = prepare(row(country=country, tenant=tenant), "dk", "abc", max_stops=5)
    assert isinstance(prepared, Unsendable)
    assert "is not" in prepared.reason


@pytest.mark.parametrize(
    ("stops", "reason"),
    [
        (3, "the relay stopped while sending it 3 times"),
        (1, "the relay stopped while sending it once"),
    ],
)
def test_a_row_that_keeps_stopping_relays_is_not_sent_again(stops: int, reason: str) -> None:
    prepared = prepare(row(stops=stops), "dk", "abc", max_stops=stops)
    assert isinstance(prepared, Unsendable)
    assert prepared.reason == reason
    assert isinstance(prepare(row(stops=stops - 1), "dk", "abc", max_stops=stops), Prepared)


def test_give_back_returns_the_claimed_attempt_and_logs_nothing() -> None:
    result = give_back(row(attempts=3), "paused", NOW)
    assert (result.status, result.attempts, result.delay, result.logged) == (
        "pending",
        2,
        0.0,
        False,
    )
    assert result.token == row().token


def outcome(kind: OutcomeKind, status: int | None = None, **kw: object) -> Outcome:
    return Outcome(kind=kind, error_class=f"http_{status}", http_status=status, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("the_row", "the_outcome", "counts", "status", "attempts", "delay"),
    [
        # The claim counted the attempt: `attempts` below is what the row keeps.
        (row(), outcome(OutcomeKind.PUBLISHED, 201, event_api_id="9"), True, "published", 1, None),
        (row(), outcome(OutcomeKind.PERMANENT, 400), True, "dead", 1, None),
        (row(attempts=3), outcome(OutcomeKind.TRANSIENT, 503), True, "pending", 3, 2.0),
        # A throttle (429/503 with Retry-After) uses no attempt; the route's pause holds the
        # row, which is due the moment the pause ends (or is cleared).
        (
            row(attempts=2),
            outcome(OutcomeKind.TRANSIENT, 429, retry_after=timedelta(seconds=30)),
            True,
            "pending",
            1,
            0.0,
        ),
        # Retry-After on another transient answer is a floor under the jittered backoff.
        (
            row(),
            outcome(OutcomeKind.TRANSIENT, 500, retry_after=timedelta(seconds=30)),
            True,
            "pending",
            1,
            30.0,
        ),
        # Out of attempts but young: retried still.
        (row(attempts=10), outcome(OutcomeKind.TRANSIENT, 503), True, "pending", 10, 256.0),
        # Out of attempts and old: dead.
        (
            row(attempts=5, age=timedelta(hours=2)),
            outcome(OutcomeKind.TRANSIENT, 503),
            True,
            "dead",
            5,
            None,
        ),
        # While the circuit is open an outage costs no attempt.
        (row(attempts=3), outcome(OutcomeKind.TRANSIENT, 503), False, "pending", 2, 1.0),
        # A route refused (403, 404) is the route's trouble, not the row's: no attempt used,
        # however old the row; the route's pause holds it.
        (row(attempts=2), outcome(OutcomeKind.CONFIGURATION, 404), True, "pending", 1, 0.0),
        (
            row(attempts=5, age=timedelta(hours=2)),
            outcome(OutcomeKind.CONFIGURATION, 403),
            True,
            "pending",
            4,
            0.0,
        ),
        # Our client refused everywhere: the row waits under the global pause, no attempt used.
        (
            row(attempts=2),
            outcome(OutcomeKind.CONFIGURATION, 401, for_all_routes=True),
            True,
            "pending",
            1,
            0.0,
        ),
    ],
)
def test_decide(
    the_row: ClaimedRow,
    the_outcome: Outcome,
    counts: bool,
    status: str,
    attempts: int,
    delay: float | None,
) -> None:
    result = decide(the_row, the_outcome, NOW, POLICY, counts=counts)
    assert (result.status, result.attempts, result.delay) == (status, attempts, delay)
    assert result.http_status == the_outcome.http_status


def test_backoff_is_capped_and_full_jitter() -> None:
    policy = RetryPolicy(timedelta(seconds=1), timedelta(seconds=60), random=lambda: 1.0)
    assert [policy.delay(n).total_seconds() for n in (1, 2, 3, 7, 8, 50)] == [1, 2, 4, 60, 60, 60]
    assert RetryPolicy(timedelta(1), timedelta(2), random=lambda: 0.0).delay(3) == timedelta(0)
