"""What ``relay inbox`` answers: status, list, show, retry, rewind and purge, each as lines
for people and as JSON for scripts.

As in ``relay.ops.reports``, everything prints through ``relay.ops.formatting``. Payloads appear
only in :class:`InboxEventDetail` (``relay inbox show``), exactly as PostgreSQL stores them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, fields
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
    shortened,
)
from relay.ops.results import PurgeResult

# relay inbox status --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxRoute:
    """One receive route: its checkpoint, its events and whether a relay polls it now."""

    country: str
    tenant: str
    configured: bool  # in RELAY_RECEIVE_ROUTES of the environment the command ran in
    polled: bool  # a relay holds the route's receive lock now
    has_checkpoint: bool
    next_path: str | None  # where the next receive asks; None: from the start
    last_event_id: str | None
    newest_event_at: datetime | None  # the newest received event's own timestamp
    lag: float | None  # seconds: now minus newest_event_at
    answered_at: datetime | None  # when Scalepoint last answered a receive of the route
    answered_age: float | None
    updated_at: datetime | None  # when the checkpoint last moved
    paused_until: datetime | None
    pause_reason: str | None
    pause_remaining: float | None  # seconds; 0 or less: the pause ran out
    pending: int
    retrying: int  # pending after a consumer's failed attempt
    processed: int
    failed: int
    malformed: int  # failed items that were not events
    oldest_pending_at: datetime | None  # when the oldest pending event was received
    oldest_pending_age: float | None
    last_received_at: datetime | None

    @property
    def route(self) -> str:
        return f"{self.country}/{self.tenant}"

    @property
    def paused(self) -> bool:
        """A pause is in force (it has not run out)."""
        return self.pause_remaining is not None and self.pause_remaining > 0

    @property
    def caught_up(self) -> bool:
        """Scalepoint's last answer brought no new event (it came after the newest event was
        stored): the route had nothing more to send then, however old its newest event."""
        if self.answered_at is None:
            return False
        return self.last_received_at is None or self.answered_at > self.last_received_at

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values, the route's name first."""
        return {
            "route": self.route,
            **fields_of(self),
            "paused": self.paused,
            "caught_up": self.caught_up,
        }

    def lines(self, now: datetime) -> list[str]:
        """The route for people: a heading, then its checkpoint, answers, pause and events."""
        return [
            f"{self.route}  {self._poller()}",
            f"  checkpoint:   {self._checkpoint()}",
            f"  last answer:  {relative(self.answered_at, now) if self.answered_at else 'never'}",
            f"  lag:          {self._lag(now)}",
            f"  pause:        {self._pause(now)}",
            f"  events:       {self._events()}",
        ]

    def _poller(self) -> str:
        if self.polled:
            return "polled by a relay now"
        if self.configured and not self.has_checkpoint:
            return "NOT polled: in RELAY_RECEIVE_ROUTES here, and never polled"
        return "NOT polled by any relay now"

    def _checkpoint(self) -> str:
        if not self.has_checkpoint:
            stored = self.pending + self.processed + self.failed
            return "none: no relay has polled it" + (
                f" (yet {counted(stored, 'event is', 'events are')} stored under it)"
                if stored
                else ""
            )
        if self.next_path is None:
            return "from the start (RELAY_RECEIVE_FROM, or the stream's beginning)"
        after = f"after {self.last_event_id}; " if self.last_event_id else ""
        return f"{after}next {self.next_path}"

    def _lag(self, now: datetime) -> str:
        """Caught up (the last answer brought nothing new), or how old the newest event is
        while answers still bring events."""
        if self.lag is None or self.newest_event_at is None:
            newest = "no event with a timestamp received yet"
        else:
            age = human_duration(max(self.lag, 0.0))
            newest = f"the newest event received is stamped {iso(self.newest_event_at)} ({age} ago)"
        if self.caught_up:
            answered = relative(self.answered_at, now)
            return f"none: caught up at the last answer, {answered}; {newest}"
        if self.answered_at is None:
            return f"- (no answer yet; {newest})"
        return f"{newest}; the last answer brought events, more may follow"

    def _pause(self, now: datetime) -> str:
        if self.paused_until is None:
            return "none"
        if not self.paused:
            return f"ran out {relative(self.paused_until, now)}: {self.pause_reason or ''}"
        left = human_duration(self.pause_remaining or 0.0)
        return f"until {iso(self.paused_until)} ({left} left): {self.pause_reason or ''}"

    def _events(self) -> str:
        pending = f"{self.pending:,} pending"
        if self.pending:
            oldest = human_duration(max(self.oldest_pending_age or 0.0, 0.0))
            pending += f" ({self.retrying:,} retrying; oldest received {oldest} ago)"
        failed = f"{self.failed:,} failed"
        if self.malformed:
            failed += f" ({counted(self.malformed, 'is not an event', 'are not events')})"
        return f"{pending}, {self.processed:,} processed, {failed}"


@dataclass(frozen=True, slots=True)
class InboxStatus:
    """``relay inbox status``: every receive route, read in one snapshot."""

    at: datetime
    routes: list[InboxRoute]

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {"at": iso(self.at), "routes": [route.to_json() for route in self.routes]}

    def lines(self) -> list[str]:
        """The report for people."""
        lines = [f"inbox at {iso(self.at)}"]
        if not self.routes:
            lines.append(
                "no receive routes: no checkpoint, no event (RELAY_RECEIVE_ROUTES turns "
                "receiving on; docs/inbox.md)"
            )
        for route in self.routes:
            lines += route.lines(self.at)
        return lines


# relay inbox list | show ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxEventRow:
    """An event as ``relay inbox list`` shows it: everything but the payload."""

    id: int
    country: str
    tenant: str
    event_id: str
    event_type: str | None
    event_timestamp: str | None  # as Scalepoint wrote it
    received_at: datetime
    status: str
    attempts: int
    available_at: datetime
    processed_at: datetime | None
    last_error: str | None
    malformed: bool  # an item that was not an event, kept raw

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {**fields_of(self), "route": f"{self.country}/{self.tenant}"}

    def line(self) -> str:
        """One line for people; the error shortened."""
        kind = "(not an event)" if self.malformed else (self.event_type or "-")
        line = (
            f"{self.id:>10}  {iso(self.received_at)}  {self.country}/{self.tenant}  "
            f"{self.event_id}  {kind}  {self.status}  attempts {self.attempts}"
        )
        if self.last_error:
            line += f"  {shortened(self.last_error)}"
        return line


@dataclass(frozen=True, slots=True)
class InboxEventDetail:
    """``relay inbox show``: one event in full, its payload (or the raw item) included."""

    id: int
    country: str
    tenant: str
    event_id: str
    event_type: str | None
    event_timestamp: str | None
    received_at: datetime
    status: str
    attempts: int
    available_at: datetime
    processed_at: datetime | None
    last_error: str | None
    locked_by: str | None
    locked_until: datetime | None
    malformed: bool
    payload: str | None  # JSON text, as PostgreSQL renders the stored jsonb
    payload_pretty: str | None
    raw: str | None  # an item that was not an event, as received
    raw_pretty: str | None
    TEXTS: ClassVar[tuple[str, ...]] = ("payload", "payload_pretty", "raw", "raw_pretty")

    def json_text(self) -> str:
        """The event as a JSON document, ``payload`` and ``raw`` spliced in as PostgreSQL
        wrote them: numbers of any size and precision stay exactly as Scalepoint sent them,
        which decoding and encoding them in Python would not promise."""
        names = [item.name for item in fields(self) if item.name not in self.TEXTS]
        document = {**fields_of(self, names), "route": f"{self.country}/{self.tenant}"}
        head = json.dumps(document, indent=2, ensure_ascii=False)
        assert head.endswith("\n}")
        return (
            f'{head[:-2]},\n  "payload": {self.payload or "null"},\n'
            f'  "raw": {self.raw or "null"}\n}}'
        )

    def lines(self) -> list[str]:
        """The event for people: its state, then its payload or the raw item."""
        lines = [
            f"inbox event {self.id}: {self.status}",
            f"  route:          {self.country}/{self.tenant}",
            f"  event id:       {self.event_id}",
            f"  event type:     {self.event_type or '-'}",
            f"  timestamp:      {self.event_timestamp or '-'}",
            f"  received:       {iso(self.received_at)}",
            f"  attempts:       {self.attempts}",
            f"  available at:   {iso(self.available_at)}",
            f"  processed:      {iso(self.processed_at) or '-'}",
            f"  locked by:      {self.locked_by or '-'}"
            + (f" until {iso(self.locked_until)}" if self.locked_until else ""),
            f"  last error:     {self.last_error or '-'}",
        ]
        if self.malformed or self.payload is None:
            lines.append("raw item (not an event; kept as received):")
            text = self.raw_pretty or "null"
        else:
            lines.append("payload (the event's attributes):")
            text = self.payload_pretty or "null"
        return lines + ["  " + line for line in text.splitlines()]


# relay inbox retry ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Malformed:
    """A failed item that was not an event: never made pending."""

    id: int
    event_id: str


@dataclass(frozen=True, slots=True)
class RetryResult:
    """What a retry did (or, with ``dry_run``, would do)."""

    ids: list[int]  # made pending, or that would be
    malformed: list[Malformed]  # chosen, but not events: left failed
    not_failed: list[int]  # ids named that are missing or not failed
    selector: dict[str, Any]
    dry_run: bool
    audit_id: int | None = None  # its audit-log entry; None for a dry run
    operator: str = ""

    @property
    def needs_attention(self) -> bool:
        """Items that are not events were chosen, or ids named were left alone."""
        return bool(self.malformed or self.not_failed)

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "retried": 0 if self.dry_run else len(self.ids),
            "would_retry": len(self.ids) if self.dry_run else 0,
            "ids": self.ids,
            "malformed": [fields_of(item) for item in self.malformed],
            "not_failed": self.not_failed,
            "selector": self.selector,
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """A summary line, what was left alone and why, where it was recorded."""
        verb = "would retry" if self.dry_run else "retried"
        line = f"relay: {verb} {counted(len(self.ids), 'failed event')}"
        lines = [f"{line}: {id_list(self.ids)}" if self.ids else line]
        if self.malformed:
            items = counted(
                len(self.malformed), "item that is not an event", "items that are not events"
            )
            lines.append(
                f"relay: left failed {items} (no payload to process; see relay inbox show ID): "
                f"{id_list([item.id for item in self.malformed])}"
            )
        if self.not_failed:
            lines.append(f"relay: not failed (left alone): {id_list(self.not_failed)}")
        return lines + recorded_line(self.audit_id, self.operator)


# relay inbox rewind --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where a route's next receive asks: the path, and the event it asks after."""

    next_path: str | None
    last_event_id: str | None


@dataclass(frozen=True, slots=True)
class RewindResult:
    """What a rewind did (or, with ``dry_run``, would do)."""

    route: str
    to: str  # the event after which the next receive asks
    before: Checkpoint
    after: Checkpoint
    known: bool  # the inbox holds that event of the route
    status: str | None  # its status, when it does
    stored_after: int | None  # events of the route stored after it, fetched again
    dry_run: bool
    audit_id: int | None = None
    operator: str = ""

    @property
    def needs_attention(self) -> bool:
        """The inbox holds no such event: purged, or not an id of this route."""
        return not self.known

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {
            "route": self.route,
            "to": self.to,
            "before": fields_of(self.before),
            "after": fields_of(self.after),
            "known": self.known,
            "status": self.status,
            "stored_after": self.stored_after,
            "dry_run": self.dry_run,
            "audit_id": self.audit_id,
            "operator": self.operator,
        }

    def lines(self) -> list[str]:
        """What moved, what the receiver does now, and what to watch for."""
        verb = "would rewind" if self.dry_run else "rewound"
        was = (
            f"after {self.before.last_event_id}"
            if self.before.last_event_id
            else (self.before.next_path or "the start")
        )
        lines = [
            f"relay: {verb} {self.route}: the next receive asks for the events after "
            f"{self.to} (was {was}): {self.after.next_path}"
        ]
        if self.known:
            lines.append(
                f"relay: {counted(self.stored_after or 0, 'event')} of {self.route} stored "
                f"after {self.to} {'is' if self.stored_after == 1 else 'are'} fetched again "
                "and not stored again; events missing from the inbox are stored as pending"
            )
        else:
            lines.append(
                f"relay: the inbox holds no event {self.to} of {self.route} (purged, or not an "
                "id of this route): if Scalepoint does not know it either, every receive of the "
                "route fails until it is rewound again (watch relay inbox status)"
            )
        if not self.dry_run:
            lines.append(
                "relay: a running receiver moves to it with its next page (within one long poll)"
            )
        return lines + recorded_line(self.audit_id, self.operator)


# relay inbox purge ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InboxPurgeResult(PurgeResult):
    """What a purge of processed events deleted."""

    def lines(self) -> list[str]:
        """One summary line, and where it was recorded."""
        return [
            f"relay: purged {counted(self.rows, 'processed event')} (processed before "
            f"{iso(self.cutoff)}) in {counted(self.batches, 'batch', 'batches')}, "
            f"{self.seconds:.1f}s",
            *recorded_line(self.audit_id, self.operator),
        ]


@dataclass(frozen=True, slots=True)
class InboxPurgePreview:
    """What a purge would delete now (``relay inbox purge --dry-run``)."""

    cutoff: datetime
    rows: int
    oldest: datetime | None  # processed_at of the oldest and newest of them
    newest: datetime | None

    def to_json(self) -> dict[str, Any]:
        """JSON-ready values."""
        return {**fields_of(self), "dry_run": True}

    def lines(self) -> list[str]:
        """One summary line."""
        line = (
            f"relay: would purge {counted(self.rows, 'processed event')} (processed before "
            f"{iso(self.cutoff)})"
        )
        if self.oldest is not None and self.newest is not None:
            line += f"; processed {iso(self.oldest)} to {iso(self.newest)}"
        return [line]


def event_lines(rows: Sequence[InboxEventRow]) -> list[str]:
    """``relay inbox list`` for people: oldest first."""
    if not rows:
        return ["relay: the inbox holds no events that match"]
    return [row.line() for row in rows]
