"""The engine: claim -> send -> record, with bounded concurrency.

Each part owns one concern:

* the **feeder** (here) claims rows sized to free capacity, only while this process holds its
  liveness lock (``liveness``) and the gate allows, and queues them;
* ``concurrency`` **senders** (here) each take a queued row, check it (``decide``), ask the
  gate (``gate``: circuit, shared pauses, route ramps), check its lease, publish, and turn the
  outcome into the row's next state;
* the **recorder** (``recorder``) writes results in batches, fenced per claim;
* the **lease keeper** (``leases``) extends held leases and rescues rows of dead relays;
* the **parker** (``parking``) keeps rows that cannot move out of the claim's way;
* the **pauses** (``pauses``) read and write the pauses shared by every replica.

(Module names are those of this package, ``relay.outbox``; ``engine`` holds the engine's
configuration and what a ``--drain`` run reports.)

Rows queued ahead of the senders (the prefetch, two rounds of ``concurrency``) are held under
lease like any other; they are given back unsent, without using an attempt, whenever they must
not go: a global pause, a lost liveness connection, a lease too short for the request, or
shutdown.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import Counter, defaultdict, deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING

import structlog

from relay.database import DatabaseCalls
from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.metrics import Metrics
from relay.outbox import traces
from relay.outbox.decide import Prepared, Unsendable, decide, give_back, prepare
from relay.outbox.decide import unsendable_result as dead_unsent
from relay.outbox.engine import (
    DRAIN_HORIZON,
    ROUTE_IN_LOGS,
    DrainReport,
    EngineConfig,
    Sender,
)
from relay.outbox.gate import Gate, Verdict
from relay.outbox.leases import Holdings, LeaseKeeper
from relay.outbox.liveness import Liveness
from relay.outbox.parking import Parker
from relay.outbox.pauses import Pauses
from relay.outbox.recorder import Done, Recorder, report
from relay.outbox.store import ClaimedRow, Left, Store

if TYPE_CHECKING:  # loaded only when tracing is on
    from relay.tracing.spans import Tracing

log = structlog.get_logger("relay.outbox.worker")

# At shutdown, how long to wait for a claim in progress (it may be retrying a lost database).
GIVE_UP_CLAIM_AFTER = 5.0
# After the grace period, how long shutdown may spend writing results and giving rows back.
EXIT_MARGIN = 5.0
# --drain: the first wait when rows exist but none could be claimed (a producer transaction
# holds their key, say); it doubles up to the poll interval.
DRAIN_BACKOFF = 0.05


class Worker:
    """One relay process's engine. ``run`` returns when stopped (or drained)."""

    def __init__(
        self,
        store: Store,
        sender: Sender,
        config: EngineConfig,
        metrics: Metrics,
        liveness: Liveness,
        clock: Callable[[], float] = time.monotonic,
        tracing: Tracing | None = None,
    ) -> None:
        self.store = store
        self.tracing = tracing
        self.sender = sender
        self.config = config
        self.metrics = metrics
        self.liveness = liveness
        self.clock = clock
        self.send_budget = config.send_budget  # asked for every row: computed once
        self.wake = liveness.wake
        liveness.on_lost = self._liveness_lost
        self.calls = DatabaseCalls(lambda operation: metrics.db_errors.labels(operation).inc())
        self.holdings = Holdings(config.lease.total_seconds(), clock)
        self.gate = Gate(
            config.concurrency,
            config.circuit_threshold,
            config.circuit_pause.total_seconds(),
            config.circuit_pause_cap.total_seconds(),
            demand=self._demand,
        )
        self.recorder = Recorder(
            store,
            self.holdings,
            self.calls,
            metrics,
            batch=config.min_claim,
            busy=lambda: self.busy,
            on_written=self._written,
            tracing=tracing,
        )
        self.keeper = LeaseKeeper(
            store,
            self.holdings,
            self.calls,
            metrics,
            on_lost=self._leases_lost,
            on_rescued=self.wake.set,
            incarnation=lambda: liveness.incarnation,
        )
        self.parker = Parker(store, self.calls, dead_blocks_key=config.dead_blocks_key)
        self.pauses = Pauses(
            store,
            self.calls,
            self.gate,
            self.parker,
            metrics,
            poll_interval=config.poll_interval.total_seconds(),
            configuration_pause=config.policy.configuration_pause,
            on_global_hold=lambda: self._give_back_queued("paused"),
            on_change=self.wake.set,
            clock=clock,
        )
        self.queue: deque[ClaimedRow] = deque()
        self.queued_by_route: Counter[str] = Counter()  # the queue's rows, by route
        self.queued = asyncio.Condition()
        self.waiting: defaultdict[str, deque[ClaimedRow]] = defaultdict(deque)
        self.busy = 0
        self.idle = asyncio.Event()
        self.idle.set()
        # The feeder sleeps on `wake`; senders set it only when a claim's worth of slots is
        # free and more rows are known to wait (`more`), not once per event.
        self.more = True
        self.refill_at = config.concurrency + config.prefetch - config.min_claim
        self.claiming: asyncio.Future[list[ClaimedRow]] | None = None
        self.claim_failed = False
        self.claims = 0
        self.key_cursor = ""  # the ordering key after which the next claim looks for heads
        self.published = 0
        self.dead = 0
        self.left: list[Left] = []  # --drain: what is still to send, as last read
        self.running = asyncio.Event()  # set once the engine claims (liveness lock held)
        self.stuck = False  # the database did not let shutdown finish in time

    # Public state ---------------------------------------------------------------------------

    def not_ready_reason(self) -> str | None:
        """Why this process cannot deliver now, or None when it can.

        A route's trouble (its circuit open, its pause) is not a reason: the process delivers
        every other route.
        """
        now = self.clock()
        if self.calls.problem is not None:
            return self.calls.problem
        if not self.liveness.alive.is_set():
            return self.liveness.problem or "liveness connection lost"
        return self.gate.configuration_error(now)

    # Running ---------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, *, drain: bool = False) -> DrainReport | None:
        """Work until ``stop`` is set (or, with ``drain``, until nothing is left to send)."""
        alive = asyncio.ensure_future(self.liveness.alive.wait())
        stopped = asyncio.ensure_future(stop.wait())
        await asyncio.wait([alive, stopped], return_when=asyncio.FIRST_COMPLETED)
        alive.cancel()
        stopped.cancel()
        if stop.is_set():
            return None
        await self.keeper.rescue()  # a predecessor's rows, at once rather than in a second
        await self.pauses.refresh()
        self.running.set()
        senders = [
            asyncio.create_task(self._sender(), name=f"sender-{n}")
            for n in range(self.config.concurrency)
        ]
        parts = [
            asyncio.create_task(self.recorder.run(), name="recorder"),
            asyncio.create_task(self.keeper.run(), name="lease-keeper"),
            asyncio.create_task(self.parker.run(), name="parker"),
        ]
        feeder = asyncio.create_task(self._feeder(drain), name="feeder")
        tasks = [feeder, *parts, *senders]
        stopper = asyncio.create_task(stop.wait(), name="stop")
        try:
            done, _ = await asyncio.wait([*tasks, stopper], return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if task in tasks and not task.cancelled() and task.exception() is not None:
                    raise RuntimeError(f"task {task.get_name()} died") from task.exception()
        finally:
            stopper.cancel()
            await self._shutdown(feeder, parts, senders)
        if not drain or not feeder.done() or feeder.cancelled():
            return None
        blocked = sum(group.rows for group in self.left if group.verdict == "behind_dead")
        left = tuple(group for group in self.left if group.verdict in ("refused", "later"))
        return DrainReport(self.published, self.dead, blocked, left)

    async def _shutdown(
        self,
        feeder: asyncio.Task[None],
        parts: list[asyncio.Task[None]],
        senders: list[asyncio.Task[None]],
    ) -> None:
        """Stop claiming, give back queued rows, let requests in flight finish within the
        grace period, write their outcomes, and give back whatever is still held. Bounded:
        whatever the database does, this returns within the grace period and EXIT_MARGIN."""
        started = self.clock()
        grace = self.config.shutdown_grace.total_seconds()
        deadline = started + grace + EXIT_MARGIN
        feeder.cancel()
        if self.claiming is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self.claiming), GIVE_UP_CLAIM_AFTER)
            # Still waiting for the database: stop asking. If it committed, its rows come
            # back through other relays' rescue, or this relay's next start.
            self.claiming.cancel()
        self._give_back_queued("shutdown")
        if self.busy:
            log.info("worker.draining", in_flight=self.busy)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.idle.wait(), max(started + grace - self.clock(), 0))
        for task in senders:
            task.cancel()
        await asyncio.gather(feeder, *senders, return_exceptions=True)
        await self._at_exit(deadline, self._write_and_release)
        for task in parts:
            task.cancel()
        await asyncio.gather(*parts, return_exceptions=True)
        log.info("worker.stopped", left_held=len(self.holdings))

    async def _write_and_release(self) -> None:
        # Every result lands before any lease is given back, or a give-back could beat a
        # publish and have it sent again. Then what is still held (rows a cancelled sender had
        # in hand) goes back unsent.
        await self.recorder.flush_all()
        now = datetime.now(UTC)
        for held in list(self.holdings.rows.values()):
            if not held.resulted:
                self.recorder.add(self._given_back(held.row, "shutdown", now))
        await self.recorder.flush_all()

    async def _at_exit(self, deadline: float, work: Callable[[], Awaitable[None]]) -> None:
        """Run ``work`` until ``deadline``; past it, leave the rows to liveness and leases."""
        try:
            async with asyncio.timeout(max(deadline - self.clock(), 0.1)):
                await work()
        except TimeoutError:
            self.stuck = True
            log.error("worker.exit_timeout", held=len(self.holdings), fallback="other relays")

    # Feeder ----------------------------------------------------------------------------------

    def _outstanding(self) -> int:
        """Rows taking a place in the engine: queued or in flight. Rows kept aside for a
        route that has its allowance in flight are not counted: the claim takes no more of
        that route meanwhile, and rows of other routes must not wait behind them."""
        return len(self.queue) + self.busy

    def _demand(self, route: str) -> int:
        """Rows of ``route`` waiting for a sender: queued, or kept aside (the gate's shares)."""
        return self.queued_by_route[route] + len(self.waiting.get(route, ()))

    def _claim_size(self) -> int:
        """How many rows to claim now: up to ``prefetch`` ahead of the senders."""
        outstanding = self._outstanding()
        limit = self.gate.claim_limit(self.clock(), outstanding)
        if limit == 0:
            return 0
        free = self.config.concurrency + self.config.prefetch - outstanding
        idle_sender = outstanding < self.config.concurrency
        if free <= 0 or (free < self.config.min_claim and not idle_sender):
            return 0
        size = min(free, self.config.claim_batch_size)
        return size if limit is None else min(size, limit)

    async def _feeder(self, drain: bool) -> None:
        backoff = DRAIN_BACKOFF
        poll = self.config.poll_interval.total_seconds()
        while True:
            await self.liveness.alive.wait()
            if self.clock() >= self.pauses.next_refresh:
                await self.pauses.refresh()
            size = self._claim_size() if self.more else 0
            if size:
                rows = await self._claim(size)
                self.more = len(rows) == size
                if rows:
                    backoff = DRAIN_BACKOFF
                    continue
            timeout = max(min(poll, self.pauses.next_refresh - self.clock()), 0.001)
            if drain and not self._outstanding() and not self.recorder.done:
                self.left = await self.calls.run(
                    "unfinished",
                    lambda: self.store.unfinished(self.config.dead_blocks_key, DRAIN_HORIZON),
                )
                waiting = [group for group in self.left if group.verdict == "wait"]
                if not waiting:
                    return  # published or dead, or what is left cannot go now
                next_in = min(group.next_in for group in waiting)
                if next_in > 0:
                    timeout = min(timeout, next_in)
                else:
                    # Available yet not claimable (a producer's key lock, a paused route):
                    # wait, longer each time, instead of asking again at once.
                    timeout, backoff = min(timeout, backoff), min(backoff * 2, poll)
            await self._wait_for_work(timeout)

    async def _wait_for_work(self, wait_seconds: float) -> None:
        """Wait for a wake-up (a NOTIFY, a written result, free slots, a rescue) or the poll
        timeout; after either, new work may exist."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait_seconds):
                await self.wake.wait()
        self.wake.clear()
        self.more = True

    async def _claim(self, size: int) -> list[ClaimedRow]:
        # Shielded: a claim the database has committed must reach `holdings` even when
        # shutdown cancels the feeder mid-claim, or its rows would wait for other relays.
        self.claiming = asyncio.ensure_future(self.calls.run("claim", lambda: self._once(size)))
        rows = await asyncio.shield(self.claiming)
        self.metrics.claim_batch_size.observe(len(rows))
        return rows

    async def _once(self, size: int) -> list[ClaimedRow]:
        incarnation = self.liveness.incarnation
        if self.claim_failed:
            # The failed claim may have committed: give back what we hold without knowing it.
            await self.store.release_orphans(incarnation, list(self.holdings.rows))
            self.claim_failed = False
        self.claim_failed = True
        self.claims = (self.claims + 1) % 2**32
        started, started_ns = self.clock(), time.time_ns()
        rows, self.key_cursor = await self.store.claim(
            size,
            incarnation << 32 | self.claims,
            lease_seconds=self.config.lease.total_seconds(),
            dead_blocks_key=self.config.dead_blocks_key,
            after_key=self.key_cursor,
            full_routes=self.gate.full_routes(),
        )
        self.claim_failed = False
        if self.tracing is not None and rows:
            for row in rows:
                row.trace_parent = self.tracing.parent(row.traceparent, row.tracestate)
            self.tracing.claimed(started_ns, [row.trace_parent for row in rows])
        fresh = self.holdings.take(rows, started)
        if fresh:
            await self._enqueue(fresh)
        return rows

    async def _enqueue(self, rows: Sequence[ClaimedRow], *, first: bool = False) -> None:
        """Rows for the senders, at the end of the queue (or at its front)."""
        for row in rows:
            self.queued_by_route[self._route_of(row)] += 1
        if first:
            self.queue.extendleft(reversed(rows))
        else:
            self.queue.extend(rows)
        async with self.queued:
            self.queued.notify(len(rows))

    def _requeue_only(self, keep: Callable[[ClaimedRow], bool]) -> list[ClaimedRow]:
        """Keep the queued rows ``keep`` says to; return the others."""
        dropped = [row for row in self.queue if not keep(row)]
        if dropped:
            self.queue = deque(row for row in self.queue if keep(row))
            self.queued_by_route = Counter(self._route_of(row) for row in self.queue)
        return dropped

    # Senders ---------------------------------------------------------------------------------

    async def _next_row(self) -> ClaimedRow:
        # A sender that finds a row takes it without the condition's lock (the common case
        # under load); one that finds none waits to be notified.
        while not self.queue:
            async with self.queued:
                if not self.queue:  # looked at again under the lock: no notify is missed
                    await self.queued.wait()
        row = self.queue.popleft()
        self.queued_by_route[self._route_of(row)] -= 1
        return row

    async def _sender(self) -> None:
        while True:
            row = await self._next_row()
            self.busy += 1
            self.idle.clear()
            try:
                done = await self._handle(row)
            except Exception as error:  # a bug while handling one row becomes its outcome
                done = self._unexpected(row, error)
            finally:
                self.busy -= 1
                if self.busy == 0:
                    self.idle.set()
                    self.recorder.nudge()
                if self.more and self._outstanding() <= self.refill_at:
                    self.wake.set()
            if done is not None:
                self.recorder.add(done)

    def _unexpected(self, row: ClaimedRow, error: Exception) -> Done:
        log.error("publish.unexpected", outbox_id=row.id, error_class=type(error).__name__)
        outcome = Outcome(
            OutcomeKind.TRANSIENT, "unexpected", error=f"{type(error).__name__} in the relay"
        )
        now = datetime.now(UTC)
        return Done(row, decide(row, outcome, now, self.config.policy, counts=True), None, None)

    def _route_of(self, row: ClaimedRow) -> str:
        country = row.country or self.config.default_country or ""
        tenant = row.tenant or self.config.default_tenant or ""
        return f"{country}/{tenant}"

    async def _handle(self, row: ClaimedRow) -> Done | None:
        """Send one row (or decide it cannot go); None when it waits for its route's ramp."""
        if not self.liveness.alive.is_set():
            return self._given_back(row, "liveness_lost", datetime.now(UTC))
        prepared = prepare(
            row,
            self.config.default_country,
            self.config.default_tenant,
            max_stops=self.config.policy.give_up.max_attempts,
        )
        if isinstance(prepared, Unsendable):
            route = self._route_of(row)[:ROUTE_IN_LOGS]
            result = dead_unsent(row, prepared.reason, datetime.now(UTC))
            done = Done(row, result, prepared.correlation_id, route)
            if self.tracing is not None:
                span = traces.delivery(self.tracing, row, route, prepared.correlation_id)
                done.trace = traces.delivered(self.tracing, span, done, sent=False)
            return done
        verdict = self.gate.admit(prepared.route, self.clock())
        if verdict is Verdict.HOLD:
            return self._given_back(row, "paused", datetime.now(UTC))
        if verdict is Verdict.WAIT:
            self.waiting[prepared.route].append(row)
            return None
        if self.holdings.remaining(row.id) < self.send_budget:
            # The process was held up (a hang, a stop, a starved machine) for most of the
            # lease: the row may be another relay's by now, so it is not sent. Rare, so logged.
            self.gate.returned(prepared.route, verdict)
            log.info("outbox.given_back", rows=1, reason="lease_too_short", outbox_id=row.id)
            return self._given_back(row, "lease_too_short", datetime.now(UTC))
        if self.tracing is None:
            return await self._send(row, prepared, verdict is Verdict.PROBE)
        return await self._traced_send(row, prepared, verdict is Verdict.PROBE)

    async def _traced_send(self, row: ClaimedRow, prepared: Prepared, probe: bool) -> Done:
        """``_send`` inside the attempt's span, the child of the row's stored context."""
        assert self.tracing is not None
        span = traces.delivery(self.tracing, row, prepared.route, prepared.correlation_id)
        done = await self.tracing.within(span, self._send(row, prepared, probe))
        done.trace = traces.delivered(self.tracing, span, done, sent=done.result.logged)
        return done

    async def _send(self, row: ClaimedRow, prepared: Prepared, probe: bool) -> Done:
        route = prepared.route
        self.holdings.sending(row.id)
        self.gate.sending(route)
        outcome = await self.sender.publish(
            row.event_type, prepared.body, prepared.country, prepared.tenant
        )
        if not outcome.sent and outcome.kind is not OutcomeKind.PERMANENT:
            return await self._no_token(row, route, outcome, probe)
        counts = self.gate.counts(route, probe)
        result = decide(row, outcome, datetime.now(UTC), self.config.policy, counts=counts)
        try:
            await self.pauses.react(outcome, route, probe)
        finally:
            if self._waiting(route):
                await self._release_waiting(route)
        return Done(row, result, prepared.correlation_id, route)

    async def _no_token(self, row: ClaimedRow, route: str, outcome: Outcome, probe: bool) -> Done:
        """No token could be had, so nothing was sent: the token endpoint is every route's,
        so every route waits for it (this process's hold until the provider tries again, or
        the pause of every route when our client is refused), and the row goes back unsent:
        no attempt, no delivery-log row."""
        self.gate.finished(route, succeeded=False, slow=False, probe=False)
        self.gate.returned(route, Verdict.PROBE if probe else Verdict.SEND)
        try:
            if outcome.kind is OutcomeKind.CONFIGURATION:
                await self.pauses.react(outcome, route, probe=False)
            else:
                seconds = (
                    0.0 if outcome.retry_after is None else outcome.retry_after.total_seconds()
                )
                if self.gate.hold(self.clock(), seconds):
                    log.warning(
                        "outbox.held", reason=outcome.error_class, seconds=seconds,
                        error=outcome.error,
                    )  # fmt: skip
                    self._give_back_queued("no_token")
        finally:
            await self._release_waiting(route)
        return self._given_back(row, "no_token", datetime.now(UTC))

    def _given_back(self, row: ClaimedRow, reason: str, now: datetime) -> Done:
        self.metrics.given_back.labels(reason).inc()
        return Done(row, give_back(row, reason, now), None, None)

    async def _release_waiting(self, route: str) -> None:
        """Rows kept aside for a ramping route go back to the front of the queue."""
        rows = self.waiting.pop(route, None)
        if rows:
            await self._enqueue(rows, first=True)

    def _waiting(self, route: str) -> bool:
        """Whether rows are kept aside for ``route`` (asked before awaiting their release)."""
        return bool(self.waiting.get(route))

    def _give_back_queued(self, reason: str) -> None:
        """Rows waiting to be sent must not go now: back to pending, attempts untouched."""
        rows = self._requeue_only(lambda row: False)
        for waiting in self.waiting.values():
            rows.extend(waiting)
        self.waiting.clear()
        now = datetime.now(UTC)
        for row in rows:
            self.recorder.add(self._given_back(row, reason, now))
        if rows:
            log.info("outbox.given_back", rows=len(rows), reason=reason)

    def _liveness_lost(self) -> None:
        # Other relays may take our rows from now on: send none of those not yet sent.
        self._give_back_queued("liveness_lost")

    def _leases_lost(self, ids: list[int]) -> None:
        lost = set(ids)
        self._requeue_only(lambda row: row.id not in lost)
        for route, rows in list(self.waiting.items()):
            self.waiting[route] = deque(row for row in rows if row.id not in lost)
        for row_id in ids:
            self.holdings.let_go(row_id)

    # Recording ---------------------------------------------------------------------------------

    def _written(self, batch: list[Done], written: set[int]) -> None:
        dead_keyed = []
        published: Counter[tuple[str, str]] = Counter()
        for item in batch:
            fenced = item.row.id not in written
            result = item.result
            if result.status == "published" and result.logged:
                # The common case: counted per batch, and no log line (the delivery log holds
                # the row's history; a line per event would cost more than the rest of its
                # bookkeeping).
                self.published += 1
                published[item.row.event_type, item.route or self._route_of(item.row)] += 1
                if not fenced:
                    continue
            if report(item, item.route or self._route_of(item.row), self.metrics, fenced=fenced):
                self.dead += 1
            if not fenced and result.status == "dead" and item.row.ordering_key:
                dead_keyed.append(item.row.id)
        for (event_type, route), events in published.items():
            self.metrics.count_published(event_type, route, events)
        self.parker.behind_dead(dead_keyed)
        # A row written may unblock the next row of its key, or a retry due at once.
        self.wake.set()
        # A retry due before the next poll is woken for, so short backoffs stay short.
        due = [
            d.result.delay
            for d in batch
            if d.result.status == "pending" and d.result.delay and d.result.logged
        ]
        if due and min(due) < self.config.poll_interval.total_seconds():
            asyncio.get_running_loop().call_later(min(due), self.wake.set)


__all__ = ["Worker"]
