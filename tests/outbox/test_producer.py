"""The producer API with every kind of connection an application may hold.

Each kind is driven the way an application would: open a transaction, enqueue, then commit or
roll back. The outbox is read back through a separate asyncpg connection (``db``). The tests of
this module share one migrated database, emptied before each test: creating a database per test
would cost more than all the tests together.
"""

from __future__ import annotations

import asyncio
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta, timezone
from decimal import Decimal
from typing import Any, Protocol

import asyncpg
import pytest
from sqlalchemy import Engine, create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session

from relay.database import asyncpg_dsn, sqlalchemy_url
from relay.errors import InvalidEvent
from relay.outbox import enqueue, enqueue_async
from tests.conftest import Databases, with_database

EVENT_TYPE = "payment_status_updated"
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{1,6})?Z$")


class Writer(Protocol):
    async def enqueue(self, event_type: str, payload: Any, **options: Any) -> int: ...


# An application's transaction: yields a Writer, then commits (True) or rolls back (False).
Transaction = Callable[[bool], AbstractAsyncContextManager[Writer]]


@dataclass
class AsyncWriter:
    connection: asyncpg.Connection | AsyncConnection | AsyncSession

    async def enqueue(self, event_type: str, payload: Any, **options: Any) -> int:
        return await enqueue_async(self.connection, event_type, payload, **options)


@dataclass
class SyncWriter:
    connection: Connection | Session

    async def enqueue(self, event_type: str, payload: Any, **options: Any) -> int:
        return enqueue(self.connection, event_type, payload, **options)


def asyncpg_kind(url: str) -> Transaction:
    @asynccontextmanager
    async def transaction(commit: bool) -> AsyncIterator[Writer]:
        connection = await asyncpg.connect(url)
        try:
            started = connection.transaction()
            await started.start()
            yield AsyncWriter(connection)
            if commit:
                await started.commit()
            else:
                await started.rollback()
        finally:
            await connection.close()

    return transaction


def connection_kind(engine: Engine) -> Transaction:
    @asynccontextmanager
    async def transaction(commit: bool) -> AsyncIterator[Writer]:
        with engine.connect() as connection:
            started = connection.begin()
            yield SyncWriter(connection)
            if commit:
                started.commit()
            else:
                started.rollback()

    return transaction


def session_kind(engine: Engine) -> Transaction:
    @asynccontextmanager
    async def transaction(commit: bool) -> AsyncIterator[Writer]:
        with Session(engine) as session:
            yield SyncWriter(session)
            if commit:
                session.commit()
            else:
                session.rollback()

    return transaction


def async_connection_kind(engine: AsyncEngine) -> Transaction:
    @asynccontextmanager
    async def transaction(commit: bool) -> AsyncIterator[Writer]:
        async with engine.connect() as connection:
            yield AsyncWriter(connection)
            if commit:
                await connection.commit()
            else:
                await connection.rollback()

    return transaction


def async_session_kind(engine: AsyncEngine) -> Transaction:
    @asynccontextmanager
    async def transaction(commit: bool) -> AsyncIterator[Writer]:
        async with AsyncSession(engine) as session:
            yield AsyncWriter(session)
            if commit:
                await session.commit()
            else:
                await session.rollback()

    return transaction


KINDS = [
    "asyncpg",
    "sqlalchemy-connection",
    "sqlalchemy-session",
    "sqlalchemy-async-connection",
    "sqlalchemy-async-session",
]


@pytest.fixture(scope="module")
def database_url(databases: Databases) -> Iterator[str]:
    name = databases.create()
    yield with_database(databases.admin_url, name)
    databases.drop(name)


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    connection = await asyncpg.connect(database_url)
    try:
        await connection.execute("TRUNCATE outbox")
        yield connection
    finally:
        await connection.close()


@pytest.fixture(params=KINDS)
async def transaction(
    request: pytest.FixtureRequest, database_url: str
) -> AsyncIterator[Transaction]:
    kind: str = request.param
    if kind == "asyncpg":
        yield asyncpg_kind(database_url)
    elif kind.startswith("sqlalchemy-async"):
        async_engine = create_async_engine(sqlalchemy_url(database_url))
        try:
            yield (async_connection_kind if "connection" in kind else async_session_kind)(
                async_engine
            )
        finally:
            await async_engine.dispose()
    else:
        # SQLAlchemy's sync API needs a sync driver: psycopg 3.
        engine = create_engine(
            "postgresql+psycopg://" + asyncpg_dsn(database_url).removeprefix("postgresql://")
        )
        try:
            yield (connection_kind if "connection" in kind else session_kind)(engine)
        finally:
            engine.dispose()


async def stored(db: asyncpg.Connection, row_id: int) -> asyncpg.Record:
    row = await db.fetchrow("SELECT *, payload::text AS body FROM outbox WHERE id = $1", row_id)
    assert row is not None, f"outbox row {row_id} is not there"
    return row


# Committed, rolled back ------------------------------------------------------------------------


async def test_a_committed_event_is_filled_in(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    payment = {"uuid": str(uuid.uuid4()), "status": "canceled", "statusReason": "duplicate"}
    before = datetime.now(UTC)
    async with transaction(True) as writer:
        row_id = await writer.enqueue(
            EVENT_TYPE,
            {"payment": payment},
            tenant="abcinsurance",
            country="dk",
            ordering_key=f"payment-{payment['uuid']}",
        )
    row = await stored(db, row_id)
    assert (row["event_type"], row["tenant"], row["country"]) == (EVENT_TYPE, "abcinsurance", "dk")
    assert row["ordering_key"] == f"payment-{payment['uuid']}"
    assert (row["status"], row["attempts"]) == ("pending", 0)
    body = json.loads(row["body"])
    assert body["eventType"] == EVENT_TYPE
    assert body["payloadVersion"] == "1.0.0"
    assert uuid.UUID(body["correlationId"]).version == 4
    assert ISO_UTC.match(body["timestamp"]), body["timestamp"]
    written = datetime.fromisoformat(body["timestamp"])
    assert before - timedelta(seconds=1) <= written <= datetime.now(UTC)
    assert body["payment"] == payment


async def test_fields_the_application_set_are_kept(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    payload = {
        "$schema": "https://schemas.example/payment_status_updated/2.1.0.json",
        "eventType": EVENT_TYPE,
        "payloadVersion": "2.1.0",
        "correlationId": "70C6D351-016F-4C9E-B1A9-D581FC3A596B",
        "timestamp": "2017-07-25T10:31:28.2519514Z",
        "payment": {"uuid": "1d1b1b0e-0b4c-4bd3-a2f0-1d3a1d9e0b7a", "amount": 1234.5},
        "changedBy": {"name": "Søren Ærø", "userName": "soren"},
        "note": "a backslash and the text u0000: \\u0000 is not a NUL",
        "empty": {},
        "lines": [1, None, True, "x"],
    }
    async with transaction(True) as writer:
        row_id = await writer.enqueue(EVENT_TYPE, payload)
    row = await stored(db, row_id)
    assert json.loads(row["body"]) == payload
    assert (row["tenant"], row["country"], row["ordering_key"]) == (None, None, None)


async def test_other_timestamp_forms_are_kept_as_written(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    forms = ["2018-04-04T15:33:58+0200", "2020-10-21T08:45:53.3406753+02:00"]
    async with transaction(True) as writer:
        ids = [await writer.enqueue("case_created", {"timestamp": form}) for form in forms]
    assert [json.loads((await stored(db, i))["body"])["timestamp"] for i in ids] == forms


async def test_a_rolled_back_transaction_leaves_no_row(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    async with transaction(False) as writer:
        first = await writer.enqueue(EVENT_TYPE, {"payment": {}}, ordering_key="k")
        second = await writer.enqueue("case_created", {"case": {}})
    assert second > first
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


async def test_events_of_one_transaction_commit_together(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    async with transaction(True) as writer:
        ids = [await writer.enqueue("case_created", {"case": {"number": n}}) for n in range(3)]
    rows = await db.fetch("SELECT id, payload->'case'->>'number' AS n FROM outbox ORDER BY id")
    assert [(row["id"], row["n"]) for row in rows] == [(i, str(n)) for n, i in enumerate(ids)]


# Python values beyond JSON's own --------------------------------------------------------------

PAYMENT_UUID = uuid.UUID("4f1c2a8e-2b0d-4f47-9a53-0e6a1c9f7b21")
CORRELATION_ID = uuid.UUID("70c6d351-016f-4c9e-b1a9-d581fc3a596b")
CET_SUMMER = timezone(timedelta(hours=2))


async def test_uuids_decimals_datetimes_and_dates_are_stored_as_json(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    payload = {
        "correlationId": CORRELATION_ID,
        "timestamp": datetime(2024, 5, 1, 14, 30, 15, 250000, tzinfo=CET_SUMMER),
        "payment": {
            "uuid": PAYMENT_UUID,
            "amount": Decimal("12345678901234567.89"),
            "fee": Decimal("-0.000001"),
            "paidAt": datetime(2024, 5, 1, 12, 0, tzinfo=UTC),
            "dueOn": date(2024, 5, 31),
            "lines": [{"net": Decimal("1E+3")}, {"net": Decimal("0.10")}],
        },
    }
    async with transaction(True) as writer:
        row_id = await writer.enqueue(EVENT_TYPE, payload)
    row = await db.fetchrow(
        """SELECT payload::text AS body,
                  payload->'payment'->>'amount' AS amount,
                  jsonb_typeof(payload->'payment'->'amount') AS amount_type,
                  payload->'payment'->'lines'->0->>'net' AS first_net,
                  payload->'payment'->'lines'->1->>'net' AS second_net
           FROM outbox WHERE id = $1""",
        row_id,
    )
    assert row is not None
    # Exactly, as a number: a float would have made it 12345678901234568.
    assert (row["amount"], row["amount_type"]) == ("12345678901234567.89", "number")
    assert '"amount": 12345678901234567.89' in row["body"]
    assert (row["first_net"], row["second_net"]) == ("1000", "0.10")
    body = json.loads(row["body"], parse_float=Decimal)
    assert body["correlationId"] == str(CORRELATION_ID)
    assert body["timestamp"] == "2024-05-01T12:30:15.250000Z"  # in UTC, with Z
    assert body["payment"] == {
        "uuid": str(PAYMENT_UUID),
        "amount": Decimal("12345678901234567.89"),
        "fee": Decimal("-0.000001"),
        "paidAt": "2024-05-01T12:00:00.000000Z",
        "dueOn": "2024-05-31",
        "lines": [{"net": 1000}, {"net": Decimal("0.10")}],
    }


# Refused events --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bad:
    name: str
    message: str
    payload: Any = field(default_factory=dict)
    event_type: str = EVENT_TYPE
    options: dict[str, Any] = field(default_factory=dict)


class Opaque:
    """A value json cannot encode."""


BAD_EVENTS = [
    Bad("list", "payload must be a JSON object, not list", payload=[{"payment": {}}]),
    Bad("string", "payload must be a JSON object, not str", payload='{"payment": {}}'),
    Bad("none", "payload must be a JSON object", payload=None),
    Bad("naive datetime", "naive datetime", payload={"at": datetime(2024, 5, 1, 12)}),
    Bad("naive timestamp", "naive datetime", payload={"timestamp": datetime(2024, 5, 1, 12)}),
    Bad("time of day", "Object of type time is not", payload={"at": time(12, 30)}),
    Bad("set", "Object of type set is not", payload={"ids": {1, 2}}),
    Bad("object", "Object of type Opaque is not", payload={"x": Opaque()}),
    Bad("decimal NaN", "Decimal NaN or Infinity", payload={"amount": Decimal("NaN")}),
    Bad("decimal sNaN", "Decimal NaN or Infinity", payload={"amount": Decimal("sNaN")}),
    Bad("decimal infinity", "Decimal NaN or Infinity", payload={"amount": Decimal("Infinity")}),
    Bad("decimal -infinity", "Decimal NaN or Infinity", payload={"a": [Decimal("-Infinity")]}),
    Bad("decimal too large", "numeric range", payload={"amount": Decimal("1E+131072")}),
    Bad("decimal too fine", "numeric range", payload={"amount": Decimal("1E-16384")}),
    Bad("nan", "not JSON-serialisable", payload={"amount": math.nan}),
    Bad("infinity", "not JSON-serialisable", payload={"amount": math.inf}),
    Bad("tuple key", "not JSON-serialisable", payload={(1, 2): "x"}),
    Bad("lone surrogate", "lone surrogate", payload={"name": "\ud800"}),
    Bad("other eventType", "does not match event_type", payload={"eventType": "case_created"}),
    Bad("bad correlationId", "correlationId must be a UUID", payload={"correlationId": "abc"}),
    Bad(
        "urn correlationId",
        "correlationId must be a UUID",
        payload={"correlationId": f"urn:uuid:{uuid.uuid4()}"},
    ),
    Bad("numeric correlationId", "correlationId must be a UUID", payload={"correlationId": 42}),
    Bad("empty payloadVersion", "payloadVersion", payload={"payloadVersion": ""}),
    Bad("numeric payloadVersion", "payloadVersion", payload={"payloadVersion": 1}),
    Bad("bad timestamp", "timestamp must be an ISO 8601", payload={"timestamp": "yesterday"}),
    Bad("numeric timestamp", "timestamp must be an ISO 8601", payload={"timestamp": 1500000000}),
    Bad("upper-case country", "country 'DK'", options={"country": "DK"}),
    Bad("three-letter country", "country 'dnk'", options={"country": "dnk"}),
    Bad("country with newline", "country", options={"country": "dk\n"}),
    Bad("tenant with a space", "tenant 'abc insurance'", options={"tenant": "abc insurance"}),
    Bad("empty tenant", "tenant ''", options={"tenant": ""}),
    Bad(
        "empty ordering_key",
        "ordering_key must be a non-empty string",
        options={"ordering_key": ""},
    ),
    Bad("empty event_type", "event_type '' must be", event_type=""),
    Bad("event_type with a space", "event_type", event_type="payment status"),
    Bad("NUL in a value", "NUL character", payload={"note": "a\x00b"}),
    Bad("NUL in a key", "NUL character", payload={"a\x00b": 1}),
    Bad("NUL after a backslash", "NUL character", payload={"note": "\\\x00"}),
    Bad("NUL in event_type", "event_type", event_type="payment\x00"),
    Bad("NUL in tenant", "tenant", options={"tenant": "abc\x00"}),
    Bad("NUL in ordering_key", "ordering_key holds a NUL", options={"ordering_key": "k\x00"}),
]


async def refusal(writer: Writer, bad: Bad) -> str | None:
    """The InvalidEvent message for a bad event, or None if it was enqueued."""
    try:
        await writer.enqueue(bad.event_type, bad.payload, **bad.options)
    except InvalidEvent as error:
        return str(error)
    return None


def test_the_bad_events_are_distinct() -> None:
    assert len({bad.name for bad in BAD_EVENTS}) == len(BAD_EVENTS)


async def test_bad_events_are_refused_and_write_nothing(
    transaction: Transaction, db: asyncpg.Connection
) -> None:
    # One transaction for all of them, committed at the end: a refusal must leave the caller's
    # transaction usable (nothing was sent to the database) as well as write nothing.
    async with transaction(True) as writer:
        for bad in BAD_EVENTS:
            message = await refusal(writer, bad)
            assert message is not None, f"{bad.name}: enqueued without InvalidEvent"
            assert bad.message in message, f"{bad.name}: {message}"
        good = await writer.enqueue(EVENT_TYPE, {"payment": {}})
    assert [row["id"] for row in await db.fetch("SELECT id FROM outbox")] == [good]


def test_invalid_event_is_a_value_error() -> None:
    # Applications that already catch ValueError around their own validation catch this too.
    assert issubclass(InvalidEvent, ValueError)


async def test_the_producer_api_writes_to_relay_schema_when_no_schema_is_named(
    database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """After the README's `export RELAY_SCHEMA=relay`, enqueue(session, ...) once failed with
    `relation "public.outbox" does not exist`: the producer API reads RELAY_SCHEMA as the
    relay does, and an argument still wins."""
    from relay.schema import migrate

    await asyncio.to_thread(migrate, database_url, "relay")
    monkeypatch.setenv("RELAY_SCHEMA", "relay")
    row_id = await enqueue_async(db, "case_created", {"case": {"number": "1"}})
    engine = create_engine(sqlalchemy_url(database_url).replace("+asyncpg", "+psycopg"))
    try:
        with Session(engine) as session, session.begin():
            second = enqueue(session, "case_created", {"case": {"number": "2"}})
    finally:
        engine.dispose()
    here = await db.fetch("SELECT id FROM relay.outbox ORDER BY id")
    assert [row["id"] for row in here] == [row_id, second]
    assert await db.fetchval("SELECT count(*) FROM public.outbox") == 0
    elsewhere = await enqueue_async(db, "case_created", {"case": {"n": 3}}, schema="public")
    assert await db.fetchval("SELECT id FROM public.outbox") == elsewhere
    monkeypatch.setenv("RELAY_SCHEMA", "Not; a schema")
    with pytest.raises(InvalidEvent, match="RELAY_SCHEMA: must be a lower-case SQL identifier"):
        await enqueue_async(db, "case_created", {"case": {"number": "4"}})
