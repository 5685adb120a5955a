"""The engine: claim -> publish -> record, with bounded concurrency.

Three kinds of task share one process:

* the **feeder** claims rows in batches sized to free capacity and queues them locally;
* ``concurrency`` **senders** each take a row, publish it and hand the result on;
* the **recorder** writes results in batches (one statement per batch) and wakes the feeder.

The feeder keeps up to ``prefetch`` rows (two rounds of ``concurrency``, at most a claim batch)
queued ahead of the senders so that a sender finishing never waits for a claim round trip;
those rows are leased like any other and are given back at once on shutdown. Pauses
(``relay_pause``) are shared with every other replica through the database: the claim query
skips paused routes, so a replica that has not seen a failure itself is held all the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol, TypeVar

import structlog

from relay.database import DATABASE_ERRORS
from relay.decide import Policy, Prepared, Unsendable, decide, prepare, unsendable_result
from relay.metrics import CIRCUIT_STATES, Metrics
from relay.outbox import ClaimedRow, Pause, Result, Store
from relay.publisher import Outcome, OutcomeKind
from relay.retry import RetryPolicy

log = structlog.get_logger("relay.worker")
T = TypeVar("T")

GLOBAL = "*"
# Results wait at most this long for company before they are written, while requests are in
# flight; with nothing in flight they are written at once.
FLUSH_DELAY = 0.005
# At shutdown, how long to wait for a claim in progress (it may be retrying a lost database).
GIVE_UP_CLAIM_AFTER = 5.0


class Sender(Protocol):
    async def publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    concurrency: int
    claim_batch_size: int
    lease: timedelta
    poll_interval: timedelta
    default_country: str | None
    default_tenant: str | None
    dead_blocks_key: bool
    policy: Policy
    circuit_threshold: int
    circuit_pause: timedelta
    circuit_pause_cap: timedelta
    shutdown_grace: timedelta

    @property
    def prefetch(self) -> int:
        """Rows queued ahead of the senders. Two rounds' worth: at low partner latency a claim
        crossing a busy event loop otherwise leaves senders idle (+10 % events/s at 0 ms)."""
        return min(2 * self.concurrency, self.claim_batch_size)

    @property
    def min_claim(self) -> int:
        """Claim only when this many rows fit, unless a sender is idle (keeps claims batched)."""
        return max(1, min(self.claim_batch_size, self.concurrency // 4))


@dataclass(slots=True)
class Done:
    """A result waiting to be written, with what its log line needs."""

    row: ClaimedRow
    result: Result
    correlation_id: str | None
    tenant: str | None


@dataclass(slots=True)
class PauseView:
    """The pauses as last read from the database, aged locally between reads."""

    pauses: list[Pause] = field(default_factory=list)
    read_at: float = float("-inf")

    def remaining(self, pause: Pause) -> float:
        return pause.remaining - (time.monotonic() - self.read_at)

    def global_pause(self) -> Pause | None:
        return next((p for p in self.pauses if p.route == GLOBAL), None)

    def routes(self) -> set[str]:
        return {p.route for p in self.pauses}

    def configuration_error(self) -> str | None:
        for pause in self.pauses:
            if pause.kind == "configuration" and self.remaining(pause) > 0:
                return f"{pause.route}: {pause.reason}"
        return None


class Worker:
    """One relay process's engine. ``run`` returns when stopped (or drained)."""

    def __init__(
        self, store: Store, sender: Sender, config: EngineConfig, metrics: Metrics
    ) -> None:
        self.store = store
        self.sender = sender
        self.config = config
        self.metrics = metrics
        self.wake = asyncio.Event()
        self.queue: deque[ClaimedRow] = deque()
        self.queued = asyncio.Condition()
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # The feeder sleeps on `wake`; senders set it only when a claim's worth of slots is
        # free and more rows are known to wait (`more`), not once per event.
        self.more = True
        self.refill_at = config.concurrency + config.prefetch - config.min_claim
        self.done: list[Done] = []
        # The recorder sleeps on `has_done` (the first result) and then briefly on
        # `enough_done` (a batch's worth, or nothing left in flight).
        self.has_done = asyncio.Event()
        self.enough_done = asyncio.Event()
        self.held: set[int] = set()
        self.view = PauseView()
        self.failures = 0
        self.circuit = "closed"
        self.database_ok = True
        self.drained = asyncio.Event()
        self.writing: asyncio.Future[None] | None = None
        self.claim_failed = False
        self.claiming: asyncio.Future[list[ClaimedRow]] | None = None
        self._backoff = RetryPolicy(timedelta(milliseconds=100), timedelta(seconds=30))

    # Public state ---------------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Why this process should not receive traffic, or None when it is ready."""
        if not self.database_ok:
            return "database unreachable"
        if self.circuit == "open":
            return "circuit open: the EventApi is failing"
        return self.view.configuration_error()

    # Running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> None:
        """Work until ``stop`` is set (or, with ``drain``, until nothing is left to send)."""
        senders = [
            asyncio.create_task(self._sender(), name=f"sender-{n}")
            for n in range(self.config.concurrency)
        ]
        recorder = asyncio.create_task(self._recorder(), name="recorder")
        feeder = asyncio.create_task(self._feeder(drain), name="feeder")
        tasks = [feeder, recorder, *senders]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait(
                [*tasks, stopper, asyncio.create_task(self.drained.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            for task in done:
                if task in tasks and task.exception() is not None:
                    raise RuntimeError(f"task {task.get_name()} died") from task.exception()
        finally:
            stopper.cancel()
            await self._shutdown(feeder, recorder, senders)

    async def _shutdown(
        self,
        feeder: asyncio.Task[None],
        recorder: asyncio.Task[None],
        senders: list[asyncio.Task[None]],
    ) -> None:
        """Stop claiming, give back queued rows, let requests in flight finish within the
        grace period, write their outcomes, and give back whatever is still held."""
        feeder.cancel()
        if self.claiming is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self.claiming), GIVE_UP_CLAIM_AFTER)
        unsent = [row.id for row in self.queue]
        self.queue.clear()
        await self._db_at_exit("release", lambda: self.store.release(unsent))
        self.held.difference_update(unsent)
        if self.busy:
            log.info("worker.draining", in_flight=self.busy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), self.config.shutdown_grace.total_seconds())
        for task in senders:
            task.cancel()
        recorder.cancel()
        await asyncio.gather(feeder, recorder, *senders, return_exceptions=True)
        # A write the recorder had started must land before leases are given back, or the
        # release would beat it and the fence would turn a published row into a resend.
        if self.writing is not None:
            await asyncio.gather(self.writing, return_exceptions=True)
        await asyncio.shield(self._flush_all())
        if self.held:
            held = sorted(self.held)
            await self._db_at_exit("release", lambda: self.store.release(held))
        log.info("worker.stopped", released=len(self.held) + len(unsent))

    # Feeder ----------------------------------------------------------------------------------

    def _claim_size(self) -> int:
        """How many rows to claim now: up to ``prefetch`` ahead of the senders."""
        outstanding = len(self.queue) + self.busy
        global_pause = self.view.global_pause()
        if global_pause is not None:
            if self.view.remaining(global_pause) > 0:
                return 0
            # The pause has run out but nobody has succeeded since: probe with one request.
            return 1 if outstanding == 0 else 0
        free = self.config.concurrency + self.config.prefetch - outstanding
        idle_sender = outstanding < self.config.concurrency
        if free <= 0 or (free < self.config.min_claim and not idle_sender):
            return 0
        return min(free, self.config.claim_batch_size)

    async def _feeder(self, drain: bool) -> None:
        while True:
            if time.monotonic() - self.view.read_at >= self.config.poll_interval.total_seconds():
                await self._refresh_pauses()
            size = self._claim_size() if self.more else 0
            if size:
                rows = await self._claim(size)
                self.more = len(rows) == size
                if rows:
                    continue
            timeout = self.config.poll_interval.total_seconds()
            if drain and not self.more and not self.queue and not self.busy and not self.done:
                remaining, next_in = await self._unfinished()
                if remaining == 0:
                    self.drained.set()
                    return
                timeout = min(timeout, max(next_in, 0.01))
            await self._wait_for_work(timeout)

    async def _wait_for_work(self, wait_seconds: float) -> None:
        """Wait for a wake-up (a NOTIFY, a written result, free slots) or the poll timeout;
        after either, new work may exist."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self.wake.wait()
        self.wake.clear()
        self.more = True

    async def _claim(self, size: int) -> list[ClaimedRow]:
        # Shielded: a claim the database has committed must reach `held` even when shutdown
        # cancels the feeder mid-claim, or its rows would wait out their lease.
        self.claiming = asyncio.ensure_future(self._claim_and_hold(size))
        return await asyncio.shield(self.claiming)

    async def _claim_and_hold(self, size: int) -> list[ClaimedRow]:
        rows = await self._db("claim", lambda: self._claim_once(size))
        self.metrics.claim_batch_size.observe(len(rows))
        if rows:
            self.held.update(row.id for row in rows)
            self.queue.extend(rows)
            async with self.queued:
                self.queued.notify(len(rows))
        return rows

    async def _claim_once(self, size: int) -> list[ClaimedRow]:
        if self.claim_failed:
            # The failed claim may have committed: give back what we hold without knowing it.
            await self.store.release_orphans(sorted(self.held))
            self.claim_failed = False
        self.claim_failed = True
        rows = await self.store.claim(
            size,
            lease_seconds=self.config.lease.total_seconds(),
            default_country=self.config.default_country,
            default_tenant=self.config.default_tenant,
            dead_blocks_key=self.config.dead_blocks_key,
        )
        self.claim_failed = False
        return rows

    async def _unfinished(self) -> tuple[int, float]:
        return await self._db(
            "unfinished", lambda: self.store.unfinished(self.config.dead_blocks_key)
        )

    async def _refresh_pauses(self) -> None:
        pauses = await self._db("pauses", self.store.pauses)
        self.view = PauseView(pauses, time.monotonic())
        active = {p.kind for p in pauses if p.remaining > 0}
        for kind in ("retry_after", "circuit", "configuration"):
            self.metrics.paused.labels(kind).set(1 if kind in active else 0)
        global_pause = self.view.global_pause()
        if global_pause is None and self.circuit != "closed":
            self._set_circuit("closed")
        elif global_pause is not None and global_pause.kind == "circuit":
            self._set_circuit("open" if global_pause.remaining > 0 else "half_open")

    # Senders ---------------------------------------------------------------------------------

    async def _sender(self) -> None:
        while True:
            async with self.queued:
                await self.queued.wait_for(lambda: bool(self.queue))
                row = self.queue.popleft()
            self.busy += 1
            self.idle.clear()
            try:
                self._finish(row, *await self._process(row))
            finally:
                self.busy -= 1
                if self.busy == 0:
                    self.idle.set()
                    self.enough_done.set()
                if self.more and len(self.queue) + self.busy <= self.refill_at:
                    self.wake.set()

    async def _process(self, row: ClaimedRow) -> tuple[Result, Prepared | Unsendable]:
        cfg = self.config
        prepared = prepare(row, cfg.default_country, cfg.default_tenant)
        now = datetime.now(UTC)
        if isinstance(prepared, Unsendable):
            return unsendable_result(row, prepared.reason, now), prepared
        probing = self.view.global_pause() is not None
        outcome = await self.sender.publish(
            row.event_type, prepared.body, prepared.country, prepared.tenant
        )
        result = decide(
            row, outcome, now, cfg.policy, counts=not probing and self.circuit == "closed"
        )
        await self._react(outcome, prepared, probing)
        return result, prepared

    def _finish(self, row: ClaimedRow, result: Result, prepared: Prepared | Unsendable) -> None:
        tenant = (
            prepared.tenant
            if isinstance(prepared, Prepared)
            else row.tenant or self.config.default_tenant
        )
        self.done.append(Done(row, result, prepared.correlation_id, tenant))
        self.has_done.set()
        if len(self.done) >= self.config.min_claim:
            self.enough_done.set()

    # Outage protection ------------------------------------------------------------------------

    def _set_circuit(self, state: str) -> None:
        if state != self.circuit:
            log.warning("circuit.changed", state=state, previous=self.circuit)
            self.circuit = state
            self.metrics.circuit_state.set(CIRCUIT_STATES[state])

    async def _react(self, outcome: Outcome, prepared: Prepared, probing: bool) -> None:
        """Update the circuit and the shared pauses after one outcome."""
        if outcome.kind is OutcomeKind.PUBLISHED:
            self.failures = 0
            stale = {GLOBAL, prepared.route} & self.view.routes()
            if stale:
                await self._pause_change(lambda: self.store.clear_pauses(sorted(stale)))
                log.info("pause.cleared", routes=sorted(stale))
            return
        if outcome.kind is OutcomeKind.CONFIGURATION:
            route = GLOBAL if outcome.error_class == "token_rejected" else prepared.route
            await self._pause(
                route, self.config.policy.configuration_pause, "configuration", outcome
            )
            return
        if outcome.kind is not OutcomeKind.TRANSIENT:
            return
        self.failures += 1
        if outcome.retry_after is not None and outcome.http_status in (429, 503):
            await self._pause(prepared.route, outcome.retry_after, "retry_after", outcome)
        if probing or self.failures >= self.config.circuit_threshold:
            await self._open_circuit(outcome)

    async def _open_circuit(self, outcome: Outcome) -> None:
        previous = self.view.global_pause()
        duration = self.config.circuit_pause
        if previous is not None and previous.kind == "circuit":
            duration = timedelta(seconds=previous.duration) * 2
        duration = min(duration, self.config.circuit_pause_cap)
        await self._pause(GLOBAL, duration, "circuit", outcome)
        self._set_circuit("open")

    async def _pause(self, route: str, duration: timedelta, kind: str, outcome: Outcome) -> None:
        reason = f"{outcome.error_class}: {outcome.error or ''}".strip(": ")
        await self._pause_change(
            lambda: self.store.set_pause(route, duration.total_seconds(), kind, reason)
        )
        log.warning(
            "pause.set", route=route, kind=kind, seconds=duration.total_seconds(), reason=reason
        )

    async def _pause_change(self, change: Callable[[], Awaitable[None]]) -> None:
        await self._db("pause", change)
        await self._refresh_pauses()

    # Recorder --------------------------------------------------------------------------------

    async def _recorder(self) -> None:
        while True:
            await self.has_done.wait()
            if self.busy and len(self.done) < self.config.min_claim:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(FLUSH_DELAY):
                        await self.enough_done.wait()
            self.writing = asyncio.ensure_future(self._flush())
            await asyncio.shield(self.writing)

    async def _flush_all(self) -> None:
        while self.done:
            await self._flush()

    async def _flush(self) -> None:
        batch, self.done = self.done, []
        self.has_done.clear()
        self.enough_done.clear()
        if not batch:
            return
        results = [d.result for d in batch]
        written = await self._db("record", lambda: self.store.record(results))
        for item in batch:
            self.held.discard(item.row.id)
            self._report(item, fenced=item.row.id not in written)
        # A row written may unblock the next row of its key, or a retry due at once.
        self.wake.set()
        # A retry due before the next poll is woken for, so short backoffs stay short.
        due = [d.result.delay for d in batch if d.result.status == "pending" and d.result.delay]
        if due and min(due) < self.config.poll_interval.total_seconds():
            asyncio.get_running_loop().call_later(min(due), self.wake.set)

    def _report(self, item: Done, *, fenced: bool) -> None:
        row, result = item.row, item.result
        if result.status == "published" and not fenced:
            # The common case logs nothing: the delivery log holds the row's history, and a
            # line per event would cost more CPU than the rest of its bookkeeping.
            self.metrics.published.labels(row.event_type).inc()
            return
        bound = log.bind(
            outbox_id=row.id,
            event_type=row.event_type,
            correlation_id=item.correlation_id,
            tenant=item.tenant,
            attempt=result.attempts,
        )
        if fenced:
            self.metrics.fence_lost.inc()
            bound.warning("outbox.fence_lost", outcome=result.outcome)
        elif result.status == "dead":
            self.metrics.dead.labels(row.event_type, result.outcome).inc()
            bound.warning(
                "publish.dead_lettered",
                outcome=result.outcome,
                http_status=result.http_status,
                error=result.error,
            )
        elif result.attempts > row.attempts:
            self.metrics.retried.labels(row.event_type, result.outcome).inc()
            bound.info(
                "publish.retry_scheduled",
                outcome=result.outcome,
                http_status=result.http_status,
                delay=result.delay,
            )
        else:
            bound.info("publish.deferred", outcome=result.outcome, delay=result.delay)

    # Database calls ----------------------------------------------------------------------------

    async def _db(self, operation: str, make: Callable[[], Awaitable[T]]) -> T:
        """Run one database operation, retrying with backoff while the database is away."""
        attempt = 0
        while True:
            try:
                value = await make()
            except DATABASE_ERRORS as error:
                attempt += 1
                self._database_failed(operation, error)
                await asyncio.sleep(self._backoff.delay(attempt).total_seconds())
                continue
            if not self.database_ok:
                log.info("database.recovered", operation=operation)
                self.database_ok = True
            return value

    async def _db_at_exit(self, operation: str, make: Callable[[], Awaitable[None]]) -> None:
        """At shutdown, try a few times and then leave it to the leases."""
        for attempt in range(1, 4):
            try:
                await make()
            except DATABASE_ERRORS as error:
                self._database_failed(operation, error)
                await asyncio.sleep(self._backoff.delay(attempt).total_seconds())
            else:
                return
        log.error("database.gave_up", operation=operation, fallback="leases expire")

    def _database_failed(self, operation: str, error: BaseException) -> None:
        self.metrics.db_errors.labels(operation).inc()
        if self.database_ok:
            log.error("database.unavailable", operation=operation, error=str(error))
        self.database_ok = False
