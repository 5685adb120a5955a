"""Running the engine in-process against a test database and the emulator."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
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
async def running_daemon(settings: Settings, tracing: Any = None) -> AsyncIterator[Daemon]:
    """A daemon running in the background (with ``tracing``'s spans, a
    ``relay.tracing.spans.Tracing``); stopped (and awaited) on exit."""
    daemon = Daemon(settings, tracing=tracing)
    task = asyncio.create_task(daemon.run())
    started = asyncio.create_task(daemon.started.wait())
    await asyncio.wait([task, started], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        started.cancel()
        task.result()
    assert daemon.worker is not None
    running = asyncio.create_task(daemon.worker.running.wait())
    await asyncio.wait([task, running], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        running.cancel()
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


def relay_env(database_url: str, emulator: Emulator, **extra: str) -> dict[str, str]:
    """Environment for a ``relay`` subprocess aimed at this database and emulator."""
    import os

    from tests.helpers.partner import CLIENT_ID, CLIENT_SECRET

    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(
        RELAY_DATABASE_URL=database_url,
        RELAY_TOKEN_URL=emulator.base_url + "/connect/token",
        RELAY_API_BASE_URL=emulator.base_url,
        RELAY_COUNTRY="dk",
        RELAY_TENANT="abcinsurance",
        RELAY_CLIENT_ID=CLIENT_ID,
        RELAY_CLIENT_SECRET=CLIENT_SECRET,
        RELAY_HTTP_PORT="0",
        RELAY_HTTP_HOST="127.0.0.1",
        RELAY_BACKOFF_BASE="10ms",
        RELAY_BACKOFF_CAP="100ms",
        RELAY_POLL_INTERVAL="500ms",
        RELAY_LOG_FORMAT="json",
    )
    env.update(extra)
    return env


async def id_by_correlation(db: asyncpg.Connection) -> dict[str, int]:
    rows = await db.fetch("SELECT id, payload->>'correlationId' AS c FROM outbox")
    return {row["c"]: row["id"] for row in rows}


async def arrival_order_by_key(db: asyncpg.Connection, emulator: Emulator) -> dict[str, list[int]]:
    """For each ordering key, the outbox ids in the order the partner received them."""
    ids = await id_by_correlation(db)
    keys = {
        row["id"]: row["ordering_key"]
        for row in await db.fetch(
            "SELECT id, ordering_key FROM outbox WHERE ordering_key IS NOT NULL"
        )
    }
    order: dict[str, list[int]] = {}
    for event in emulator.events:
        row_id = ids[event.body["correlationId"]]
        if row_id in keys:
            order.setdefault(keys[row_id], []).append(row_id)
    return order


async def eventually(
    check: Callable[[], Awaitable[bool]], within: float = 10.0, every: float = 0.02
) -> float:
    """Wait until ``check()`` (usually a query) holds; return the seconds it took; fail
    after ``within`` seconds."""
    started = time.monotonic()
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110 - the state lives in the database or process
            await asyncio.sleep(every)
    return time.monotonic() - started
