"""What the EventApi answered, as a value: the one table that turns an answer into an Outcome.

The engines see only ``Outcome`` values: they never handle aiohttp exceptions or status codes.
``classify`` is a pure function over (status, headers, body); the publish and receive clients
add what only a live request can produce (timeouts, resets, token failures).
docs/classification.md is the same table in prose; a test holds the two together. What is kept
of an answer's text is made by ``relay.eventapi.masks`` (``describe``), which masks what the
request sent, and every ``error`` is ``storable`` whoever builds it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from enum import StrEnum

import orjson

from relay.config import Settings
from relay.eventapi.masks import NOTHING, Masks, describe, storable

CONTENT_TYPE = "application/json;charset=utf-8"
MAX_EVENT_ID_LENGTH = 200  # Scalepoint's ids are short ("_122047"); more is not an id to keep
# An answer is an _id or an error: anything longer is a page or an echo, and reading it
# whole would let one answer take the process's memory.
MAX_ANSWER_BYTES = 1 << 20
# The longest Retry-After honoured unless the caller says otherwise: RELAY_RETRY_AFTER_CAP's
# default, so code built without settings behaves as the daemon does.
DEFAULT_RETRY_AFTER_CAP: timedelta = Settings.model_fields["retry_after_cap"].default
# RFC 9110 delta-seconds are ASCII digits; str.isdigit() also says yes to '²', which int() refuses.
_DELTA_SECONDS = re.compile(r"[0-9]+")
# More digits than this exceed any cap, and int() refuses strings of over 4300 digits.
_MAX_DELTA_DIGITS = 18


class OutcomeKind(StrEnum):
    """What the engine does with a row: done, retry later, give up, or pause everything."""

    PUBLISHED = "published"
    TRANSIENT = "transient"
    PERMANENT = "permanent"
    CONFIGURATION = "configuration"


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of one publish, as a value."""

    kind: OutcomeKind
    error_class: str  # short stable label for metrics and status, e.g. "http_503"
    http_status: int | None = None
    event_api_id: str | None = None  # Scalepoint's _id, as text
    error: str | None = None  # human-readable, storable(), for outbox.last_error
    retry_after: timedelta | None = None
    latency: float = 0.0  # seconds spent on the request, set by Publisher
    # A CONFIGURATION outcome that no route can escape (our client, its token, TLS trust):
    # pause publishing everywhere, not only on this row's route.
    for_all_routes: bool = False
    # False when no request reached the EventApi (no token could be had, or the row could not
    # name a request): the row spent nothing there, and the route learnt nothing.
    sent: bool = True

    def __post_init__(self) -> None:
        # error often quotes the partner; whoever builds an Outcome, what is stored is safe.
        if self.error is not None:
            object.__setattr__(self, "error", storable(self.error))


P = OutcomeKind.PERMANENT
T = OutcomeKind.TRANSIENT
C = OutcomeKind.CONFIGURATION

# The table. 200, 201 and 202 are PUBLISHED when the body carries an _id (see _success).
# Other statuses not listed fall to CLASS_DEFAULTS by their first digit. 400 looks at the
# body for its error_class. Every TRANSIENT answer honours Retry-After.
STATUS_TABLE: dict[int, OutcomeKind] = {
    400: P,  # invalid_payload / missing_header / http_400 by body
    401: C,  # token_not_accepted: seen only after one retry with a fresh token; the route's
    403: C,  # insufficient_scope: the client lacks the events scope
    404: C,  # wrong API base URL, country or tenant
    405: P,
    409: P,
    410: P,
    413: P,
    415: P,
    422: P,
    408: T,
    425: T,
    429: T,
    500: T,
    502: T,
    503: T,
    504: T,
}
CLASS_DEFAULTS: dict[int, OutcomeKind] = {1: T, 2: T, 3: C, 4: P, 5: T}
PUBLISHED_STATUSES = frozenset({200, 201, 202})
PROXY_AUTHENTICATION_REQUIRED = 407


def classify(
    status: int,
    headers: Mapping[str, str],
    body: bytes,
    *,
    retry_after_cap: timedelta = DEFAULT_RETRY_AFTER_CAP,
    masks: Masks = NOTHING,
) -> Outcome:
    """Turn an EventApi answer into an Outcome. Pure: the same input gives the same value.

    A transient answer's Retry-After is honoured up to ``retry_after_cap``. ``masks``: what the
    request sent, which its ``error`` never repeats (see ``relay.eventapi.masks``)."""
    document = _json(body)
    if status in PUBLISHED_STATUSES:
        return _success(status, document)
    kind = STATUS_TABLE.get(status, CLASS_DEFAULTS.get(status // 100, T))
    retry_after = parse_retry_after(headers, retry_after_cap) if kind is T else None
    return Outcome(
        kind=kind,
        error_class=_error_class(status, document),
        http_status=status,
        error=describe(status, headers, body, document, masks),
        retry_after=retry_after,
    )


def _error_class(status: int, document: object) -> str:
    if status == 400:
        return _bad_request_class(document)
    if status == 401:
        return "token_not_accepted"
    if 300 <= status < 400:
        return "redirect"
    return f"http_{status}"


def _success(status: int, document: object) -> Outcome:
    event_id = document.get("_id") if isinstance(document, dict) else None
    if isinstance(event_id, bool) or not isinstance(event_id, int | str) or event_id == "":
        # A 2xx without an id may be a proxy, not Scalepoint: sending again may duplicate
        # (consumers dedupe by correlationId) but never loses the event.
        return Outcome(
            kind=T,
            error_class="bad_response",
            http_status=status,
            error=f"HTTP {status} without an _id in the body",
        )
    label = "created" if status == 201 else f"http_{status}"
    # Stored in a text column like any partner text; the event is delivered whatever the id.
    event_api_id = storable(str(event_id), MAX_EVENT_ID_LENGTH)
    return Outcome(OutcomeKind.PUBLISHED, label, http_status=status, event_api_id=event_api_id)


def _bad_request_class(document: object) -> str:
    if not isinstance(document, dict):
        return "http_400"
    if document.get("valid") is False:
        return "invalid_payload"
    message = document.get("message")
    if isinstance(message, str) and message.startswith("Missing request header"):
        return "missing_header"
    return "http_400"


def _json(body: bytes) -> object:
    try:
        return orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return None


def parse_retry_after(
    headers: Mapping[str, str], cap: timedelta = DEFAULT_RETRY_AFTER_CAP
) -> timedelta | None:
    """Retry-After as delta-seconds or HTTP-date (RFC 9110 10.2.3), between 0 and ``cap``.

    Any value the partner sends, however large or malformed, gives a bounded wait or None. A
    date is measured against the response's own Date header when there is one, so the
    partner's clock and ours need not agree; otherwise against our clock.
    """
    value = headers.get("Retry-After", "").strip()
    if not value:
        return None
    if _DELTA_SECONDS.fullmatch(value):
        return _capped_seconds(value, cap)
    when = _http_date(value)
    if when is None:
        return None
    now = _http_date(headers.get("Date", "")) or datetime.now(UTC)
    return min(max(when - now, timedelta(0)), cap)


def _capped_seconds(digits: str, cap: timedelta) -> timedelta:
    significant = digits.lstrip("0") or "0"
    # Compared as a number before any timedelta exists: timedelta overflows at 10**14 s.
    if len(significant) > _MAX_DELTA_DIGITS or int(significant) >= cap.total_seconds():
        return cap
    return timedelta(seconds=int(significant))


def _http_date(value: str) -> datetime | None:
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    return when if when.tzinfo is not None else when.replace(tzinfo=UTC)
