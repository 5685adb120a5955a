"""The outbox: the producer API applications call, and the store the engine claims from.

This is the only module that runs the statements in ``relay.queries``.

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

import asyncio
import json
import math
import random
import re
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import asyncpg
import structlog

if TYPE_CHECKING:  # imported where used: the engine never needs SQLAlchemy (-20 MB, -0.6 s)
    from sqlalchemy.engine import Connection
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
    from sqlalchemy.orm import Session

from relay.database import DATABASE_ERRORS
from relay.errors import InvalidEvent
from relay.queries import NOTIFY_CHANNEL, Queries
from relay.routes import country_problem, tenant_problem

log = structlog.get_logger("relay.outbox")

DEFAULT_PAYLOAD_VERSION = "1.0.0"
REQUIRED_FIELDS = ("eventType", "payloadVersion", "correlationId", "timestamp")
_EVENT_TYPE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,199}$")
# The 8-4-4-4-12 form only (either case): uuid.UUID also takes braces, "urn:uuid:" and bare hex.
UUID_PATTERN = re.compile(
    r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$", re.IGNORECASE
)
# A JSON \u0000 escape, i.e. one not itself preceded by an escaped backslash.
_NUL_ESCAPE = re.compile(r"(?<!\\)(?:\\\\)*\\u0000")


@dataclass(frozen=True, slots=True)
class PreparedEvent:
    """A validated event, ready to be inserted."""

    event_type: str
    payload_json: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    correlation_id: str


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
    try:
        encoded = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
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
) -> PreparedEvent:
    """Validate an event and fill ``eventType``, ``correlationId``, ``timestamp`` and
    ``payloadVersion`` when absent. Raise InvalidEvent, naming the problem, for a bad one."""
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
    _check_fields(body)
    return PreparedEvent(
        event_type=event_type,
        payload_json=_encode(body),
        tenant=tenant,
        country=country,
        ordering_key=ordering_key,
        correlation_id=str(body["correlationId"]),
    )


def _sqlalchemy_insert(schema: str) -> Any:
    from sqlalchemy import text

    return text(
        f'INSERT INTO "{schema}".outbox (event_type, payload, tenant, country, ordering_key) '
        "VALUES (:event_type, CAST(:payload AS jsonb), :tenant, :country, :ordering_key) "
        "RETURNING id"
    )


def _sqlalchemy_params(event: PreparedEvent) -> dict[str, Any]:
    return {
        "event_type": event.event_type,
        "payload": event.payload_json,
        "tenant": event.tenant,
        "country": event.country,
        "ordering_key": event.ordering_key,
    }


def enqueue(
    connection: Connection | Session,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
    schema: str = "public",
) -> int:
    """Write an event in the caller's transaction on a SQLAlchemy Connection or Session.

    Returns the outbox id. Nothing is committed here: the caller's transaction decides.
    """
    event = prepare_event(
        event_type, payload, tenant=tenant, country=country, ordering_key=ordering_key
    )
    result = connection.execute(_sqlalchemy_insert(schema), _sqlalchemy_params(event))
    return int(result.scalar_one())


async def enqueue_async(
    connection: asyncpg.Connection | AsyncConnection | AsyncSession,
    event_type: str,
    payload: Mapping[str, Any],
    *,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
    schema: str = "public",
) -> int:
    """Write an event in the caller's transaction on an asyncpg connection or a SQLAlchemy
    AsyncConnection/AsyncSession. Returns the outbox id; nothing is committed here."""
    event = prepare_event(
        event_type, payload, tenant=tenant, country=country, ordering_key=ordering_key
    )
    if isinstance(connection, asyncpg.Connection):
        row_id = await connection.fetchval(
            Queries(schema).insert,
            event.event_type,
            event.payload_json,
            event.tenant,
            event.country,
            event.ordering_key,
        )
        return int(row_id)
    result = await connection.execute(_sqlalchemy_insert(schema), _sqlalchemy_params(event))
    return int(result.scalar_one())


# The engine's side --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    id: int
    event_type: str
    payload: str
    tenant: str | None
    country: str | None
    ordering_key: str | None
    attempts: int
    created_at: datetime


@dataclass(frozen=True, slots=True)
class Result:
    """The outcome of one attempt, as it will be written to the row and the delivery log."""

    id: int
    status: str  # 'published', 'pending' (retry or give back) or 'dead'
    attempts: int
    delay: float | None  # seconds until the row may be tried again; None keeps available_at
    http_status: int | None
    event_api_id: str | None
    error: str | None
    latency_ms: float | None
    outcome: str
    attempted_at: datetime


@dataclass(frozen=True, slots=True)
class Pause:
    route: str
    kind: str
    reason: str
    set_by: str
    remaining: float
    duration: float

    @property
    def active(self) -> bool:
        return self.remaining > 0


class Store:
    """The engine's view of the outbox: claim, record, release, pauses. Owns no connection."""

    def __init__(self, pool: asyncpg.Pool, schema: str, worker: str) -> None:
        self.pool = pool
        self.queries = Queries(schema)
        self.worker = worker

    async def claim(
        self,
        limit: int,
        *,
        lease_seconds: float,
        default_country: str | None,
        default_tenant: str | None,
        dead_blocks_key: bool,
    ) -> list[ClaimedRow]:
        rows = await self.pool.fetch(
            self.queries.claim,
            limit,
            self.worker,
            default_country,
            default_tenant,
            dead_blocks_key,
            lease_seconds,
        )
        claimed = [ClaimedRow(**dict(row)) for row in rows]
        claimed.sort(key=lambda row: row.id)
        return claimed

    async def record(self, results: Sequence[Result]) -> set[int]:
        """Write outcomes in one statement; return the ids whose fence held."""
        columns = list(zip(*((
            r.id, r.status, r.attempts, r.delay, r.http_status, r.event_api_id,
            r.error, r.latency_ms, r.outcome, r.attempted_at,
        ) for r in results), strict=True))  # fmt: skip
        rows = await self.pool.fetch(self.queries.record, *columns, self.worker)
        return {row["id"] for row in rows}

    async def release(self, ids: Sequence[int]) -> None:
        if ids:
            await self.pool.execute(self.queries.release, list(ids), self.worker)

    async def release_orphans(self, known: Sequence[int]) -> None:
        await self.pool.execute(self.queries.release_orphans, self.worker, list(known))

    async def release_all(self) -> None:
        await self.pool.execute(self.queries.release_all, self.worker)

    async def set_pause(self, route: str, seconds: float, kind: str, reason: str) -> None:
        await self.pool.execute(
            self.queries.set_pause, route, seconds, kind, reason[:500], self.worker
        )

    async def clear_pauses(self, routes: Sequence[str]) -> None:
        await self.pool.execute(self.queries.clear_pause, list(routes))

    async def pauses(self) -> list[Pause]:
        return [Pause(**dict(row)) for row in await self.pool.fetch(self.queries.pauses)]

    async def unfinished(self, dead_blocks_key: bool) -> tuple[int, float]:
        """Rows still to send (not counting those held behind a dead row), and the seconds
        until the earliest of them may be tried."""
        row = await self.pool.fetchrow(self.queries.unfinished, dead_blocks_key)
        assert row is not None
        next_in = row["next_in"]
        return int(row["remaining"]), 0.0 if next_in is None or math.isnan(next_in) else next_in

    async def queue_sample(self) -> tuple[int, float]:
        row = await self.pool.fetchrow(self.queries.queue_sample)
        assert row is not None
        return int(row["depth"]), float(row["oldest"])

    async def purge_published(self, older_than_seconds: float, batch: int = 1000) -> int:
        """Delete one batch of published rows; return how many went."""
        status = await self.pool.execute(self.queries.purge_published, older_than_seconds, batch)
        return int(status.split()[-1])


async def listen(
    dsn: str, wake: asyncio.Event, *, heartbeat: float = 5.0, connect_timeout: float = 10.0
) -> None:
    """Set ``wake`` whenever a row is inserted (LISTEN on the insert trigger's channel).

    Runs until cancelled. A lost connection is re-opened with backoff; every (re)connect sets
    ``wake`` too, since notifications sent while we were away are lost. A heartbeat query
    notices a connection that died silently.
    """
    failures = 0
    while True:
        try:
            connection = await asyncpg.connect(dsn, timeout=connect_timeout)
        except DATABASE_ERRORS as error:
            failures += 1
            log.warning("listener.connect_failed", error=str(error), failures=failures)
            await asyncio.sleep(min(30.0, 0.1 * 2**failures) * random.random() + 0.05)
            continue
        failures = 0
        try:
            await connection.add_listener(NOTIFY_CHANNEL, lambda *_: wake.set())
            wake.set()
            while not connection.is_closed():
                await asyncio.sleep(heartbeat)
                await connection.execute("SELECT 1", timeout=heartbeat)
        except DATABASE_ERRORS as error:
            log.warning("listener.lost", error=str(error))
        finally:
            connection.terminate()
