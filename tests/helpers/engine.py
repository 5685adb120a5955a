"""Running the engine in-process against a test database and the emulator."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson

from relay.config import Settings
from relay.daemon import Daemon
from relay.emulator import Emulator
from tests.helpers.partner import partner_settings


def engine_settings(database_url: str, emulator: Emulator, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "http_port": 0,
        "http_host": "127.0.0.1",
        "poll_interval": 0.5,
        "backoff_base": 0.01,
        "backoff_cap": 0.1,
        "worker_id": f"test-{uuid.uuid4().hex[:6]}",
    }
    values.update(overrides)
    return partner_settings(emulator, **values)


def payload(event_type: str = "payment_status_updated", **extra: Any) -> dict[str, Any]:
    document: dict[str, Any] = {
        "eventType": event_type,
        "payloadVersion": "1.0.0",
        "correlationId": str(uuid.uuid4()),
        "timestamp": "2026-11-28T10:31:28.251Z",
        "payment": {"uuid": str(uuid.uuid4()), "status": "canceled"},
    }
    document.update(extra)
    return document


async def insert_rows(
    db: asyncpg.Connection,
    count: int,
    *,
    event_type: str = "payment_status_updated",
    ordering_key: str | None = None,
    keys: list[str] | None = None,
) -> list[int]:
    """Insert ``count`` valid rows in one statement; return their ids."""
    bodies = [orjson.dumps(payload(event_type)).decode() for _ in range(count)]
    key_list = keys if keys is not None else [ordering_key] * count
    rows = await db.fetch(
        "INSERT INTO outbox (event_type, payload, ordering_key) "
        "SELECT $1, p::jsonb, k FROM unnest($2::text[], $3::text[]) AS t(p, k) RETURNING id",
        event_type,
        bodies,
        key_list,
    )
    return [row["id"] for row in rows]


async def status_counts(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT status, count(*) AS n FROM outbox GROUP BY status")
    return {row["status"]: row["n"] for row in rows}


@asynccontextmanager
async def running_daemon(settings: Settings) -> AsyncIterator[Daemon]:
    """A daemon running in the background; stopped (and awaited) on exit."""
    daemon = Daemon(settings)
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    try:
        yield daemon
    finally:
        daemon.stop.set()
        await task


async def drain(settings: Settings) -> Daemon:
    daemon = Daemon(settings)
    await daemon.run(drain=True)
    return daemon
