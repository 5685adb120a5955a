"""How operators' answers print, for both tables' reports: timestamps in UTC with millisecond
precision and a Z, ages and waits in their two largest units (``3d 4h``) for people and in
seconds in JSON, counts with their noun in the singular or plural, long texts on one line.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import fields
from datetime import UTC, datetime
from typing import Any


def iso(moment: datetime | None) -> str | None:
    """UTC, millisecond precision, with a Z; None stays None."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def human_duration(seconds: float) -> str:
    """``3d 4h``, ``2m 5s``, ``850ms``: the two largest units, for people."""
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    parts: list[str] = []
    remaining = int(seconds)
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if remaining >= size or (unit == "s" and not parts):
            parts.append(f"{remaining // size}{unit}")
            remaining %= size
    return " ".join(parts[:2])


def relative(moment: datetime | None, now: datetime) -> str:
    """``2026-11-28T14:02:00.000Z (3m 5s ago)``, ``... (in 2m)``; ``-`` for None."""
    if moment is None:
        return "-"
    delta = (moment - now).total_seconds()
    when = "in " + human_duration(delta) if delta > 0 else human_duration(-delta) + " ago"
    return f"{iso(moment)} ({when})"


def jsonable(value: object) -> object:
    """``value`` with every datetime in it (mappings and sequences too) as :func:`iso` text."""
    if isinstance(value, datetime):
        return iso(value)
    if isinstance(value, Mapping):
        return {str(key): jsonable(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(item) for item in value]
    return value


def fields_of(instance: Any, names: Sequence[str] | None = None) -> dict[str, Any]:
    """A dataclass instance's fields (or the ``names`` given) as JSON-ready values."""
    if names is None:
        names = [item.name for item in fields(instance)]
    return {name: jsonable(getattr(instance, name)) for name in names}


def counted(count: int, thing: str, things: str | None = None) -> str:
    """``1 row``, ``2 rows``: a count with its noun, singular or plural (``things`` when the
    plural is not the singular and an s)."""
    return f"{count:,} {thing if count == 1 else (things or thing + 's')}"


def id_list(ids: Sequence[int], shown: int = 50) -> str:
    """``4711, 4712, ... (3 more)``: the first ``shown`` ids and how many more there are."""
    text = ", ".join(str(row_id) for row_id in ids[:shown])
    if len(ids) > shown:
        text += f", ... ({len(ids) - shown} more)"
    return text


def recorded_line(audit_id: int | None, operator: str) -> list[str]:
    """Where a change was recorded, under which name; nothing for a dry run."""
    if audit_id is None:
        return []
    return [f"relay: recorded as audit log entry {audit_id}, operator {operator}"]


def shortened(text: str | None, length: int = 80) -> str:
    """``text`` on one line, cut to ``length`` characters with an ellipsis."""
    line = (text or "").replace("\n", " ")
    return line if len(line) <= length else line[: length - 3] + "..."
