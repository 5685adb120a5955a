"""Writing outcomes: in batches, fenced per claim, row by row when one row's data breaks a batch.

Results wait a few milliseconds for company while requests are in flight, then go in one
statement (``Queries.record``). A result is written under the token of the claim this process
holds for its row now (a row claimed again by this process keeps one copy and the newer
token). If the database refuses a batch for what it holds (not a lost connection, which is
waited out), each row is written alone; a row refused alone is written once more with its
partner text replaced, and if even that fails it is left to its lease and logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import structlog

from relay.database import DatabaseCalls
from relay.errors import DatabaseRefused
from relay.logs import trace_fields
from relay.metrics import Metrics
from relay.outbox.leases import Holdings
from relay.outbox.store import ClaimedRow, Result, Store

if TYPE_CHECKING:  # loaded only when tracing is on
    from opentelemetry.trace import SpanContext

    from relay.tracing.spans import Tracing

log = structlog.get_logger("relay.outbox.recorder")

# Results wait at most this long for company before they are written, while requests are in
# flight; with nothing in flight they are written at once.
FLUSH_DELAY = 0.005


@dataclass(slots=True)
class Done:
    """A result waiting to be written, with what its log line needs."""

    row: ClaimedRow
    result: Result
    correlation_id: str | None
    route: str | None
    trace: SpanContext | None = None  # its delivery span, when tracing is on


class Recorder:
    def __init__(
        self,
        store: Store,
        holdings: Holdings,
        calls: DatabaseCalls,
        metrics: Metrics,
        *,
        batch: int,
        busy: Callable[[], int],
        on_written: Callable[[list[Done], set[int]], None],
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.holdings = holdings
        self.calls = calls
        self.metrics = metrics
        self.batch = batch
        self.busy = busy
        self.on_written = on_written
        self.tracing = tracing
        self.done: list[Done] = []
        self.has_done = asyncio.Event()
        self.enough_done = asyncio.Event()
        self.writing: asyncio.Future[None] | None = None

    def add(self, item: Done) -> None:
        self.holdings.resulted(item.row.id)
        self.done.append(item)
        self.has_done.set()
        if len(self.done) >= self.batch or not self.busy():
            self.enough_done.set()

    def nudge(self) -> None:
        """Nothing is in flight any more: stop waiting for company."""
        self.enough_done.set()

    async def run(self) -> None:
        while True:
            await self.has_done.wait()
            if self.busy() and len(self.done) < self.batch:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_DELAY):
                        await self.enough_done.wait()
            # Shielded: a write under way must land even when shutdown cancels this task, or
            # the rows it covers would be given back after the partner accepted them.
            self.writing = asyncio.ensure_future(self.flush())
            await asyncio.shield(self.writing)

    async def flush_all(self) -> None:
        if self.writing is not None:
            await asyncio.gather(self.writing, return_exceptions=True)
        while self.done:
            await self.flush()

    async def flush(self) -> None:
        batch, self.done = self.done, []
        self.has_done.clear()
        self.enough_done.clear()
        if not batch:
            return

        def current() -> list[Result]:
            # Taken at each try: a write waiting out a lost database is retried under the
            # tokens held then, as this process may have claimed the rows again meanwhile.
            return [self._current(item.result) for item in batch]

        started = time.time_ns()
        try:
            written = await self.calls.run("record", lambda: self.store.record(current()))
        except DatabaseRefused as error:
            log.error("outbox.batch_refused", rows=len(batch), error=str(error))
            written = await self._one_by_one(current())
        for item in batch:
            self.holdings.let_go(item.row.id)
        if self.tracing is not None:
            traces = [item.trace for item in batch]
            self.tracing.recorded(started, len(batch), len(written), traces)
        self.on_written(batch, written)

    def _current(self, result: Result) -> Result:
        token = self.holdings.token(result.id)
        if token is None or token == result.token:
            return result
        return dataclasses.replace(result, token=token)

    async def _one_by_one(self, results: list[Result]) -> set[int]:
        written: set[int] = set()
        for result in results:
            for attempt in (result, _plain(result)):
                try:
                    written |= await self._record_one(attempt)
                except DatabaseRefused as error:
                    log.error(
                        "outbox.result_refused",
                        outbox_id=result.id,
                        outcome=result.outcome,
                        error=str(error),
                    )
                    continue
                break
            else:
                # Left in flight: its lease runs out and a claim takes it again (a stop).
                self.metrics.db_errors.labels("record").inc()
        return written

    async def _record_one(self, result: Result) -> set[int]:
        return await self.calls.run("record", lambda: self.store.record([result]))


def _plain(result: Result) -> Result:
    """The result without partner text: what remains when the text itself is refused."""
    error = None if result.error is None else "(the answer's text could not be stored)"
    return dataclasses.replace(result, error=error)


def report(item: Done, route: str, metrics: Metrics, *, fenced: bool) -> bool:
    """The counters and the log line of a written result, but for a plain publish (counted
    per batch, logged nowhere: the delivery log holds it) and a row given back unsent (counted
    when it happened). True when the row is now dead."""
    row, result = item.row, item.result
    if not result.logged or (result.status == "published" and not fenced):
        return False
    bound = log.bind(
        outbox_id=row.id,
        event_type=row.event_type,
        correlation_id=item.correlation_id,
        route=item.route,
        attempt=result.attempts,
    )
    if item.trace is not None:  # the line names the attempt's span, though written after it
        bound = bound.bind(**trace_fields(item.trace))
    if fenced:
        metrics.fence_lost.inc()
        bound.warning("outbox.fence_lost", outcome=result.outcome)
        return False
    if result.status == "dead":
        metrics.count_dead(row.event_type, route, result.outcome)
        # The relay's own reasons are logged; the partner's words are not (an error body may
        # echo the payload): they are in the row and its delivery log.
        reason = result.error if result.outcome == "invalid_event" else None
        bound.warning(
            "publish.dead_lettered",
            outcome=result.outcome,
            http_status=result.http_status,
            reason=reason,
        )
        return True
    if result.attempts >= row.attempts:
        metrics.count_retried(row.event_type, route, result.outcome)
        bound.info(
            "publish.retry_scheduled",
            outcome=result.outcome,
            http_status=result.http_status,
            delay=result.delay,
        )
    else:
        bound.info("publish.deferred", outcome=result.outcome, delay=result.delay)
    return False
