"""The row's next state, as a table: prepare() and decide() are pure."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from relay.decide import Policy, Prepared, Unsendable, decide, prepare
from relay.outbox import ClaimedRow
from relay.publisher import Outcome, OutcomeKind
from relay.retry import GiveUpPolicy, RetryPolicy

NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
POLICY = Policy(
    retry=RetryPolicy(timedelta(seconds=1), timedelta(minutes=10), random=lambda: 0.5),
    give_up=GiveUpPolicy(max_attempts=5, max_age=timedelta(hours=1)),
    configuration_pause=timedelta(seconds=60),
)
GOOD = (
    '{"eventType": "case_created", "payloadVersion": "1.0.0", "timestamp": "2017-07-25T10:31:28Z",'
    ' "correlationId": "70C6D351-016F-4C9E-B1A9-D581FC3A596B", "case": {"number": "1"}}'
)


def row(
    payload: str = GOOD, attempts: int = 0, age: timedelta = timedelta(0), **kw: str
) -> ClaimedRow:
    return ClaimedRow(
        id=7,
        event_type="case_created",
        payload=payload,
        tenant=kw.get("tenant"),
        country=kw.get("country"),
        ordering_key=None,
        attempts=attempts,
        created_at=NOW - age,
    )


def test_prepare_encodes_compactly_and_routes_by_row_then_default() -> None:
    prepared = prepare(row(tenant="budget"), "dk", "abc")
    assert isinstance(prepared, Prepared)
    assert prepared.body.startswith(b'{"eventType":"case_created","payloadVersion":"1.0.0"')
    assert b": " not in prepared.body
    assert prepared.route == "dk/budget"
    assert prepared.correlation_id == "70C6D351-016F-4C9E-B1A9-D581FC3A596B"


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        ("[1]", "payload must be a JSON object, not a JSON list"),
        ('"text"', "payload must be a JSON object, not a JSON str"),
        (
            '{"eventType": "case_created"}',
            "payload is missing payloadVersion, correlationId, timestamp",
        ),
        (GOOD.replace('"case_created"', '"claim_updated"', 1), "disagrees with event_type"),
        (GOOD.replace("70C6D351", "nope"), "payload correlationId is not a UUID"),
    ],
)
def test_prepare_refuses_unsendable_rows(payload: str, reason: str) -> None:
    prepared = prepare(row(payload), "dk", "abc")
    assert isinstance(prepared, Unsendable)
    assert reason in prepared.reason


def test_prepare_needs_a_route() -> None:
    prepared = prepare(row(), None, None)
    assert isinstance(prepared, Unsendable)
    assert "RELAY_TENANT" in prepared.reason


def outcome(kind: OutcomeKind, status: int | None = None, **kw: object) -> Outcome:
    return Outcome(kind=kind, error_class=f"http_{status}", http_status=status, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("the_row", "the_outcome", "counts", "status", "attempts", "delay"),
    [
        (row(), outcome(OutcomeKind.PUBLISHED, 201, event_api_id="9"), True, "published", 1, None),
        (row(), outcome(OutcomeKind.PERMANENT, 400), True, "dead", 1, None),
        (row(attempts=2), outcome(OutcomeKind.TRANSIENT, 503), True, "pending", 3, 2.0),
        # Retry-After is a floor under the jittered backoff.
        (
            row(),
            outcome(OutcomeKind.TRANSIENT, 429, retry_after=timedelta(seconds=30)),
            True,
            "pending",
            1,
            30.0,
        ),
        # Out of attempts but young: retried still.
        (row(attempts=9), outcome(OutcomeKind.TRANSIENT, 503), True, "pending", 10, 256.0),
        # Out of attempts and old: dead.
        (
            row(attempts=4, age=timedelta(hours=2)),
            outcome(OutcomeKind.TRANSIENT, 503),
            True,
            "dead",
            5,
            None,
        ),
        # While the circuit is open an outage costs no attempt.
        (row(attempts=2), outcome(OutcomeKind.TRANSIENT, 503), False, "pending", 2, 1.0),
        # A configuration error waits for the route's pause, using no attempt.
        (row(attempts=1), outcome(OutcomeKind.CONFIGURATION, 403), True, "pending", 1, 60.0),
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
