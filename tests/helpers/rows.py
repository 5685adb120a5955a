"""Outbox rows seeded in any state the engine could have left them, with their delivery log."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import asyncpg
import orjson

from tests.helpers.engine import payload

EVENT = "payment_status_updated"


@dataclass(frozen=True)
class Attempt:
    """A delivery-log row to write for a seeded outbox row."""

    outcome: str
    http_status: int | None
    ago: timedelta
    event_api_id: str | None = None
    error: str | None = None


async def add_row(
    db: asyncpg.Connection,
    *,
    status: str = "pending",
    event_type: str = EVENT,
    attempts: int = 0,
    age: timedelta = timedelta(0),
    available_in: timedelta = timedelta(0),
    ordering_key: str | None = None,
    last_http_status: int | None = None,
    last_error: str | None = None,
    deliveries: Sequence[Attempt] = (),
) -> int:
    """Write one outbox row as the engine would have left it, with its delivery log."""
    published = status == "published"
    row_id: int = await db.fetchval(
        """
        INSERT INTO outbox (event_type, payload, status, attempts, created_at, available_at,
                            ordering_key, last_http_status, last_error, published_at,
                            event_api_id, claimed_by, lease_until)
        VALUES ($1, $2::jsonb, $3, $4, now() - $5::interval, now() + $6::interval, $7, $8, $9,
                CASE WHEN $10 THEN now() - $5::interval / 2 END,
                CASE WHEN $10 THEN 'seeded' END,
                CASE WHEN $3 = 'in_flight' THEN 'elsewhere' END,
                CASE WHEN $3 = 'in_flight' THEN now() + interval '1 minute' END)
        RETURNING id""",
        event_type,
        orjson.dumps(payload(event_type)).decode(),
        status,
        attempts,
        age,
        available_in,
        ordering_key,
        last_http_status,
        last_error,
        published,
    )
    for number, attempt in enumerate(deliveries, start=1):
        await db.execute(
            """
            INSERT INTO outbox_delivery (outbox_id, attempt, attempted_at, http_status,
                                         latency_ms, outcome, event_api_id, error, worker)
            VALUES ($1, $2, now() - $3::interval, $4, 12.5, $5, $6, $7, 'seed')""",
            row_id,
            number,
            attempt.ago,
            attempt.http_status,
            attempt.outcome,
            attempt.event_api_id,
            attempt.error,
        )
    return row_id


async def add_dead(
    db: asyncpg.Connection,
    *,
    event_type: str = EVENT,
    outcome: str = "http_400",
    http_status: int | None = 400,
    died_ago: timedelta = timedelta(minutes=5),
    ordering_key: str | None = None,
) -> int:
    """A dead row that failed once, ``died_ago``."""
    error = f"HTTP {http_status}: refused" if http_status else "payload is missing timestamp"
    return await add_row(
        db,
        status="dead",
        event_type=event_type,
        attempts=1,
        age=died_ago + timedelta(seconds=1),
        ordering_key=ordering_key,
        last_http_status=http_status,
        last_error=error,
        deliveries=[Attempt(outcome, http_status, died_ago, error=error)],
    )
