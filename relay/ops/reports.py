"""What the operator commands answer: ``relay status``, ``relay dead list|show``, ``relay
requeue``, ``relay pause clear``, ``relay purge`` and ``relay audit`` results, each as lines for
people and as JSON for scripts (``relay inbox``'s are in ``relay.ops.inbox_reports``).

Both print through ``relay.ops.formatting``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Any, ClassVar

from relay.ops.formatting import (
    counted,
    fields_of,
    human_duration,
    id_list,
    iso,
    recorded_line,
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


# Requeue and purge ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RequeueResult:
    """What a requeue did (or, with ``dry_run``, would do)."""

    ids: list[int]
    not_dead: list[int]  # ids asked for by number that are missing or not dead
    selector: dict[str, Any]
    dry_run: bool
    audit_id: int | None = None  # its audit-log entry; None for a dry run
    operator: str = ""

    @property
    def needs_attention(self) -> bool:
        """Rows named by id were left alone."""
        return bool(self.not_dead)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "requeued": 0 if self.dry_run else len(self.ids),
            "would_requeue": len(self.ids) if self.dry_run else 0,
            "ids": self.ids,
            "not_dead": self.not_dead,
            "selector": self.selector,
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """One summary line, the ids asked for that were left alone, where it was recorded."""
        shown = id_list(self.ids)
        verb = "would requeue" if self.dry_run else "requeued"
        rows = counted(len(self.ids), "dead row")
        lines = [f"relay: {verb} {rows}" + (f": {shown}" if shown else "")]
        if self.not_dead:
            lines.append(f"relay: not dead (left alone): {id_list(self.not_dead)}")
        return lines + recorded_line(self.audit_id, self.operator)


@dataclass(frozen=True, slots=True)
class DiscardResult:
    """What a discard did (or, with ``dry_run``, would do)."""

    ids: list[int]
    not_dead: list[int]  # ids asked for by number that are missing or not dead
    reason: str
    selector: dict[str, Any]
    dry_run: bool
    audit_id: int | None = None
    operator: str = ""

    @property
    def needs_attention(self) -> bool:
        """Rows named by id were left alone."""
        return bool(self.not_dead)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "discarded": 0 if self.dry_run else len(self.ids),
            "would_discard": len(self.ids) if self.dry_run else 0,
            "ids": self.ids,
            "not_dead": self.not_dead,
            "reason": self.reason,
            "selector": self.selector,
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """One summary line, the ids asked for that were left alone, where it was recorded."""
        shown = id_list(self.ids)
        verb = "would discard" if self.dry_run else "discarded"
        rows = counted(len(self.ids), "dead row")
        lines = [f"relay: {verb} {rows}" + (f": {shown}" if shown else "")]
        if self.ids and not self.dry_run:
            lines.append("relay: the rows behind them in their ordering keys go now")
        if self.not_dead:
            lines.append(f"relay: not dead (left alone): {id_list(self.not_dead)}")
        return lines + recorded_line(self.audit_id, self.operator)


@dataclass(frozen=True, slots=True)
class ReplayRow:
    """A published row chosen for a replay."""

    id: int
    event_type: str
    ordering_key: str | None
    published_at: datetime | None  # when it was published (before the replay)
    held: bool  # a newer row of its key is not published yet: left alone

    def line(self) -> str:
        return f"  {self.id:>10}  published {iso(self.published_at)}  {self.event_type}"


@dataclass(frozen=True, slots=True)
class ReplayResult:
    """What a replay did (or, with ``dry_run``, would do)."""

    rows: list[ReplayRow]  # replayed, or that would be
    held: list[ReplayRow]  # left alone: newer rows of their key are not published yet
    not_published: list[int]  # ids asked for by number that are missing or not published
    selector: dict[str, Any]
    dry_run: bool
    audit_id: int | None = None  # its audit-log entry; None for a dry run
    operator: str = ""
    SHOWN: ClassVar[int] = 100  # rows a dry run lists one per line

    @property
    def ids(self) -> list[int]:
        return [row.id for row in self.rows]

    @property
    def needs_attention(self) -> bool:
        """Rows were held back, or ids named were left alone."""
        return bool(self.held or self.not_published)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "replayed": 0 if self.dry_run else len(self.rows),
            "would_replay": len(self.rows) if self.dry_run else 0,
            "ids": self.ids,
            "rows": [fields_of(row, ["id", "event_type", "published_at"]) for row in self.rows],
            "held_back": [fields_of(row, ["id", "ordering_key"]) for row in self.held],
            "not_published": self.not_published,
            "selector": self.selector,
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """A summary line (a dry run lists the rows), what was left alone and why, and where
        it was recorded."""
        verb = "would replay" if self.dry_run else "replayed"
        lines = [f"relay: {verb} {counted(len(self.rows), 'published row')}"]
        if self.dry_run:
            lines += [row.line() for row in self.rows[: self.SHOWN]]
            if len(self.rows) > self.SHOWN:
                lines.append(f"  ... ({len(self.rows) - self.SHOWN} more; --json lists them all)")
        elif self.rows:
            lines[0] += f": {id_list(self.ids)}"
        if self.held:
            held = id_list([row.id for row in self.held])
            lines += [
                f"relay: held back {counted(len(self.held), 'row')}, whose ordering key has newer "
                f"rows not published yet (a replayed row would go before them): {held}",
                "relay: replay those once the newer rows are published (relay replay ID...)",
            ]
        if self.not_published:
            lines.append(f"relay: not published (left alone): {id_list(self.not_published)}")
        return lines + recorded_line(self.audit_id, self.operator)


@dataclass(frozen=True, slots=True)
class PauseClearResult:
    """What ``relay pause clear`` lifted, and the routes named that had no pause."""

    lifted: list[ActivePause]
    not_paused: list[str]
    audit_id: int
    operator: str
    released: int = 0  # rows made due at once

    @property
    def needs_attention(self) -> bool:
        """A route was named that had no pause: a typo, or lifted already."""
        return bool(self.not_paused)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "lifted": [fields_of(pause) for pause in self.lifted],
            "not_paused": self.not_paused,
            "released": self.released,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """The pauses lifted, the routes that had none, where it was recorded."""
        lines = pause_lines(self.lifted, "lifted:")
        if self.lifted:
            lines.append(f"rows due now: {self.released}")
        if self.not_paused:
            lines.append(f"relay: no pause to lift on: {', '.join(self.not_paused)}")
        return lines + recorded_line(self.audit_id, self.operator)


@dataclass(frozen=True, slots=True)
class PurgeResult:
    """What a purge deleted."""

    cutoff: datetime
    rows: int
    batches: int
    seconds: float
    audit_id: int | None = None
    operator: str = ""

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {**fields_of(self), "dry_run": False}

    def lines(self) -> list[str]:
        """One summary line, and where it was recorded."""
        return [
            f"relay: purged {counted(self.rows, 'published row')} (published before "
            f"{iso(self.cutoff)}) in {counted(self.batches, 'batch', 'batches')}, "
            f"{self.seconds:.1f}s",
            *recorded_line(self.audit_id, self.operator),
        ]


@dataclass(frozen=True, slots=True)
class PurgePreview:
    """What a purge would delete now (``relay purge --dry-run``)."""

    cutoff: datetime
    rows: int
    deliveries: int  # their delivery-log entries, which go with them
    oldest: datetime | None  # published_at of the oldest and newest of them
    newest: datetime | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {**fields_of(self), "dry_run": True}

    def lines(self) -> list[str]:
        """One summary line."""
        line = (
            f"relay: would purge {counted(self.rows, 'published row')} (published before "
            f"{iso(self.cutoff)}) and their {self.deliveries} delivery-log entries"
        )
        if self.oldest is not None and self.newest is not None:
            line += f"; published {iso(self.oldest)} to {iso(self.newest)}"
        return [line]


# relay audit ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log: who changed what, when, from where, with what effect."""

    id: int
    at: datetime
    operator: str
    host: str
    action: str
    parameters: dict[str, Any]
    rows_affected: int
    row_ids: list[int] | None
    outcome: str
    detail: dict[str, Any] | None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AuditEntry:
        """From an ``audit_list`` row (its JSON columns as text)."""
        values = dict(row)
        values["parameters"] = json.loads(values["parameters"])
        values["detail"] = None if values["detail"] is None else json.loads(values["detail"])
        values["row_ids"] = None if values["row_ids"] is None else list(values["row_ids"])
        return cls(**values)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return fields_of(self)

    def lines(self) -> list[str]:
        """The entry for people: one line, then its selection, ids and details indented."""
        lines = [
            f"{self.id:>6}  {iso(self.at)}  {self.operator} on {self.host}  {self.action}  "
            f"{counted(self.rows_affected, 'row')}  {self.outcome}"
        ]
        chosen = ", ".join(f"{key} {_compact(value)}" for key, value in self.parameters.items())
        lines.append(f"        selection: {chosen or '-'}")
        if self.row_ids:
            lines.append(f"        ids: {id_list(self.row_ids, 20)}")
        for key, value in (self.detail or {}).items():
            if value not in ([], None):
                lines.append(f"        {key.replace('_', ' ')}: {_compact(value)}")
        return lines


def _compact(value: object) -> str:
    if isinstance(value, Mapping):  # a checkpoint before and after a rewind, say
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list):
        return ", ".join(str(item) for item in value[:20]) + (
            f", ... ({len(value) - 20} more)" if len(value) > 20 else ""
        )
    return str(value)


def audit_lines(entries: Sequence[AuditEntry]) -> list[str]:
    """``relay audit`` for people, oldest first."""
    if not entries:
        return ["relay: the audit log holds no entries in that range"]
    return [line for entry in entries for line in entry.lines()]
