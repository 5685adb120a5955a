"""``relay replay`` (relay.ops.admin.Admin.replay) on a real PostgreSQL, and what running relays do
with replayed rows: per-key order, the delivery log, the NOTIFY that wakes them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import timedelta

import asyncpg
import orjson
import pytest

from relay.config import load_settings
from relay.ops.admin import Admin, open_admin
from relay.ops.selection import NoSelector, ReplaySelector
from tests.helpers.engine import (
    arrival_order_by_key,
    engine_settings,
    eventually,
    insert_rows,
    running_daemon,
    status_counts,
)
from tests.helpers.partner import running, wait_for
from tests.helpers.rows import Attempt, add_dead, add_row


@pytest.fixture
async def admin(database_url: str) -> AsyncIterator[Admin]:
    async with open_admin(load_settings(database_url=database_url)) as handle:
        yield handle


async def published(
    db: asyncpg.Connection,
    *,
    ago: timedelta,
    event_type: str = "payment_status_updated",
    ordering_key: str | None = None,
) -> int:
    """A row published ``ago``, with its one successful attempt in the delivery log."""
    return await add_row(
        db,
        status="published",
        event_type=event_type,
        attempts=1,
        age=ago * 2,  # add_row publishes a row half its age ago
        ordering_key=ordering_key,
        last_http_status=201,
        deliveries=[Attempt("created", 201, ago, "seeded")],
    )


async def statuses(db: asyncpg.Connection) -> dict[int, str]:
    return {row["id"]: row["status"] for row in await db.fetch("SELECT id, status FROM outbox")}


# Choosing rows ---------------------------------------------------------------------------------


async def test_replay_selectors(db: asyncpg.Connection, admin: Admin) -> None:
    old = await published(db, ago=timedelta(hours=3))
    recent = await published(db, ago=timedelta(minutes=30))
    other = await published(db, ago=timedelta(minutes=30), event_type="case_created")
    dead = await add_dead(db)
    pending = await add_row(db)

    with pytest.raises(NoSelector, match="name the published rows to replay"):
        await admin.replay(ReplaySelector())

    preview = await admin.replay(ReplaySelector(since=timedelta(days=1)), dry_run=True)
    assert preview.ids == [old, recent, other]
    assert [row.event_type for row in preview.rows] == [
        "payment_status_updated",
        "payment_status_updated",
        "case_created",
    ]
    assert await status_counts(db) == {"published": 3, "dead": 1, "pending": 1}  # unchanged

    by_id = await admin.replay(ReplaySelector(ids=(old, dead, pending, 424242)))
    assert (by_id.ids, by_id.not_published) == ([old], [dead, pending, 424242])
    assert by_id.needs_attention
    window = ReplaySelector(event_type="case_created", since=timedelta(hours=1))
    assert (await admin.replay(window)).ids == [other]
    until = await admin.replay(ReplaySelector(until=timedelta(minutes=10)))
    assert (until.ids, until.needs_attention) == ([recent], False)
    assert await statuses(db) == {
        old: "pending",
        recent: "pending",
        other: "pending",
        dead: "dead",
        pending: "pending",
    }


async def test_a_replayed_row_starts_afresh_keeps_its_id_history_and_wakes_the_relays(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    row_id = await published(db, ago=timedelta(days=2), ordering_key="case-1")
    await db.execute(
        "UPDATE outbox SET stops = 1, event_api_id = 'earlier-id' WHERE id = $1", row_id
    )
    before = await db.fetchrow("SELECT * FROM outbox WHERE id = $1", row_id)
    assert before is not None
    woken = asyncio.Event()
    listener = await asyncpg.connect(database_url)
    await listener.add_listener("relay_outbox", lambda *_: woken.set())
    try:
        result = await admin.replay(ReplaySelector(ids=(row_id,)), dry_run=True)
        assert result.audit_id is None
        result = await admin.replay(ReplaySelector(ids=(row_id,)))
        async with asyncio.timeout(5):
            await woken.wait()
    finally:
        await listener.close()
    assert result.ids == [row_id]
    row = await db.fetchrow("SELECT *, now() AS now FROM outbox WHERE id = $1", row_id)
    assert row is not None
    assert (row["status"], row["attempts"], row["stops"]) == ("pending", 0, 0)
    assert row["available_at"] <= row["now"]
    assert row["published_at"] is None  # not published until it is again
    assert row["event_api_id"] == "earlier-id"  # until the next publish overwrites it
    for column in ("id", "payload", "ordering_key", "created_at", "last_http_status"):
        assert row[column] == before[column], column
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery WHERE outbox_id = $1", row_id)

    entry = await db.fetchrow(
        "SELECT operator, action, parameters::text AS parameters, rows_affected, row_ids, "
        "outcome FROM relay_admin_log WHERE id = $1",
        result.audit_id,
    )
    assert entry is not None
    assert (entry["operator"], entry["action"], entry["outcome"]) == (
        admin.operator,
        "replay",
        "done",
    )
    assert orjson.loads(entry["parameters"]) == {"ids": [row_id]}
    assert (entry["rows_affected"], entry["row_ids"]) == (1, [row_id])


# Rows of one ordering key ----------------------------------------------------------------------


@pytest.mark.parametrize("dead_blocks_key", [True, False])
async def test_a_row_is_held_back_while_a_newer_row_of_its_key_is_unfinished(
    db: asyncpg.Connection, database_url: str, dead_blocks_key: bool
) -> None:
    rows = {}
    for key, newer in [
        ("pending", "pending"),
        ("in flight", "in_flight"),
        ("blocked", "blocked"),
        ("dead", "dead"),
        ("older unfinished", None),
    ]:
        rows[key] = await published(db, ago=timedelta(hours=1), ordering_key=key)
        if newer == "dead":
            await add_dead(db, ordering_key=key)
        elif newer is not None:
            await add_row(db, status=newer, ordering_key=key)
    # Only an older row of its key is unfinished: the replayed row waits for it, in order.
    await db.execute(
        "UPDATE outbox SET status = 'pending', published_at = NULL WHERE ordering_key = $1",
        "older unfinished",
    )
    rows["older unfinished"] = await published(
        db, ago=timedelta(minutes=5), ordering_key="older unfinished"
    )
    unkeyed = await published(db, ago=timedelta(hours=1))

    settings = load_settings(database_url=database_url, dead_blocks_key=dead_blocks_key)
    async with open_admin(settings) as admin:
        result = await admin.replay(ReplaySelector(since=timedelta(days=1)))

    held = {"pending", "in flight", "blocked"} | ({"dead"} if dead_blocks_key else set())
    assert [row.id for row in result.held] == sorted(rows[key] for key in held)
    assert result.ids == sorted(
        [unkeyed, rows["older unfinished"]] + ([] if dead_blocks_key else [rows["dead"]])
    )
    assert result.needs_attention
    text = "\n".join(result.lines())
    assert f"held back {len(held)} rows, whose ordering key has newer rows not published" in text
    document = result.to_json()
    assert {item["ordering_key"] for item in document["held_back"]} == held
    detail = await db.fetchval("SELECT detail::text FROM relay_admin_log")
    assert orjson.loads(detail) == {"held_back": [row.id for row in result.held]}


async def settled(db: asyncpg.Connection) -> bool:
    return set((await status_counts(db)).keys()) <= {"published", "dead"}


async def test_through_a_running_relay_replays_go_in_key_order_never_before_newer_rows(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    """Rows 1-3 of a key are published; row 4 waits for a retry. Replaying row 2 would send it
    before row 4 (ids kept: the relay claims a keyed row only when no earlier one is
    unfinished), so it is held back. Once row 4 is published, rows 2 and 3 are replayed and
    arrive after it, in order; the unkeyed row goes at once. Consumers see the key's events in
    order, the newest last."""
    async with running() as emulator:
        async with running_daemon(engine_settings(database_url, emulator)):
            first = await insert_rows(db, 3, ordering_key="case-9")
            loose = await insert_rows(db, 1)
            await eventually(lambda: settled(db))
            # Row 4, failed once, waits for its retry.
            fourth: int = await db.fetchval(
                "INSERT INTO outbox (event_type, payload, ordering_key, attempts, available_at) "
                "SELECT event_type, payload || jsonb_build_object('correlationId', "
                "gen_random_uuid()::text), ordering_key, 1, now() + interval '1 hour' "
                "FROM outbox WHERE id = $1 RETURNING id",
                first[0],
            )
            early = await admin.replay(ReplaySelector(ids=(first[1], loose[0])))
            assert (early.ids, [row.id for row in early.held]) == ([loose[0]], [first[1]])

            await db.execute("UPDATE outbox SET available_at = now() WHERE id = $1", fourth)
            await eventually(lambda: settled(db))
            later = await admin.replay(ReplaySelector(ids=(first[1], first[2])))
            assert (later.ids, later.held) == ([first[1], first[2]], [])
            await eventually(lambda: settled(db))
            await wait_for(lambda: len(emulator.events) == 8)
        order = await arrival_order_by_key(db, emulator)
    assert order == {"case-9": [first[0], first[1], first[2], fourth, first[1], first[2]]}
    assert emulator.duplicates == 3  # consumers that deduplicate drop all three
    assert await status_counts(db) == {"published": 5}
    attempts = await db.fetch(
        "SELECT outbox_id, count(*) AS n FROM outbox_delivery GROUP BY outbox_id ORDER BY 1"
    )
    assert [(row["outbox_id"], row["n"]) for row in attempts] == [
        (first[0], 1),
        (first[1], 2),  # the earlier attempt is kept
        (first[2], 2),
        (loose[0], 2),
        (fourth, 1),
    ]
    ids = await db.fetch(
        "SELECT o.id, o.event_api_id, d.event_api_id AS latest FROM outbox o "
        "JOIN LATERAL (SELECT event_api_id FROM outbox_delivery WHERE outbox_id = o.id "
        "ORDER BY id DESC LIMIT 1) d ON true"
    )
    assert all(row["event_api_id"] == row["latest"] for row in ids)  # the new publish's _id


async def test_a_newer_row_in_flight_holds_a_replay_back(
    db: asyncpg.Connection, database_url: str, admin: Admin
) -> None:
    async with running() as emulator, running_daemon(engine_settings(database_url, emulator)):
        first = await insert_rows(db, 2, ordering_key="case-3")
        await eventually(lambda: settled(db))
        emulator.set_faults(latency_ms=2000)  # the next send stays in flight a while
        [newer] = await insert_rows(db, 1, ordering_key="case-3")

        async def in_flight() -> bool:
            status = await db.fetchval("SELECT status FROM outbox WHERE id = $1", newer)
            return bool(status == "in_flight")

        await eventually(in_flight)
        result = await admin.replay(ReplaySelector(ids=(first[0],)))
        assert (result.ids, [row.id for row in result.held]) == ([], [first[0]])
        emulator.clear_faults()
        await eventually(lambda: settled(db), within=15)
    assert await status_counts(db) == {"published": 3}
    assert len(emulator.events) == 3  # nothing was sent again
