"""Receiving one route's events into the inbox: one poller per route across all replicas.

Each ``RouteReceiver`` opens a connection of its own and tries to take the route's advisory
lock on it (``INBOX_LOCK_CLASS``). The replica that holds it is the route's only poller; the
others try again every ``TAKEOVER_INTERVAL`` and one of them takes over within seconds when the
holder dies (its lock goes with its connection). The poller:

1. reads the route's checkpoint (where to ask next);
2. long polls that position;
3. has the page read by PostgreSQL and, in one statement on the locked connection, stores its
   events (each once per route) and moves the checkpoint to ``links.next``, only if the
   checkpoint still says where the page was asked for;
4. asks again at once.

A crash between 2 and 3 asks the same position again and stores nothing twice; nothing is
skipped, since the checkpoint moves only with the page it came with. A lost connection (and
with it the lock) stops the poll in flight. Errors back off with jitter; a 403 or 404, a
refused client or a ``links.next`` to another origin pause the route (written on its
checkpoint, shown by ``relay inbox status``) without making the process unready.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import TYPE_CHECKING

import asyncpg
import structlog

from relay.database import CONNECTION_ERRORS, DATABASE_ERRORS, KEEPALIVES, describe_database_error
from relay.eventapi.masks import storable
from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.eventapi.receive import Page, Receiver, receive_path
from relay.inbox.queries import InboxQueries
from relay.metrics import Metrics
from relay.routes import route_name

if TYPE_CHECKING:  # loaded only when tracing is on
    from relay.tracing.spans import Tracing

log = structlog.get_logger("relay.inbox.receiver")

# How often a replica that is not a route's poller tries to become it.
TAKEOVER_INTERVAL = 2.0
# An empty page answered faster than this was not held by the server: wait the rest before
# asking again, rather than asking in a loop.
MIN_EMPTY_POLL = 1.0
BACKOFF_BASE = 1.0
BACKOFF_CAP = 2.0


@dataclass(frozen=True, slots=True)
class ReceiveConfig:
    start_from: str | None  # RELAY_RECEIVE_FROM: the event after which a new route starts
    configuration_pause: timedelta


def event_time(text: str | None) -> datetime | None:
    """An event's ISO 8601 timestamp, in the forms Scalepoint writes them; None if not one."""
    if not text:
        return None
    value = text.strip().replace("Z", "+00:00")
    if len(value) > 5 and value[-5] in "+-" and value[-4:].isdigit():
        value = f"{value[:-2]}:{value[-2:]}"  # +0200 -> +02:00
    head, dot, rest = value.partition(".")
    if dot:  # 2017-07-25T10:31:28.2519514+00:00: Python reads at most 6 fractional digits
        digits = len(rest) - len(rest.lstrip("0123456789"))
        value = f"{head}.{rest[: min(digits, 6)]}{rest[digits:]}"
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


class RouteReceiver:
    """Polls one route while this replica holds its lock; see the module docstring."""

    def __init__(
        self,
        country: str,
        tenant: str,
        *,
        dsn: str,
        schema: str,
        client: Receiver,
        metrics: Metrics,
        config: ReceiveConfig,
        rng: random.Random | None = None,
        tracing: Tracing | None = None,
    ) -> None:
        self.country = country
        self.tenant = tenant
        self.route = route_name(country, tenant)
        self.dsn = dsn
        self.queries = InboxQueries(schema)
        self.client = client
        self.metrics = metrics
        self.config = config
        self.rng = rng or random.Random()
        self.polling = asyncio.Event()  # set while this replica is the route's poller
        self.failures = 0
        self.tracing = tracing
        self.asked_ns = 0  # when the poll in hand was asked (the start of its span)
        metrics.expect_receive_route(country, tenant)

    async def run(self) -> None:
        """Until cancelled: hold the route's lock and poll, or wait to take over."""
        attempt = 0
        while True:
            try:
                connection = await asyncpg.connect(
                    self.dsn,
                    timeout=10,
                    server_settings={"application_name": "relay receiver", **KEEPALIVES},
                )
            except DATABASE_ERRORS as error:
                attempt += 1
                log.warning(
                    "receive.connect_failed", route=self.route, error=describe_database_error(error)
                )
                await asyncio.sleep(self._backoff(attempt))
                continue
            attempt = 0
            try:
                await self._hold(connection)
            except CONNECTION_ERRORS as error:
                log.warning("receive.lost", route=self.route, error=describe_database_error(error))
            finally:
                self.polling.clear()
                self.metrics.show_polling(self.country, self.tenant, False)
                connection.terminate()

    async def _hold(self, connection: asyncpg.Connection) -> None:
        # No notification says a lock was freed: ask again every few seconds.
        while not await connection.fetchval(self.queries.lock_route, self.route):  # noqa: ASYNC110
            await asyncio.sleep(TAKEOVER_INTERVAL)
        await connection.execute(self.queries.ensure_checkpoint, self.country, self.tenant)
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        self.polling.set()
        self.metrics.show_polling(self.country, self.tenant, True)
        log.info("receive.polling", route=self.route)
        poll = asyncio.ensure_future(self._poll(connection))
        lost = asyncio.ensure_future(closed.wait())
        try:
            await asyncio.wait([poll, lost], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (poll, lost):
                task.cancel()
            await asyncio.gather(poll, lost, return_exceptions=True)
        if poll.done() and not poll.cancelled() and poll.exception() is not None:
            raise poll.exception()  # type: ignore[misc]

    async def _poll(self, connection: asyncpg.Connection) -> None:
        while True:
            checkpoint = await connection.fetchrow(
                self.queries.checkpoint, self.country, self.tenant
            )
            assert checkpoint is not None  # ensured when the lock was taken
            stored = checkpoint["next_path"]
            path = stored or receive_path(self.country, self.tenant, self.config.start_from)
            started, self.asked_ns = time.monotonic(), time.time_ns()
            answer = await self.client.fetch(path)
            if isinstance(answer, Page):
                delay = await self._store(connection, stored, path, answer)
                if delay is None:
                    delay = max(MIN_EMPTY_POLL - (time.monotonic() - started), 0.0)
            else:
                delay = await self._failed(connection, answer)
            if delay:
                await asyncio.sleep(delay)

    async def _store(
        self, connection: asyncpg.Connection, stored: str | None, path: str, page: Page
    ) -> float | None:
        """Store a page; return None when it was empty (a quick empty answer waits a little),
        0 to ask again at once, or how long to wait after a refusal."""
        try:
            text = page.body.decode("utf-8")
            shape = await connection.fetchrow(self.queries.inspect_page, text)
        except (UnicodeDecodeError, asyncpg.DataError):
            return await self._failed(
                connection, Outcome(OutcomeKind.TRANSIENT, "bad_response", error="not JSON")
            )
        assert shape is not None
        if shape["page_type"] != "object" or shape["data_type"] != "array":
            outcome = Outcome(
                OutcomeKind.TRANSIENT, "bad_response", error="the answer is not a page of events"
            )
            return await self._failed(connection, outcome)
        link = shape["next"]
        next_path = path if link is None else self.client.next_path(link, path)
        if next_path is None:
            outcome = Outcome(
                OutcomeKind.CONFIGURATION,
                "foreign_next_link",
                error="links.next leads away from RELAY_API_BASE_URL's origin: not followed",
            )
            return await self._failed(connection, outcome)
        tracing = self.tracing
        span = None
        if tracing is not None and shape["items"]:  # a span per page of events
            span = tracing.page(self.asked_ns, self.route, shape["items"])
        context = None if tracing is None or span is None else tracing.context_text(span)
        try:
            result = await self._write(connection, stored, next_path, text, shape, path, context)
        except BaseException as error:
            if tracing is not None and span is not None:
                tracing.stored(span, None, problem=type(error).__name__)
            if not isinstance(error, asyncpg.PostgresError) or isinstance(error, CONNECTION_ERRORS):
                raise
            # A page the database cannot store as it is: asked again after a backoff, and
            # logged; the checkpoint does not move past events it could not keep.
            outcome = Outcome(
                OutcomeKind.TRANSIENT, "unstorable_page", error=describe_database_error(error)
            )
            return await self._failed(connection, outcome, traced=span is not None)
        if tracing is not None and span is not None:
            tracing.stored(span, result["stored"], result["malformed"])
        self.failures = 0
        if not result["moved"]:
            # Someone moved the checkpoint meanwhile (relay inbox rewind): read it again.
            log.info("receive.checkpoint_moved", route=self.route)
            return 0.0
        self._count(result, shape["items"])
        return None if not shape["items"] else 0.0

    async def _write(
        self,
        connection: asyncpg.Connection,
        stored: str | None,
        next_path: str,
        text: str,
        shape: asyncpg.Record,
        path: str,
        trace_context: str | None,
    ) -> asyncpg.Record:
        result = await connection.fetchrow(
            self.queries.store_page,
            self.country,
            self.tenant,
            stored,
            next_path,
            text,
            shape["last_id"],
            event_time(shape["last_timestamp"]),
            path,
            trace_context,
        )
        assert result is not None
        return result

    def _count(self, result: asyncpg.Record, items: int) -> None:
        self.metrics.count_received(self.country, self.tenant, json.loads(result["types"] or "{}"))
        if result["malformed"]:
            self.metrics.count_malformed(self.country, self.tenant, result["malformed"])
            log.warning("receive.malformed", route=self.route, items=result["malformed"])
        if items:
            log.debug("receive.page", route=self.route, items=items, stored=result["stored"])

    async def _failed(
        self, connection: asyncpg.Connection, outcome: Outcome, *, traced: bool = False
    ) -> float:
        """What a failed poll costs: a pause of the route, or a backoff (and a span marked an
        error, unless the page's own span ``traced`` it)."""
        self.metrics.count_receive_error(self.country, self.tenant, outcome.error_class)
        if self.tracing is not None and not traced:
            self.tracing.receive_failed(
                self.asked_ns, self.route, outcome.error_class, outcome.http_status
            )
        if outcome.kind is OutcomeKind.CONFIGURATION:
            seconds = self.config.configuration_pause.total_seconds()
            reason = storable(f"{outcome.error_class}: {outcome.error or ''}", 500)
            await connection.execute(self.queries.pause, self.country, self.tenant, seconds, reason)
            log.warning(
                "receive.paused",
                route=self.route,
                outcome=outcome.error_class,
                http_status=outcome.http_status,
                seconds=seconds,
            )
            return seconds
        self.failures += 1
        if outcome.retry_after is not None:
            delay = outcome.retry_after.total_seconds()
        else:
            delay = self._backoff(self.failures)
        log.warning(
            "receive.failed",
            route=self.route,
            outcome=outcome.error_class,
            http_status=outcome.http_status,
            retry_in=round(delay, 3),
        )
        return delay

    def _backoff(self, attempt: int) -> float:
        """Full jitter, capped: replicas and routes failing together do not retry together."""
        return float(self.rng.random() * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** min(attempt - 1, 20)))


async def receive_routes(receivers: list[RouteReceiver]) -> None:
    """Run every route's receiver until cancelled (a task for the daemon to supervise)."""
    tasks = [asyncio.create_task(r.run(), name=f"receive {r.route}") for r in receivers]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks, return_exceptions=True)
