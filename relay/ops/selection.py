"""What an operator names on the command line: points in time, rows, and themselves.

A time is either a duration counted back from now (``30d``, ``2h``) or an ISO 8601 timestamp,
resolved against the database's clock. Rows are chosen by id, event type and a time window; an
empty selection is refused, never read as "everything".
"""

from __future__ import annotations

import os
import pwd
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from relay.config import parse_duration
from relay.errors import UsageError
from relay.ops.formatting import iso, jsonable

MAX_OPERATOR_LENGTH = 200
MAX_REASON_LENGTH = 500
# A timestamp starts with its year and a dash; a duration with a number and a unit.
_TIMESTAMP_START = re.compile(r"\d{4}-")

# A point in time as the operator gave it: a duration back from now, or a timestamp.
Moment = timedelta | datetime


class NoSuchRow(UsageError):
    """The outbox holds no row with that id."""


class NoSelector(UsageError):
    """A requeue (or discard) named no rows; it never means "everything" by accident."""


# Times the operator gives --------------------------------------------------------------------


def parse_moment(value: str) -> Moment:
    """``30d``, ``2h``, ``90s`` (a duration back from now) or an ISO 8601 timestamp.

    A timestamp without an offset is read in this machine's local time zone.
    """
    try:
        duration = parse_duration(value)
    except ValueError as error:
        if value.strip()[:1].isdigit() and not _TIMESTAMP_START.match(value.strip()):
            raise ValueError(f"{value!r}: {error}") from None  # a duration, out of range
    else:
        assert isinstance(duration, timedelta)
        return duration
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise ValueError(
            f"{value!r} is neither a duration (30d, 2h, 15m) nor an ISO 8601 timestamp "
            "(2026-11-28T14:02:00Z)"
        ) from None
    return moment.astimezone(UTC)


def resolve(moment: Moment, now: datetime) -> datetime:
    """The point in time ``moment`` names, a duration counting back from ``now``."""
    return now - moment if isinstance(moment, timedelta) else moment


def operator_name(given: str | None = None) -> str:
    """Who is running the command, for the audit log: ``given`` (--operator), else $USER,
    else $LOGNAME, else the operating system's name for this process's user, else its uid.

    Under ``kubectl exec`` there is no $USER and the OS user is the image's: pass --operator.
    """
    if given is not None:
        name = given.strip()
        if not name or len(name) > MAX_OPERATOR_LENGTH or not name.isprintable():
            raise UsageError(
                f"--operator: give your name, 1-{MAX_OPERATOR_LENGTH} printable characters"
            )
        return name
    for variable in ("USER", "LOGNAME"):
        value = os.environ.get(variable, "").strip()
        if value:
            return value
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid with no entry in /etc/passwd, as in many containers
        return f"uid:{os.getuid()}"


def audit_reason(given: str) -> str:
    """An operator's reason for the audit log: 1-500 printable characters."""
    reason = given.strip()
    if not reason or len(reason) > MAX_REASON_LENGTH or not reason.isprintable():
        raise UsageError(f"--reason: say why, 1-{MAX_REASON_LENGTH} printable characters")
    return reason


# Which rows to requeue or replay ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RowSelector:
    """Rows an operator names: by id, event type and a time window. The filters combine (AND);
    what the window measures (when a row died, when it was published) is the command's."""

    ids: tuple[int, ...] = ()
    event_type: str | None = None
    since: Moment | None = None
    until: Moment | None = None

    def filters(self) -> bool:
        """Whether any filter is given."""
        return bool(self.ids) or any(
            value is not None for value in (self.event_type, self.since, self.until)
        )

    def parameters(self, now: datetime) -> tuple[object, ...]:
        """$1..$4 of the selecting statements."""
        return (
            list(self.ids) or None,
            self.event_type,
            None if self.since is None else resolve(self.since, now),
            None if self.until is None else resolve(self.until, now),
        )

    def described(self, now: datetime) -> dict[str, Any]:
        """The selection as given, its times resolved, for the audit log and --json."""
        ids, event_type, since, until = self.parameters(now)
        described = {"ids": ids, "event_type": event_type, "since": since, "until": until}
        return {key: jsonable(value) for key, value in described.items() if value}


@dataclass(frozen=True, slots=True)
class DeadSelector(RowSelector):
    """Which dead rows to requeue; ``since``/``until`` is when they died. ``all_dead`` stands
    alone."""

    all_dead: bool = False

    def check(self, verb: str = "requeue") -> None:
        """Refuse an empty selection, and ``all_dead`` mixed with filters."""
        if self.all_dead and self.filters():
            raise NoSelector("--all-dead takes every dead row; give it no ids or filters")
        if not self.all_dead and not self.filters():
            raise NoSelector(
                f"name the dead rows to {verb}: ids, --event-type, --since/--until, "
                "or --all-dead for every one"
            )

    def describe(self, now: datetime) -> dict[str, Any]:
        """The selection as given, its times resolved, for the audit log and --json."""
        document = self.described(now)
        if self.all_dead:
            document["all_dead"] = True
        return document


@dataclass(frozen=True, slots=True)
class ReplaySelector(RowSelector):
    """Which published rows to send again; ``since``/``until`` is when they were published.
    There is no "every published row": at least one filter is needed."""

    def check(self) -> None:
        """Refuse an empty selection."""
        if not self.filters():
            raise NoSelector(
                "name the published rows to replay: ids, --event-type, --since/--until"
            )

    def describe(self, now: datetime) -> dict[str, Any]:
        """The selection as given, its times resolved, for the audit log and --json."""
        return self.described(now)


def purge_cutoff(older_than: Moment, now: datetime) -> datetime:
    """The moment ``--older-than`` names; a UsageError when it is in the future."""
    cutoff = resolve(older_than, now)
    if cutoff > now:
        raise UsageError(f"--older-than {iso(cutoff)} is in the future; nothing to purge")
    return cutoff
