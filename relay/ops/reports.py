"""What the operator commands that read answer: ``relay status``, ``relay dead list|show`` and
the pauses, each as lines for people and as JSON for scripts. What the commands that change
rows answer (requeue, discard, replay, pause clear, purge, audit) is in ``relay.ops.results``,
``relay inbox``'s in ``relay.ops.inbox_reports``.

Both print through ``relay.ops.formatting``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any

from relay.ops.formatting import (
    counted,
    fields_of,
    human_duration,
    iso,
    relative,
)


@dataclass(frozen=True, slots=True)
class ActivePause:
    """A relay_pause row: in force, or run out and waiting for a relay's probe to succeed."""

    route: str
    kind: str
    reason: str
    set_by: str
    set_at: datetime
    until: datetime
    remaining: float

    def line(self) -> str:
        scope = "every route" if self.route == "*" else self.route
        state = (
            f"{human_duration(self.remaining)} left"
            if self.remaining > 0
            else "ran out, waiting for a probe"
        )
        reason = " ".join(self.reason.split())  # one pause, one line, whatever it says
        return f"  {scope}  {self.kind}  {state}  set by {self.set_by}: {reason}"


def pause_lines(pauses: Sequence[ActivePause], heading: str = "pauses:") -> list[str]:
    """Pauses for people, one per line (``relay status``, ``relay pause list|clear``)."""
    return [heading + ("" if pauses else " none"), *(pause.line() for pause in pauses)]


@dataclass(frozen=True, slots=True)
class RetryingRow:
    """A pending row that has failed at least once, and when it may be tried again."""

    id: int
    event_type: str
    attempts: int
    next_attempt_at: datetime
    last_http_status: int | None
    error_class: str


@dataclass(frozen=True, slots=True)
class StatusReport:
    """``relay status``: one consistent snapshot of the outbox."""

    at: datetime
    counts: dict[str, int]
    oldest_unfinished_at: datetime | None
    oldest_unfinished_age: float | None
    retrying: int
    next_retry_at: datetime | None
    retrying_rows: list[RetryingRow]
    blocked_by_dead: int
    dead_by_event_type: dict[str, int]
    dead_by_error_class: dict[str, int]
    last_published_at: datetime | None
    pauses: list[ActivePause]
    blocked_on_routes: dict[str, int] = field(default_factory=dict)
    blocked_reasons: dict[str, int] = field(default_factory=dict)  # blocked rows by blocked_by
    blocked_ended: int = 0  # blocked behind a dead row that is gone: let go by the next sweep

    def to_json(self) -> dict[str, Any]:
        """The report as JSON-ready values (timestamps as ISO 8601 strings, ages in seconds)."""
        document = fields_of(
            self,
            [
                "at",
                "counts",
                "oldest_unfinished_at",
                "oldest_unfinished_age",
                "retrying",
                "next_retry_at",
                "blocked_by_dead",
                "dead_by_event_type",
                "dead_by_error_class",
                "last_published_at",
                "blocked_on_routes",
                "blocked_reasons",
                "blocked_ended",
            ],
        )
        document["retrying_rows"] = [fields_of(row) for row in self.retrying_rows]
        document["pauses"] = [fields_of(pause) for pause in self.pauses]
        return document

    def lines(self) -> list[str]:
        """The report for people."""
        return [
            *self._queue_lines(),
            *self._retrying_lines(),
            *self._dead_lines(),
            *self._pause_lines(),
        ]

    def _queue_lines(self) -> list[str]:
        counts = self.counts
        oldest = (
            "-"
            if self.oldest_unfinished_age is None
            else f"{human_duration(self.oldest_unfinished_age)} old"
        )
        return [
            f"outbox at {iso(self.at)}",
            f"  pending    {counts['pending']:>10,}   oldest unfinished: {oldest}",
            f"  in_flight  {counts['in_flight']:>10,}",
            f"  published  {counts['published']:>10,}   last published: "
            + relative(self.last_published_at, self.at),
            f"  dead       {counts['dead']:>10,}",
            f"  blocked    {counts['blocked']:>10,}   {self._why_blocked()}",
        ]

    def _why_blocked(self) -> str:
        if not self.counts["blocked"]:
            return "behind dead rows, or on paused routes"
        names = {"dead_row": "behind dead rows", "route_pause": "on paused routes"}
        parts = [
            f"{rows:,} {names.get(reason, reason)}" for reason, rows in self.blocked_reasons.items()
        ]
        if self.blocked_ended:
            parts.append(f"{self.blocked_ended:,} of them behind a dead row that is gone")
        return "; ".join(parts)

    def _retrying_lines(self) -> list[str]:
        lines = [
            f"retrying: {counted(self.retrying, 'row')}, next attempt "
            + relative(self.next_retry_at, self.at)
        ]
        for row in self.retrying_rows:
            lines.append(
                f"  {row.id:>10}  {row.event_type}  attempts {row.attempts}  "
                f"last {row.error_class}  next {relative(row.next_attempt_at, self.at)}"
            )
        if self.blocked_by_dead:
            lines.append(
                "held behind a dead row of their ordering key: "
                + counted(self.blocked_by_dead, "row")
            )
        return lines

    def _dead_lines(self) -> list[str]:
        lines = ["dead by event type:" + ("" if self.dead_by_event_type else " none")]
        lines += [f"  {count:>10,}  {key}" for key, count in self.dead_by_event_type.items()]
        lines.append("dead by last error:" + ("" if self.dead_by_error_class else " none"))
        lines += [f"  {count:>10,}  {key}" for key, count in self.dead_by_error_class.items()]
        return lines

    def _pause_lines(self) -> list[str]:
        lines = pause_lines(self.pauses)
        for route, rows in self.blocked_on_routes.items():
            lines.append(f"  {counted(rows, 'row')} of {route} parked until its pause ends")
        return lines


@dataclass(frozen=True, slots=True)
class DeadRow:
    """A dead row as ``relay dead list`` shows it: everything but the payload."""

    id: int
    event_type: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    attempts: int
    created_at: datetime
    died_at: datetime
    last_http_status: int | None
    last_error: str | None
    error_class: str

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return fields_of(self)

    def line(self) -> str:
        """One line for people; the error shortened."""
        error = (self.last_error or "").replace("\n", " ")
        error = error if len(error) <= 80 else error[:77] + "..."
        return (
            f"{self.id:>10}  {iso(self.died_at)}  {self.event_type}  attempts {self.attempts}"
            f"  {self.error_class}  {error}"
        )


@dataclass(frozen=True, slots=True)
class Delivery:
    """One attempt from the delivery log."""

    attempt: int
    attempted_at: datetime
    http_status: int | None
    latency_ms: float | None
    outcome: str
    event_api_id: str | None
    error: str | None
    worker: str


@dataclass(frozen=True, slots=True)
class RowDetail:
    """``relay dead show``: one row in full, its payload and every attempt."""

    id: int
    event_type: str
    payload: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    status: str
    blocked_by: str | None
    attempts: int
    available_at: datetime
    created_at: datetime
    published_at: datetime | None
    event_api_id: str | None
    last_http_status: int | None
    last_error: str | None
    claimed_by: str | None
    lease_until: datetime | None
    error_class: str
    last_attempt_at: datetime | None
    trace_id: str | None = None  # of the trace it was written in (outbox.trace_context)
    waits_for_dead: int | None = None  # the first dead row before it in its key
    waits_for_row: int | None = None  # the first unfinished row before it in its key
    route_pause: str | None = None  # the pause that holds its route, if one does
    deliveries: list[Delivery] = field(default_factory=list)

    def waits_for(self) -> str:
        """What holds the row back, and the command that lets it go ("-" when nothing)."""
        if self.status not in ("pending", "blocked"):
            return "-"
        if self.waits_for_dead is not None:
            dead = self.waits_for_dead
            return (
                f"dead row {dead} of its ordering key: relay requeue {dead}, "
                f"or relay dead discard {dead} --reason ..."
            )
        if self.waits_for_row is not None:
            return f"row {self.waits_for_row} of its ordering key, sent first"
        if self.route_pause is not None:
            pause = " ".join(self.route_pause.split())
            return f"the pause of {pause} (relay pause list; relay pause clear ROUTE)"
        if self.status == "blocked":
            return "nothing any more: a relay lets it go within a minute"
        return "-"

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values; the payload as the JSON object it is."""
        names = [item.name for item in fields(self) if item.name not in ("payload", "deliveries")]
        document = fields_of(self, names)
        document["payload"] = json.loads(self.payload)
        document["waits_for"] = self.waits_for()
        document["deliveries"] = [fields_of(item) for item in self.deliveries]
        return document

    def lines(self) -> list[str]:
        """The row for people: its state, the last error, the payload, the delivery log."""
        lines = [
            f"outbox row {self.id}: {self.status}",
            f"  waits for:      {self.waits_for()}",
            f"  event type:     {self.event_type}",
            f"  route:          {self.country or '(RELAY_COUNTRY)'}/"
            f"{self.tenant or '(RELAY_TENANT)'}",
            f"  ordering key:   {self.ordering_key or '-'}",
            f"  attempts:       {self.attempts}",
            f"  created:        {iso(self.created_at)}",
            f"  last attempt:   {iso(self.last_attempt_at) or '-'}",
            f"  available at:   {iso(self.available_at)}",
            f"  published:      {iso(self.published_at) or '-'}",
            f"  event_api_id:   {self.event_api_id or '-'}",
            f"  HTTP status:    {self.last_http_status or '-'}",
            f"  error class:    {self.error_class}",
            f"  last error:     {self.last_error or '-'}",
            f"  trace id:       {self.trace_id or '-'}",
            "payload:",
        ]
        pretty = json.dumps(json.loads(self.payload), indent=2, ensure_ascii=False)
        lines += ["  " + line for line in pretty.splitlines()]
        lines.append(f"delivery log ({counted(len(self.deliveries), 'attempt')}):")
        for item in self.deliveries:
            latency = "-" if item.latency_ms is None else f"{item.latency_ms:.0f}ms"
            lines.append(
                f"  attempt {item.attempt}  {iso(item.attempted_at)}  "
                f"HTTP {item.http_status or '-'}  {latency}  {item.outcome}  "
                f"by {item.worker}  {item.error or ''}".rstrip()
            )
        return lines
