"""Hostile rows written as a producer could write them, and watching a daemon while it copes."""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import asyncpg
import orjson
from prometheus_client.parser import text_string_to_metric_families

from relay.config import Settings
from relay.daemon import Daemon
from relay.emulator import Emulator, ReceivedEvent
from tests.helpers.engine import drain

EVENT_TYPE = "payment_status_updated"


def payload_text(
    event_type: str = EVENT_TYPE, *, fields: Mapping[str, str] | None = None, **raw: str
) -> str:
    """A payload as JSON *text*, so numbers and nesting reach the table exactly as written.

    ``fields`` replaces envelope fields by raw JSON fragments (``{"correlationId": "[[]]"}``);
    every keyword adds a member whose value is the raw fragment given."""
    members = {
        "eventType": orjson.dumps(event_type).decode(),
        "payloadVersion": '"1.0.0"',
        "correlationId": f'"{uuid.uuid4()}"',
        "timestamp": '"2026-11-28T10:31:28.251Z"',
    }
    members.update(fields or {})
    members.update(raw)
    return "{" + ", ".join(f'"{name}": {value}' for name, value in members.items()) + "}"


def nested(levels: int, inner: str = "") -> str:
    """``levels`` nested JSON arrays as text, ``inner`` in the middle."""
    return "[" * levels + inner + "]" * levels


async def insert_text(
    db: asyncpg.Connection,
    text: str,
    *,
    event_type: str = EVENT_TYPE,
    tenant: str | None = None,
    country: str | None = None,
    ordering_key: str | None = None,
) -> int:
    """Insert one row whose payload is ``text`` cast to jsonb by PostgreSQL; return its id."""
    row_id: int = await db.fetchval(
        "INSERT INTO outbox (event_type, payload, tenant, country, ordering_key) "
        "VALUES ($1, $2::jsonb, $3, $4, $5) RETURNING id",
        event_type,
        text,
        tenant,
        country,
        ordering_key,
    )
    return row_id


async def stored_text(db: asyncpg.Connection) -> dict[int, str]:
    """Every row's payload as PostgreSQL renders it (what the relay must send), by id."""
    rows = await db.fetch("SELECT id, payload::text AS body FROM outbox")
    return {row["id"]: row["body"] for row in rows}


async def arrivals_by_id(db: asyncpg.Connection, emulator: Emulator) -> dict[int, ReceivedEvent]:
    """The emulator's events by outbox id (matched on correlationId, which PostgreSQL reads)."""
    rows = await db.fetch("SELECT id, payload->>'correlationId' AS c FROM outbox")
    ids = {row["c"]: row["id"] for row in rows}
    return {ids[event.body["correlationId"]]: event for event in emulator.events}


async def timed_drain(settings: Settings, within: float = 30.0) -> float:
    """Run the engine until nothing is left to send; return the seconds it took. Fails after
    ``within``: a row retried for ever (or a stuck engine) must not hang the test."""
    started = time.monotonic()
    await asyncio.wait_for(drain(settings), within)
    return time.monotonic() - started


async def get(url: str) -> tuple[int, str]:
    timeout = aiohttp.ClientTimeout(total=5)
    async with aiohttp.ClientSession(timeout=timeout) as session, session.get(url) as response:
        return response.status, await response.text()


async def scrape(port: int | None) -> list[tuple[str, dict[str, str], float]]:
    """Every sample the daemon's /metrics shows: (name, labels, value)."""
    _, text = await get(f"http://127.0.0.1:{port}/metrics")
    return [
        (item.name, dict(item.labels), float(item.value))
        for family in text_string_to_metric_families(text)
        for item in family.samples
    ]


def value_of(
    samples: list[tuple[str, dict[str, str], float]], name: str, **labels: str
) -> float | None:
    for sample_name, sample_labels, value in samples:
        if sample_name == name and all(sample_labels.get(k) == v for k, v in labels.items()):
            return value
    return None


@dataclass
class Observation:
    """What one look at a running daemon saw."""

    at: float
    readyz: int
    reason: str | None
    metrics: list[tuple[str, dict[str, str], float]]

    def metric(self, name: str, **labels: str) -> float | None:
        return value_of(self.metrics, name, **labels)


@dataclass
class Watch:
    """Looks at /readyz and /metrics of a daemon over and over, in the background."""

    daemon: Daemon
    every: float = 0.02
    seen: list[Observation] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def look(self) -> Observation:
        port = self.daemon.http_port
        status, body = await get(f"http://127.0.0.1:{port}/readyz")
        reason: Any = orjson.loads(body).get("reason")
        seen = Observation(time.monotonic(), status, reason, await scrape(port))
        self.seen.append(seen)
        return seen

    async def _run(self) -> None:
        while True:
            await self.look()
            await asyncio.sleep(self.every)

    async def __aenter__(self) -> Watch:
        self.task = asyncio.create_task(self._run(), name="watch")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task

    def values(self, name: str, **labels: str) -> list[float | None]:
        return [item.metric(name, **labels) for item in self.seen]
