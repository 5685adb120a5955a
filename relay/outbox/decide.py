"""Turning a claimed row and a publish outcome into the row's next state. Pure functions.

``prepare`` decides whether a row can be sent at all; ``decide`` decides what an outcome means
for the row: published, tried again later (with or without using an attempt), or dead;
``give_back`` returns a row unsent. All are tested as tables.

The body sent is the payload's text exactly as PostgreSQL renders the stored ``jsonb``
(``payload::text``): it is never parsed and re-encoded, so numbers of any size and precision,
and nesting of any depth, reach Scalepoint as the table holds them. The envelope fields
(``eventType``, ``correlationId``, ...) are read by PostgreSQL in the claim, so validating a row
cannot recurse or overflow here either.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from datetime import datetime, timedelta

from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.outbox.producer import REQUIRED_FIELDS, UUID_PATTERN
from relay.outbox.store import ClaimedRow, Result
from relay.retry import GiveUpPolicy, RetryPolicy
from relay.routes import route_name, route_problem

# Answers that say "come back later" about the partner, not about the row: a Retry-After on
# these defers the row without using an attempt.
THROTTLE_STATUSES = frozenset({429, 503})


@dataclass(slots=True)  # not frozen, as ClaimedRow: one per attempt
class Prepared:
    """A row ready to send: the body as stored, and its route (``country/tenant``)."""

    body: bytes
    country: str
    tenant: str
    correlation_id: str
    route: str


# Rows name few routes: each (country, tenant) is checked once (a bounded number kept).
_route_problem = functools.lru_cache(maxsize=1024)(route_problem)


@dataclass(frozen=True, slots=True)
class Unsendable:
    """Why a row cannot be sent; it is dead-lettered without any HTTP call."""

    reason: str
    correlation_id: str | None = None


def _envelope_problem(row: ClaimedRow) -> str | None:
    if row.envelope_ok:
        return None  # every row an application writes right: checked by the claim
    if row.payload_type != "object":
        return f"payload must be a JSON object, not a JSON {row.payload_type}"
    missing = [name for name in REQUIRED_FIELDS if row.envelope.get(name) in (None, "")]
    wrong = [name for name in missing if row.envelope_kinds.get(name) not in (None, "null")]
    if wrong:
        kinds = ", ".join(f"{name} is a JSON {row.envelope_kinds[name]}" for name in wrong)
        return f"payload fields must be JSON strings: {kinds}"
    if missing:
        return f"payload is missing {', '.join(missing)}"
    declared = row.envelope["eventType"]
    if declared != row.event_type:
        return f"payload eventType {declared!r} disagrees with event_type {row.event_type!r}"
    if not UUID_PATTERN.fullmatch(row.envelope["correlationId"] or ""):
        return "payload correlationId is not a UUID"
    return None


def prepare(
    row: ClaimedRow,
    default_country: str | None,
    default_tenant: str | None,
    *,
    max_stops: int,
) -> Prepared | Unsendable:
    """Check a row before it is sent: how often it stopped a relay, its envelope, its route."""
    correlation_id = row.correlation_id
    if row.stops >= max_stops:
        # Every claim of it so far ended with the relay stopping (killed, crashed or hung):
        # sending it again would most likely stop this one too.
        times = "once" if row.stops == 1 else f"{row.stops} times"
        return Unsendable(f"the relay stopped while sending it {times}", correlation_id)
    problem = _envelope_problem(row)
    if problem is not None:
        return Unsendable(problem, correlation_id)
    country = row.country or default_country
    tenant = row.tenant or default_tenant
    if country is None or tenant is None:
        return Unsendable(
            "no country or tenant: set them on the row or RELAY_COUNTRY / RELAY_TENANT",
            correlation_id,
        )
    problem = _route_problem(country, tenant)
    if problem is not None:
        return Unsendable(problem, correlation_id)
    assert correlation_id is not None  # _envelope_problem checked it
    body = row.payload.encode("utf-8")
    return Prepared(body, country, tenant, correlation_id, route_name(country, tenant))


def unsendable_result(row: ClaimedRow, reason: str, now: datetime) -> Result:
    return Result(
        id=row.id,
        token=row.token,
        status="dead",
        attempts=row.attempts,
        delay=None,
        http_status=None,
        event_api_id=None,
        error=reason,
        latency_ms=None,
        outcome="invalid_event",
        attempted_at=now,
    )


def give_back(row: ClaimedRow, reason: str, now: datetime) -> Result:
    """Return a claimed row unsent: pending at once, the attempt its claim counted given back."""
    return Result(
        id=row.id,
        token=row.token,
        status="pending",
        attempts=max(row.attempts - 1, 0),
        delay=0.0,
        http_status=None,
        event_api_id=None,
        error=None,
        latency_ms=None,
        outcome=reason,
        attempted_at=now,
        logged=False,
    )


@dataclass(frozen=True, slots=True)
class Policy:
    retry: RetryPolicy
    give_up: GiveUpPolicy
    configuration_pause: timedelta


def is_throttle(outcome: Outcome) -> bool:
    """A 429 or 503 that says when to come back: the partner's pace, not the row's fault."""
    return (
        outcome.kind is OutcomeKind.TRANSIENT
        and outcome.retry_after is not None
        and outcome.http_status in THROTTLE_STATUSES
    )


def _next_state(
    row: ClaimedRow, outcome: Outcome, now: datetime, policy: Policy, counts: bool
) -> tuple[str, int, float | None]:
    """(status, attempts, delay) for a row whose attempt did not publish it."""
    used, spared = row.attempts, max(row.attempts - 1, 0)
    if outcome.kind is OutcomeKind.PERMANENT:
        return "dead", used, None
    if outcome.kind is OutcomeKind.CONFIGURATION or is_throttle(outcome):
        # A refusal of the route (or of our client everywhere) or the partner's pace: the
        # route (or every route) is paused for it, and the pause holds the row, its attempts
        # kept. The row is due at once, so whatever ends the pause (its time, a probe's
        # success, `relay pause clear`) lets it go then, not at a time of its own.
        return "pending", spared, 0.0
    attempts = used if counts else spared
    if policy.give_up.exhausted(attempts, now - row.created_at):
        return "dead", attempts, None
    delay = policy.retry.delay(max(attempts, 1), outcome.retry_after)
    return "pending", attempts, delay.total_seconds()


def decide(
    row: ClaimedRow, outcome: Outcome, now: datetime, policy: Policy, *, counts: bool
) -> Result:
    """The row's next state after ``outcome``.

    The claim counted the attempt (``row.attempts`` includes it). ``counts`` is False while the
    circuit is open or probing: an outage is nobody's fault, so the attempts it causes are
    given back, as are attempts answered with a throttle (429/503 with Retry-After) or a
    refusal of the route or of our client, which pause the route or every route instead.
    """
    if outcome.kind is OutcomeKind.PUBLISHED:
        status, attempts, delay = "published", row.attempts, None
    else:
        status, attempts, delay = _next_state(row, outcome, now, policy, counts)
    return Result(
        id=row.id,
        token=row.token,
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
