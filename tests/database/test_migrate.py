"""The outbox schema on a real PostgreSQL: migrations, defaults, the NOTIFY trigger, the plan.

Tests that migrate start from an empty database of their own; the others share one migrated
database, emptied before each test.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.errors import SchemaNotReady
from relay.outbox import enqueue_async
from relay.outbox.queries import NOTIFY_CHANNEL, Queries
from relay.schema import (
    REVISIONS,
    VERSION_TABLE,
    alembic_revisions,
    check_schema,
    current_revision,
    downgrade,
    head_revision,
    migrate,
    migration_sql,
)
from tests.conftest import Databases, with_database
from tests.helpers.schema import relations, schema_snapshot

README = Path(__file__).resolve().parents[2] / "README.md"

# Filled by the producer; everything else is the relay's.
PRODUCER_COLUMNS = ["event_type", "payload", "tenant", "country", "ordering_key", "trace_context"]
RELAY_COLUMNS = [
    "id",
    "status",
    "attempts",
    "available_at",
    "claimed_by",
    "claim_token",
    "lease_until",
    "stops",
    "blocked_by",
    "created_at",
    "published_at",
    "event_api_id",
    "last_http_status",
    "last_error",
]


# Migrations ------------------------------------------------------------------------------------


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


def test_upgrade_downgrade_upgrade_round_trips(empty_database_url: str) -> None:
    migrate(empty_database_url, "public")
    first = schema_snapshot(empty_database_url)
    assert {"outbox", "outbox_delivery", "relay_pause", "outbox_loose_idx"} <= relations(first)
    assert first["revision"] == [(head_revision(),)]

    downgrade(empty_database_url, "public")
    emptied = schema_snapshot(empty_database_url)
    assert relations(emptied) == {VERSION_TABLE, f"{VERSION_TABLE}_pkc"}
    assert emptied["functions"] == []
    assert emptied["revision"] == []

    migrate(empty_database_url, "public")
    assert schema_snapshot(empty_database_url) == first


def test_the_relay_knows_every_migration_in_order() -> None:
    # relay run checks the schema against REVISIONS without importing Alembic.
    assert list(REVISIONS) == alembic_revisions()


def test_migrating_a_current_schema_changes_nothing(database_url: str) -> None:
    before = schema_snapshot(database_url)
    migrate(database_url, "public")
    assert schema_snapshot(database_url) == before


def test_the_outbox_columns_are_the_documented_contract(database_url: str) -> None:
    columns = [row[1] for row in schema_snapshot(database_url)["columns"] if row[0] == "outbox"]
    assert sorted(columns) == sorted(PRODUCER_COLUMNS + RELAY_COLUMNS)
    readme = README.read_text(encoding="utf-8")
    undocumented = [name for name in columns if f"`{name}`" not in readme]
    assert not undocumented, f"outbox columns missing from README.md: {undocumented}"


def test_the_offline_sql_is_what_migrate_runs() -> None:
    sql = migration_sql("events_out")
    # The schema only when missing: CREATE SCHEMA IF NOT EXISTS needs CREATE on the database.
    assert "IF NOT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'events_out')" in sql
    assert "CREATE SCHEMA IF NOT EXISTS" not in sql
    assert re.search(r'CREATE TABLE "events_out"\.outbox \(', sql)
    assert 'CREATE TRIGGER outbox_notify AFTER INSERT ON "events_out".outbox' in sql
    assert "INSERT INTO events_out.relay_alembic_version (version_num) VALUES ('0001')" in sql
    # The application's table is only read, by the carry-over of an older relay's layout.
    assert "CREATE TABLE events_out.alembic_version" not in sql
    assert "INSERT INTO events_out.alembic_version" not in sql
    assert "UPDATE events_out.alembic_version" not in sql
    assert '"public"' not in sql
    assert sql.strip().endswith("COMMIT;")


async def test_a_custom_schema_lives_beside_public(
    database_url: str, db: asyncpg.Connection
) -> None:
    await asyncio.to_thread(migrate, database_url, "events_out")
    await check_schema(db, "events_out")
    await check_schema(db, "public")
    assert await current_revision(db, "events_out") == head_revision()

    row_id = await enqueue_async(db, "case_created", {"case": {"number": "1"}}, schema="events_out")
    await db.execute(
        "INSERT INTO events_out.outbox (event_type, payload) VALUES ('claim_updated', '{}')"
    )
    claimed = await db.fetch(
        Queries("events_out").claim, 10, "w", "dk", "abc", True, 60.0, 1 << 32, "", 20, []
    )
    assert sorted(row["event_type"] for row in claimed) == ["case_created", "claim_updated"]
    assert row_id in {row["id"] for row in claimed}
    assert await db.fetchval("SELECT count(*) FROM public.outbox") == 0


async def test_a_missing_schema_is_not_ready(db: asyncpg.Connection) -> None:
    with pytest.raises(SchemaNotReady, match=r'schema "elsewhere": run \'relay migrate\''):
        await check_schema(db, "elsewhere")


# What a plain INSERT gets ----------------------------------------------------------------------


async def test_a_plain_two_column_insert_is_pending_and_unleased(db: asyncpg.Connection) -> None:
    row = await db.fetchrow(
        "INSERT INTO outbox (event_type, payload) "
        """VALUES ('payment_status_updated', '{"eventType": "payment_status_updated"}') """
        "RETURNING *, now() AS inserted_at"
    )
    assert row is not None
    assert row["status"] == "pending"
    assert row["attempts"] == 0
    assert row["available_at"] == row["created_at"] == row["inserted_at"]
    for column in (
        "tenant",
        "country",
        "ordering_key",
        "claimed_by",
        "lease_until",
        "published_at",
        "event_api_id",
        "last_http_status",
        "last_error",
    ):
        assert row[column] is None, column


async def test_ids_grow_in_insert_order_with_and_without_a_key(db: asyncpg.Connection) -> None:
    ids = [
        await db.fetchval(
            "INSERT INTO outbox (event_type, payload, ordering_key) VALUES ('e', '{}', $1) "
            "RETURNING id",
            key,
        )
        for key in (None, "claim-1", None, "claim-1", "claim-2")
    ]
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


@pytest.mark.parametrize(
    ("columns", "values"),
    [
        ("event_type, payload", "('', '{}')"),
        ("event_type, payload", "(NULL, '{}')"),
        ("event_type, payload", "('e', NULL)"),
        ("event_type, payload, status", "('e', '{}', 'sent')"),
    ],
)
async def test_the_table_refuses_broken_rows(
    db: asyncpg.Connection, columns: str, values: str
) -> None:
    with pytest.raises(asyncpg.IntegrityConstraintViolationError):
        await db.execute(f"INSERT INTO outbox ({columns}) VALUES {values}")


# NOTIFY ---------------------------------------------------------------------------------------


class Inbox:
    """Notifications received on one channel, and a way to wait for one."""

    def __init__(self) -> None:
        self.payloads: list[str] = []
        self.arrived = asyncio.Event()

    def __call__(self, connection: object, pid: int, channel: str, payload: object, /) -> None:
        self.payloads.append(str(payload))
        self.arrived.set()

    async def wait_for(self, payload: str) -> None:
        async with asyncio.timeout(10):
            while payload not in self.payloads:
                self.arrived.clear()
                await self.arrived.wait()


@pytest.fixture
async def inbox(database_url: str) -> AsyncIterator[tuple[Inbox, asyncpg.Connection]]:
    """A second connection that LISTENs on the insert trigger's channel."""
    listener = await asyncpg.connect(database_url)
    received = Inbox()
    await listener.add_listener(NOTIFY_CHANNEL, received)
    try:
        yield received, listener
    finally:
        await listener.close()


async def mark(listener: asyncpg.Connection, inbox: Inbox, marker: str) -> None:
    """Send a marker on the channel and wait until it is back: anything sent before it by a
    committed transaction has then arrived too, so an absence can be asserted without sleeping."""
    await listener.execute("SELECT pg_notify($1, $2)", NOTIFY_CHANNEL, marker)
    await inbox.wait_for(marker)


async def test_notify_fires_on_commit_and_not_before(
    db: asyncpg.Connection, inbox: tuple[Inbox, asyncpg.Connection]
) -> None:
    received, listener = inbox
    transaction = db.transaction()
    await transaction.start()
    await db.execute(
        "INSERT INTO outbox (event_type, payload) SELECT 'e', '{}' FROM generate_series(1, 3)"
    )
    await db.execute("INSERT INTO outbox (event_type, payload) VALUES ('e', '{}')")
    await mark(listener, received, "before-commit")
    assert received.payloads == ["before-commit"]

    await transaction.commit()
    await received.wait_for("public")
    await mark(listener, received, "after-commit")
    # Identical notifications of one transaction are folded into one: one wake-up per commit.
    assert received.payloads == ["before-commit", "public", "after-commit"]


async def test_notify_does_not_fire_on_rollback(
    db: asyncpg.Connection, inbox: tuple[Inbox, asyncpg.Connection]
) -> None:
    received, listener = inbox
    transaction = db.transaction()
    await transaction.start()
    await enqueue_async(db, "case_created", {"case": {}})
    await transaction.rollback()
    await mark(listener, received, "after-rollback")
    assert received.payloads == ["after-rollback"]
    assert await db.fetchval("SELECT count(*) FROM outbox") == 0


# The claim query's plan -----------------------------------------------------------------------


def plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from plan_nodes(child)


async def test_the_claim_query_reads_only_the_partial_index(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO outbox (event_type, payload, status, published_at, event_api_id) "
        "SELECT 'e', '{}', 'published', now(), g::text FROM generate_series(1, 20000) g"
    )
    await db.execute(
        "INSERT INTO outbox (event_type, payload, ordering_key) "
        "SELECT 'e', '{}', CASE WHEN g % 2 = 0 THEN 'claim-' || g END "
        "FROM generate_series(1, 5) g"
    )
    await db.execute("ANALYZE outbox")
    explained = await db.fetchval(
        "EXPLAIN (FORMAT JSON) " + Queries("public").claim,
        10,
        "w",
        "dk",
        "abc",
        True,
        60.0,
        1 << 32,
        "",
        20,
        [],
    )
    nodes = list(plan_nodes(json.loads(explained)[0]["Plan"]))
    scans = [
        (node["Node Type"], node.get("Relation Name"), node.get("Index Name")) for node in nodes
    ]
    # Rows without a key by availability, the others key by key: both partial indexes.
    assert any(index == "outbox_loose_idx" for _, _, index in scans), scans
    assert any(index == "outbox_head_idx" for _, _, index in scans), scans
    assert not any(kind == "Seq Scan" and table == "outbox" for kind, table, _ in scans), scans


async def test_the_tables_relay_migrate_creates_are_the_ones_the_docs_list(
    empty_database_url: str,
) -> None:
    """An application's autogenerate that skipped four tables once proposed dropping the
    three it did not know (inbox, inbox_checkpoint, relay_admin_log): the docs' snippet
    imports the list the migrations are checked against here."""
    from relay.names import TABLES

    await asyncio.to_thread(migrate, empty_database_url, "relay")
    db = await asyncpg.connect(empty_database_url)
    try:
        created = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'relay'")
    finally:
        await db.close()
    assert {row["tablename"] for row in created} == set(TABLES)
    root = Path(__file__).parents[2]
    database_md = (root / "docs" / "database.md").read_text()
    assert "from relay.names import TABLES as RELAY_TABLES" in database_md
    owned = database_md.split("## What relay owns", 1)[1].split("\n## ", 1)[0]
    assert all(f"`{table}`" in owned for table in TABLES), owned
    readme = (root / "README.md").read_text()
    words = {6: "six", 7: "seven"}
    assert f"creates {words[len(TABLES) - 1]} tables" in readme
