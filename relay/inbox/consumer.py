"""Consuming the inbox from Python: each event once, in the transaction of your own change.

::

    from relay.inbox import consume

    async for event in consume(pool, event_types=["case_created"]):
        async with event as connection:          # a transaction holding the event's row
            await connection.execute("INSERT INTO claim_case ...", event.payload["case"]["uuid"])
        # left without an error: the change and "processed" commit together;
        # with an error: both roll back, the attempt is recorded, the event is retried later
        # and ends ``failed`` after ``max_attempts``.

Each event is claimed with ``FOR UPDATE SKIP LOCKED`` inside a transaction on a connection
from ``pool``: any number of consumers, in any number of processes, share the inbox and never
get the same event at the same time; if a consumer dies, its transaction rolls back and the
event is taken by the next. When nothing is due, ``consume`` waits for the inbox's
notification (or ``poll_interval``). It needs asyncpg only; applications that consume in Java
or .NET run the same SQL (docs/inbox.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import random
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from types import TracebackType
from typing import Any

import asyncpg
from asyncpg.pool import PoolConnectionProxy
from asyncpg.transaction import Transaction

from relay.inbox.queries import NOTIFY_CHANNEL, InboxQueries
from relay.names import schema_in_use

MAX_ERROR = 1000
RELEASE_TIMEOUT = 10.0  # seconds a rollback may take before the connection is closed instead


@dataclass(slots=True)
class InboxEvent:
    """One received event, claimed for this consumer until its ``async with`` block ends."""

    id: int
    country: str
    tenant: str
    event_id: str
    event_type: str | None
    event_timestamp: str | None
    payload_json: str | None  # the event's attributes, as Scalepoint sent them
    received_at: datetime
    attempts: int  # earlier attempts that failed
    connection: PoolConnectionProxy = field(repr=False)
    _transaction: Transaction = field(repr=False)
    _queries: InboxQueries = field(repr=False)
    _policy: tuple[int, float] = field(repr=False)  # max attempts, base retry delay
    _pool: asyncpg.Pool = field(repr=False)
    trace_context: str | None = field(default=None, repr=False)  # the page's span, as JSON
    _open: bool = field(default=True, repr=False)  # not yet committed or rolled back
    released: bool = False  # its connection went back to the pool
    _span: Any = field(default=None, repr=False)  # process span and its context token

    @property
    def route(self) -> str:
        return f"{self.country}/{self.tenant}"

    @property
    def payload(self) -> Any:
        """The attributes as Python values; numbers with a fraction as ``Decimal``, exactly."""
        return (
            None
            if self.payload_json is None
            else json.loads(self.payload_json, parse_float=Decimal)
        )

    async def __aenter__(self) -> PoolConnectionProxy:
        if "opentelemetry.trace" in sys.modules:  # the application traces: join its trace
            from relay.tracing import spans

            self._span = spans.processing(
                route=self.route,
                event_id=self.event_id,
                inbox_id=self.id,
                event_type=self.event_type,
                attempt=self.attempts + 1,
                trace_context=self.trace_context,
            )
        return self.connection

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        try:
            if error is None:
                await self.connection.execute(self._queries.processed, self.id)
                await self._transaction.commit()
                self._open = False
                return False
            await self._transaction.rollback()
            self._open = False
            if isinstance(error, Exception):
                # The consumer's own failure: recorded, retried later, and the loop goes on.
                await self._record_failure(error)
                return True
            return False  # cancellation and the like go through
        finally:
            # Whatever happened above (a cancellation in the middle of the commit included),
            # the event's connection goes back to the pool here, not when the generator is
            # closed: a loop left by an exception does not close its generator.
            await self.release()
            if self._span is not None:
                from relay.tracing import spans

                spans.processed(self._span, error)
                self._span = None

    async def release(self) -> None:
        """Hand the connection back to the pool, once; a transaction still open is rolled back
        (nothing is marked; the event is due again)."""
        if self.released:
            return
        self.released = True
        if self._open:
            await _hand_back(self._pool, self.connection, self._transaction)
        else:
            await self._pool.release(self.connection)

    async def _record_failure(self, error: Exception) -> None:
        max_attempts, base = self._policy
        delay = random.random() * base * 2 ** min(self.attempts, 20)
        text = f"{type(error).__name__}: {error}".replace("\x00", "")[:MAX_ERROR]
        await self.connection.execute(self._queries.failed, self.id, text, delay, max_attempts)


async def consume(
    pool: asyncpg.Pool,
    *,
    schema: str | None = None,
    event_types: Sequence[str] | None = None,
    routes: Sequence[str] | None = None,
    max_attempts: int = 5,
    retry_delay: float = 1.0,
    poll_interval: float = 5.0,
) -> AsyncIterator[InboxEvent]:
    """Yield due inbox events one at a time, each claimed in a transaction (see the module
    docstring); runs until the caller stops iterating.

    ``event_types`` / ``routes`` (``"dk/abcinsurance"``) choose events; a failed event is
    retried after a jittered, doubling delay from ``retry_delay`` seconds and is ``failed``
    for good after ``max_attempts``. ``schema``: relay's schema; by default ``RELAY_SCHEMA``,
    else ``public``.
    """
    queries = InboxQueries(schema_in_use(schema))
    types = list(event_types) if event_types is not None else None
    chosen = list(routes) if routes is not None else None
    claim = functools.partial(_claim, pool, queries, types, chosen, (max_attempts, retry_delay))
    while True:
        event = await claim() or await _wait(pool, poll_interval, claim)
        if event is None:
            continue
        try:
            yield event
        finally:
            # Iterated past without ``async with``: rolled back, due again.
            await event.release()


async def _wait(
    pool: asyncpg.Pool,
    poll_interval: float,
    claim: Callable[[], Awaitable[InboxEvent | None]],
) -> InboxEvent | None:
    """Nothing was due: listen for the inbox's notification, claim once more (an event stored
    before the LISTEN took effect is not missed), else wait for a notification or
    ``poll_interval``. The listening connection is held only while waiting, never while the
    caller holds an event."""
    wake = asyncio.Event()

    def notified(*_: object) -> None:
        wake.set()

    connection = await pool.acquire()
    try:
        await connection.add_listener(NOTIFY_CHANNEL, notified)
        try:
            event = await claim()
            if event is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), poll_interval)
            return event
        finally:
            with contextlib.suppress(Exception):
                await connection.remove_listener(NOTIFY_CHANNEL, notified)
    finally:
        await pool.release(connection)


async def _claim(
    pool: asyncpg.Pool,
    queries: InboxQueries,
    types: list[str] | None,
    routes: list[str] | None,
    policy: tuple[int, float],
) -> InboxEvent | None:
    connection = await pool.acquire()
    transaction = connection.transaction()
    try:
        await transaction.start()
        row = await connection.fetchrow(queries.claim, types, routes)
        if row is None:
            await transaction.rollback()
    except BaseException:  # a cancellation above included: the connection goes back
        await _hand_back(pool, connection, transaction)
        raise
    if row is None:
        await pool.release(connection)
        return None
    return InboxEvent(
        id=row["id"],
        country=row["country"],
        tenant=row["tenant"],
        event_id=row["event_id"],
        event_type=row["event_type"],
        event_timestamp=row["event_timestamp"],
        payload_json=row["payload"],
        received_at=row["received_at"],
        attempts=row["attempts"],
        connection=connection,
        trace_context=row["trace_context"],
        _transaction=transaction,
        _queries=queries,
        _policy=policy,
        _pool=pool,
    )


async def _hand_back(
    pool: asyncpg.Pool, connection: PoolConnectionProxy, transaction: Transaction
) -> None:
    """Roll back and hand the connection back to the pool, whatever state it was left in.

    A connection that cannot roll back (a statement was cancelled under it, or the transaction
    never started) is closed, which rolls back too: it must reach the pool either way, or
    closing the pool would wait for it for ever.
    """
    try:
        async with asyncio.timeout(RELEASE_TIMEOUT):
            await transaction.rollback()
    except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError):
        connection.terminate()
    finally:
        await pool.release(connection)
