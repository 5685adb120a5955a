"""Turning a claimed row and a publish outcome into the row's next state. Pure functions.

``prepare`` decides whether a row can be sent at all; ``decide`` decides what an outcome
means for the row: published, retried later, or dead. Both are tested as tables.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import orjson

from relay.outbox import REQUIRED_FIELDS, UUID_PATTERN, ClaimedRow, Result
from relay.publisher import Outcome, OutcomeKind
from relay.retry import GiveUpPolicy, RetryPolicy


@dataclass(frozen=True, slots=True)
class Prepared:
    """A row ready to send: the compact body and its route."""

    body: bytes
    country: str
    tenant: str
    correlation_id: str

    @property
    def route(self) -> str:
        return f"{self.country}/{self.tenant}"


@dataclass(frozen=True, slots=True)
class Unsendable:
    """Why a row cannot be sent; it is dead-lettered without any HTTP call."""

    reason: str
    correlation_id: str | None = None


def _missing(document: dict[str, object]) -> list[str]:
    return [name for name in REQUIRED_FIELDS if document.get(name) in (None, "")]


def prepare(
    row: ClaimedRow, default_country: str | None, default_tenant: str | None
) -> Prepared | Unsendable:
    """Check a row's payload and route; encode it once, compactly."""
    try:
        document = orjson.loads(row.payload)
    except orjson.JSONDecodeError:
        return Unsendable("payload is not valid JSON")
    if not isinstance(document, dict):
        return Unsendable(f"payload must be a JSON object, not a JSON {type(document).__name__}")
    correlation = document.get("correlationId")
    correlation_id = str(correlation) if correlation is not None else None
    missing = _missing(document)
    if missing:
        return Unsendable(f"payload is missing {', '.join(missing)}", correlation_id)
    if document["eventType"] != row.event_type:
        return Unsendable(
            f"payload eventType {document['eventType']!r} disagrees with event_type "
            f"{row.event_type!r}",
            correlation_id,
        )
    if not isinstance(correlation, str) or not UUID_PATTERN.fullmatch(correlation):
        return Unsendable("payload correlationId is not a UUID", correlation_id)
    country = row.country or default_country
    tenant = row.tenant or default_tenant
    if not country or not tenant:
        return Unsendable(
            "no country or tenant: set them on the row or RELAY_COUNTRY / RELAY_TENANT",
            correlation_id,
        )
    return Prepared(orjson.dumps(document), country, tenant, str(correlation))


def unsendable_result(row: ClaimedRow, reason: str, now: datetime) -> Result:
    return Result(
        id=row.id,
        status="dead",
        attempts=row.attempts + 1,
        delay=None,
        http_status=None,
        event_api_id=None,
        error=reason,
        latency_ms=None,
        outcome="invalid_event",
        attempted_at=now,
    )


@dataclass(frozen=True, slots=True)
class Policy:
    retry: RetryPolicy
    give_up: GiveUpPolicy
    configuration_pause: timedelta


def decide(
    row: ClaimedRow, outcome: Outcome, now: datetime, policy: Policy, *, counts: bool
) -> Result:
    """The row's next state after ``outcome``.

    ``counts`` is False while the circuit is open or probing: an outage is nobody's fault, so
    the attempts it causes are not counted against the row.
    """
    attempts = row.attempts + 1 if counts or outcome.kind is OutcomeKind.PUBLISHED else row.attempts
    status, delay = "pending", None
    if outcome.kind is OutcomeKind.PUBLISHED:
        status = "published"
    elif outcome.kind is OutcomeKind.PERMANENT:
        status, attempts = "dead", row.attempts + 1
    elif outcome.kind is OutcomeKind.CONFIGURATION:
        # The route is paused for everyone; the row waits without using an attempt.
        attempts = row.attempts
        delay = policy.configuration_pause.total_seconds()
    elif policy.give_up.exhausted(attempts, now - row.created_at):
        status = "dead"
    else:
        delay = policy.retry.delay(max(attempts, 1), outcome.retry_after).total_seconds()
    return Result(
        id=row.id,
        status=status,
        attempts=attempts,
        delay=delay,
        http_status=outcome.http_status,
        event_api_id=outcome.event_api_id,
        error=outcome.error,
        latency_ms=outcome.latency * 1000,
        outcome=outcome.error_class,
        attempted_at=now,
    )
