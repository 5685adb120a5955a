"""What the operator commands that change rows answer: ``relay requeue``, ``relay dead
discard``, ``relay replay``, ``relay pause clear`` and ``relay purge`` results, and the audit log
they write (``relay audit``), each as lines for people and as JSON for scripts.

Both print through ``relay.ops.formatting``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar

from relay.ops.formatting import (
    counted,
    fields_of,
    id_list,
    iso,
    recorded_line,
)
from relay.ops.reports import ActivePause, pause_lines

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
