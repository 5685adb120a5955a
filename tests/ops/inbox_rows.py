"""Inbox rows and checkpoints seeded in any state the receiver and consumers leave them."""

from __future__ import annotations

import itertools
from datetime import timedelta

import asyncpg

from relay.inbox.queries import MALFORMED_PREFIX

ROUTE = ("dk", "abcinsurance")
RECEIVE = "/api/events/v1/dk/external/abcinsurance/receive"
# A payload whose number only survives if nothing decodes it to a float on the way.
PAYLOAD = (
    '{"case": {"uuid": "4f1c2a8e-2b0d-4f47-9a53-0e6a1c9f7b21", "amount": 12345678901234567.89}}'
)

_numbers = itertools.count(1)


async def add_event(
    db: asyncpg.Connection,
    *,
    route: tuple[str, str] = ROUTE,
    event_id: str | None = None,
    event_type: str = "case_created",
    status: str = "pending",
    attempts: int = 0,
    received_ago: timedelta = timedelta(0),
    processed_ago: timedelta | None = None,
    last_error: str | None = None,
    payload: str = PAYLOAD,
) -> int:
    """One received event, as the receiver stored it and a consumer left it."""
    if processed_ago is None and status == "processed":
        processed_ago = received_ago
    row_id: int = await db.fetchval(
        """
        INSERT INTO inbox (country, tenant, event_id, event_type, event_timestamp, payload,
                           status, attempts, received_at, available_at, processed_at,
                           last_error)
        VALUES ($1, $2, $3, $4, '2026-11-29T10:31:28.2519514+02:00', $5::jsonb, $6, $7,
                now() - $8::interval, now() - $8::interval, now() - $9::interval, $10)
        RETURNING id""",
        *route,
        event_id or f"_{next(_numbers)}",
        event_type,
        payload,
        status,
        attempts,
        received_ago,
        processed_ago,
        last_error,
    )
    return row_id


async def add_malformed(
    db: asyncpg.Connection, *, route: tuple[str, str] = ROUTE, raw: str = "42"
) -> int:
    """An item that was not an event, kept raw as failed (as ``store_page`` keeps it)."""
    row_id: int = await db.fetchval(
        """
        INSERT INTO inbox (country, tenant, event_id, raw, status, last_error)
        VALUES ($1, $2, $3, $4::jsonb, 'failed', 'not an event: a JSON number')
        RETURNING id""",
        *route,
        f"{MALFORMED_PREFIX}{next(_numbers):032x}",
        raw,
    )
    return row_id


async def add_checkpoint(
    db: asyncpg.Connection,
    *,
    route: tuple[str, str] = ROUTE,
    last_event_id: str | None = "_3",
    newest_ago: timedelta | None = timedelta(minutes=5),
    answered_ago: timedelta | None = timedelta(seconds=10),
    paused_for: timedelta | None = None,
    pause_reason: str | None = None,
) -> None:
    """A route's checkpoint as a receiver left it."""
    country, tenant = route
    path = f"/api/events/v1/{country}/external/{tenant}/receive"
    await db.execute(
        """
        INSERT INTO inbox_checkpoint (country, tenant, next_path, last_event_id,
                                      newest_event_at, answered_at, paused_until, pause_reason)
        VALUES ($1, $2, $3, $4, now() - $5::interval, now() - $6::interval,
                now() + $7::interval, $8)""",
        country,
        tenant,
        None if last_event_id is None else f"{path}?lastEventId={last_event_id}",
        last_event_id,
        newest_ago,
        answered_ago,
        paused_for,
        pause_reason,
    )


async def statuses(db: asyncpg.Connection) -> dict[int, tuple[str, int]]:
    """Every event's (status, attempts), by id."""
    rows = await db.fetch("SELECT id, status, attempts FROM inbox ORDER BY id")
    return {row["id"]: (row["status"], row["attempts"]) for row in rows}
