"""The engine against a real PostgreSQL and the emulator over real sockets."""

from __future__ import annotations

import asyncpg

from tests.helpers.engine import drain, engine_settings, insert_rows, status_counts
from tests.helpers.partner import running


async def test_drain_publishes_every_row_once(db: asyncpg.Connection, database_url: str) -> None:
    ids = await insert_rows(db, 500)
    async with running() as emulator:
        await drain(engine_settings(database_url, emulator, concurrency=16))
    assert await status_counts(db) == {"published": len(ids)}
    assert emulator.stats()["events"] == len(ids)
    assert emulator.duplicates == 0
    missing = await db.fetchval(
        "SELECT count(*) FROM outbox WHERE event_api_id IS NULL OR published_at IS NULL"
    )
    assert missing == 0
    assert await db.fetchval("SELECT count(*) FROM outbox_delivery") == len(ids)
