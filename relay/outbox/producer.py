"""The producer API: how applications write an event into the outbox, in their own
transaction.

Producers write an event inside their own transaction::

    async with connection.transaction():               # asyncpg
        await change_the_business_data(connection)
        await enqueue_async(connection, "payment_status_updated", {"payment": {...}})

    with session.begin():                               # SQLAlchemy Session or Connection
        session.add(payment)
        enqueue(session, "payment_status_updated", {"payment": {...}})

Either both the business change and the event commit, or neither does.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

import asyncpg
import simplejson

if TYPE_CHECKING:  # imported where used: the engine never needs SQLAlchemy (-20 MB, -0.6 s)
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

from relay.errors import InvalidEvent
from relay.names import schema_in_use
from relay.outbox.queries import ENVELOPE_FIELDS, Queries
from relay.routes import country_problem, tenant_problem
from relay.tracing import current_context, given_context

DEFAULT_PAYLOAD_VERSION = "1.0.0"
REQUIRED_FIELDS = ENVELOPE_FIELDS
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
# The 8-4-4-4-12 form only (either case): uuid.UUID also takes braces, "urn:uuid:" and bare hex.
UUID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)
# A JSON \u0000 escape, i.e. one not itself preceded by an escaped backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")
# PostgreSQL's numeric (which jsonb numbers are) holds at most 131072 digits before the point
# and 16383 after it.
_NUMERIC_MAX_ADJUSTED = 131071
_NUMERIC_MIN_EXPONENT = -16383


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """A validated event, ready to be inserted."""

    event_type: str
    payload_json: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    correlation_id: str
    trace_context_json: str | None = None  # {"traceparent": ...}: the caller's span


def utc_timestamp(moment: datetime | None = None) -> str:
    """ISO 8601 in UTC with a ``Z``, as in the partner's examples."""
    moment = (moment or datetime.now(UTC)).astimezone(UTC)
    return moment.isoformat(timespec="microseconds").replace("+00:00", "Z")


def _check_routing(tenant: str | None, country: str | None, ordering_key: str | None) -> None:
    problem = (country is not None and country_problem(country)) or (
        tenant is not None and tenant_problem(tenant)
    )
    if problem:
        raise InvalidEvent(problem)
    if ordering_key is not None and (not isinstance(ordering_key, str) or not ordering_key):
        raise InvalidEvent("ordering_key must be a non-empty string or None")
    if ordering_key is not None and "\x00" in ordering_key:
        raise InvalidEvent("ordering_key holds a NUL character, which PostgreSQL cannot store")


def _timestamp_text(moment: datetime) -> str:
    """An aware datetime as ISO 8601 in UTC with ``Z``; a naive one is refused."""
    if moment.utcoffset() is None:
        raise InvalidEvent(
            "payload holds a naive datetime (no tzinfo), whose moment is unknown: "
            "give it a time zone, e.g. datetime.now(UTC)"
        )
    return utc_timestamp(moment)


def _decimal_number(value: Decimal) -> simplejson.RawJSON:
    """A Decimal as a JSON number, digit for digit (never through float)."""
    if not value.is_finite():
        raise InvalidEvent("payload holds a Decimal NaN or Infinity, which JSON cannot hold")
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite
    if value.adjusted() > _NUMERIC_MAX_ADJUSTED or exponent < _NUMERIC_MIN_EXPONENT:
        raise InvalidEvent(
            "payload holds a Decimal beyond PostgreSQL's numeric range "
            "(131072 digits before the point, 16383 after)"
        )
    return simplejson.RawJSON(str(value))


def _json_value(value: object) -> object:
    """The JSON form of the values a payload may hold beyond JSON's own types."""
    if isinstance(value, Decimal):
        return _decimal_number(value)
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, datetime):
        return _timestamp_text(value)
    if isinstance(value, date):
        return value.isoformat()
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def _envelope_values(body: dict[str, Any]) -> None:
    """A correlationId given as a UUID, a timestamp as a datetime: checked (and stored) as the
    strings they become."""
    for name in ("correlationId", "timestamp"):
        if isinstance(body[name], uuid.UUID | date):
            body[name] = _json_value(body[name])


def _check_fields(payload: Mapping[str, Any]) -> None:
    if not isinstance(payload["payloadVersion"], str) or not payload["payloadVersion"]:
        raise InvalidEvent("payloadVersion must be a non-empty string such as '1.0.0'")
    correlation_id = payload["correlationId"]
    if not isinstance(correlation_id, str) or not UUID_PATTERN.fullmatch(correlation_id):
        raise InvalidEvent("correlationId must be a UUID string such as 70c6d351-016f-...")
    timestamp = payload["timestamp"]
    try:
        datetime.fromisoformat(timestamp if isinstance(timestamp, str) else "")
    except ValueError:
        raise InvalidEvent("timestamp must be an ISO 8601 string") from None


def _encode(payload: Mapping[str, Any]) -> str:
    # simplejson is the standard library's json with one thing more: a value's default() may
    # return finished JSON text (RawJSON), which is how a Decimal becomes an exact number.
    try:
        encoded = simplejson.dumps(
            payload,
            default=_json_value,
            use_decimal=False,  # Decimals go through _json_value, which checks them
            allow_nan=False,
            ensure_ascii=False,
            separators=(",", ":"),
            namedtuple_as_object=False,  # a tuple is an array, as with json
        )
    except InvalidEvent:
        raise
    except (TypeError, ValueError) as error:
        raise InvalidEvent(f"payload is not JSON-serialisable: {error}") from None
    if _NUL_ESCAPE.search(encoded):
        raise InvalidEvent("payload holds a NUL character, which PostgreSQL jsonb cannot store")
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidEvent("payload holds a lone surrogate, which is not valid Unicode") from None
    return encoded


def prepare_event(
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> PreparedEvent:
    """Validate an event and fill ``eventType``, ``correlationId``, ``timestamp`` and
    ``payloadVersion`` when absent. Raise InvalidEvent, naming the problem, for a bad one.

    ``trace_context``: the W3C context to deliver the event in (``{"traceparent": ...}``); by
    default the caller's current OpenTelemetry span, when the application traces."""
    if not isinstance(event_type, str) or not _EVENT_TYPE.fullmatch(event_type):
        raise InvalidEvent(
            f"event_type {event_type!r} must be 1-200 letters, digits, '_', '.', ':' or '-'"
        )
    if not isinstance(payload, Mapping):
        raise InvalidEvent(f"payload must be a JSON object, not {type(payload).__name__}")
    _check_routing(tenant, country, ordering_key)
    body = dict(payload)
    declared = body.setdefault("eventType", event_type)
    if declared != event_type:
        raise InvalidEvent(
            f"payload eventType {declared!r} does not match event_type {event_type!r}"
        )
    body.setdefault("payloadVersion", DEFAULT_PAYLOAD_VERSION)
    body.setdefault("correlationId", str(uuid.uuid4()))
    body.setdefault("timestamp", utc_timestamp())
    _envelope_values(body)
    _check_fields(body)
    context = given_context(trace_context) if trace_context is not None else current_context()
    return PreparedEvent(
        event_type=event_type,
        payload_json=_encode(body),
        tenant=tenant,
        country=country,
        ordering_key=ordering_key,
        correlation_id=str(body["correlationId"]),
        trace_context_json=None if context is None else simplejson.dumps(context),
    )


def _schema(schema: str | None) -> str:
    """The schema to write to; InvalidEvent (nothing written) when it is no schema name."""
    try:
        return schema_in_use(schema)
    except ValueError as error:
        raise InvalidEvent(str(error)) from None


def _sqlalchemy_insert(schema: str) -> Any:
    from sqlalchemy import text

    return text(
        f'INSERT INTO "{schema}".outbox '
        "(event_type, payload, tenant, country, ordering_key, trace_context) "
        "VALUES (:event_type, CAST(:payload AS jsonb), :tenant, :country, :ordering_key, "
        "CAST(:trace_context AS jsonb)) RETURNING id"
    )


def _sqlalchemy_params(event: PreparedEvent) -> dict[str, Any]:
    return {
        "event_type": event.event_type,
        "payload": event.payload_json,
        "tenant": event.tenant,
        "country": event.country,
        "ordering_key": event.ordering_key,
        "trace_context": event.trace_context_json,
    }


def enqueue(
    connection: Connection | Session,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
    schema: str | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> int:
    """Write an event in the caller's transaction on a SQLAlchemy Connection or Session.

    Returns the outbox id. Nothing is committed here: the caller's transaction decides.
    ``schema``: relay's schema; by default ``RELAY_SCHEMA``, else ``public``.
    ``trace_context``: see ``prepare_event`` (by default the caller's current span).
    """
    event = prepare_event(
        event_type, payload, tenant=tenant, country=country, ordering_key=ordering_key,
        trace_context=trace_context,
    )  # fmt: skip
    insert = _sqlalchemy_insert(_schema(schema))
    result = connection.execute(insert, _sqlalchemy_params(event))
    return int(result.scalar_one())


async def enqueue_async(
    connection: asyncpg.Connection | AsyncConnection | AsyncSession,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
    schema: str | None = None,
    trace_context: Mapping[str, str] | None = None,
) -> int:
    """Write an event in the caller's transaction on an asyncpg connection or a SQLAlchemy
    AsyncConnection/AsyncSession. Returns the outbox id; nothing is committed here.
    ``schema``: relay's schema; by default ``RELAY_SCHEMA``, else ``public``.
    ``trace_context``: see ``prepare_event`` (by default the caller's current span)."""
    event = prepare_event(
        event_type, payload, tenant=tenant, country=country, ordering_key=ordering_key,
        trace_context=trace_context,
    )  # fmt: skip
    schema = _schema(schema)
    if isinstance(connection, asyncpg.Connection):
        row_id = await connection.fetchval(
            Queries(schema).insert,
            event.event_type,
            event.payload_json,
            event.tenant,
            event.country,
            event.ordering_key,
            event.trace_context_json,
        )
        return int(row_id)
    result = await connection.execute(_sqlalchemy_insert(schema), _sqlalchemy_params(event))
    return int(result.scalar_one())
