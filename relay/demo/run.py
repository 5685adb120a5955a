"""``relay demo``: the whole relay on one machine, end to end, in well under a minute.

Without ``RELAY_DATABASE_URL`` it starts an embedded PostgreSQL (``relay.demo.embedded``, on
the binaries of the ``embedded`` extra) in ``.relay-demo/pgdata`` under the current directory,
re-created database ``relay_demo`` each run; it changes nothing outside the current directory
but a temporary directory of its own, removed when it stops. With ``RELAY_DATABASE_URL`` it
uses that database, in a schema of its own (``relay_demo``, re-created each run), so an outbox
that holds real events is never touched.

In one process it then starts the emulated partner with realistic latency and a few injected
failures, migrates, enqueues a realistic mix of events through the producer API (plus a handful
of invalid rows written with plain SQL, which must end dead) and has the emulator hold events
for two receive routes (``relay.demo.receiving``). It runs the relay, publishing and receiving,
with a consumer per receive route beside it, until the outbox is drained and every event fed
is in the inbox and consumed, with a live progress bar; then it prints a summary of both
directions.

At the end the embedded server is stopped, unless ``--keep`` asks to leave it running for the
commands the summary lists (``relay demo --stop`` stops it then).

Ctrl-C leaves nothing half-written: the enqueue commits whole transactions only, the relay
finishes the requests in flight and gives the rest back, a consumer's event in progress rolls
back with its count, and the embedded server is stopped (exit code 130). A second Ctrl-C stops
without waiting for requests in flight; the rows they held are given back all the same.
"""

from __future__ import annotations

import asyncio
import io
import secrets
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from contextlib import AsyncExitStack, ExitStack
from dataclasses import dataclass
from typing import Any, TextIO, cast

import asyncpg
from rich.console import Console
from rich.progress import Progress, TaskID

from relay import database, logs, schema
from relay.config import Settings, load_settings
from relay.daemon import Daemon
from relay.demo.database import (
    DEMO_DIRECTORY,
    Target,
    choose_target,
    connect,
    start_fresh,
    stop_embedded,
)
from relay.demo.display import (
    REFRESH_SECONDS,
    Tally,
    metric_total,
    print_report,
    progress_bar,
    read_tally,
)
from relay.demo.events import (
    DEFAULT_ROUTE,
    INSERT_INVALID,
    INVALID_ROWS,
    DemoEvent,
    invalid_payloads,
    realistic_events,
)
from relay.demo.receiving import (
    DROPPED_POLLS,
    MALFORMED,
    MALFORMED_PAGES,
    RECEIVE_HOLD,
    RECEIVE_ROUTES,
    RECEIVE_TIMEOUT,
    InboxTally,
    Receipts,
    Snapshot,
    consume_route,
    create_cases_table,
    feed_backlog,
    feed_live,
    finished,
    read_inbox,
    read_snapshot,
    receive_plan,
)
from relay.demo.state import Interrupted, Run
from relay.emulator import Emulator, EmulatorConfig, Faults
from relay.metrics import Metrics
from relay.outbox import enqueue_async
from relay.outbox.store import Store

CLIENT_ID = "relay-demo"
TRANSACTIONS = 6  # the enqueue commits in this many transactions
INTERRUPTED = 130  # the shell's exit code for SIGINT
FAULTS = Faults(
    latency_ms=15.0,
    latency_jitter_ms=10.0,  # 15-25 ms, 20 ms on average
    error_rate=0.02,
    error_status=503,
    drop_rate=0.005,
    receive_hold_seconds=RECEIVE_HOLD,
    receive_drop_next=DROPPED_POLLS,
    receive_malformed_next=MALFORMED_PAGES,
)
# With nothing moving in either direction for this long, the demo stops waiting and says so.
STALL_SECONDS = 20.0
FAILURE = 1  # the exit code when it stopped waiting
POOL_CLOSE_SECONDS = 3.0


class _Stderr(io.TextIOBase):
    """Whatever ``sys.stderr`` is now: while the progress bar shows, rich swaps in a proxy
    that prints log lines above the bar instead of through it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()

    def isatty(self) -> bool:
        return sys.stderr.isatty()


def demo_settings(target: Target, emulator: Emulator, secret: str) -> Settings:
    """Relay settings aimed at the in-process emulator; short backoffs so the demo is quick,
    and a receive timeout a little above the emulator's hold."""
    return load_settings(
        database_url=target.url,
        RELAY_SCHEMA=target.schema,  # the field's alias: schema_name= would be ignored
        token_url=emulator.token_url,
        api_base_url=emulator.base_url,
        country=DEFAULT_ROUTE[0],
        tenant=DEFAULT_ROUTE[1],
        client_id=CLIENT_ID,
        client_secret=secret,
        client_auth_method="client_secret_post",
        http_host="127.0.0.1",
        http_port=0,
        concurrency=32,
        poll_interval=0.5,
        backoff_base=0.05,
        backoff_cap=1.0,
        shutdown_grace=3.0,
        dead_blocks_key=True,
        receive_routes=tuple(f"{country}/{tenant}" for country, tenant, _ in RECEIVE_ROUTES),
        receive_timeout=RECEIVE_TIMEOUT,
        retention=None,
        log_level="warning",
        log_format="auto",
    )


async def _enqueue(run: Run, progress: Progress, task: TaskID) -> None:
    """The events through the producer API, in a few transactions, plus the invalid rows."""
    events = realistic_events(run.events - INVALID_ROWS)
    size = -(-len(events) // TRANSACTIONS)
    batches = [events[start : start + size] for start in range(0, len(events), size)]
    invalid: list[list[tuple[str, str]]] = [[] for _ in batches]
    for n, row in enumerate(invalid_payloads()):
        invalid[n % len(batches)].append(row)
    connection = await connect(run.target.url)
    try:
        for batch, extra in zip(batches, invalid, strict=True):
            await _enqueue_batch(run, connection, batch, extra, lambda: progress.advance(task))
    finally:
        await connection.close()


async def _enqueue_batch(
    run: Run,
    connection: asyncpg.Connection,
    batch: Sequence[DemoEvent],
    invalid: Sequence[tuple[str, str]],
    advance: Callable[[], None],
) -> None:
    """One transaction: all of it commits, or (Ctrl-C) none of it."""
    schema = run.target.schema
    async with connection.transaction():
        for event in batch:
            run.check()
            await enqueue_async(
                connection,
                event.event_type,
                event.payload,
                tenant=event.tenant,
                country=event.country,
                ordering_key=event.ordering_key,
                schema=schema,
            )
            advance()
        for event_type, body in invalid:
            await connection.execute(INSERT_INVALID.format(schema=schema), event_type, body)
            advance()
        run.check()
    run.committed += len(batch) + len(invalid)
    run.invalid += len(invalid)
    run.transactions += 1


@dataclass(frozen=True, slots=True)
class _Bars:
    deliver: TaskID
    receive: TaskID
    consume: TaskID


async def _exchange(run: Run, daemon: Daemon, emulator: Emulator, progress: Progress) -> None:
    """Run the relay, the live feed and the consumers until the outbox is drained and every
    event fed is received and consumed (or Ctrl-C), updating the bars."""
    receipts = run.receipts
    assert receipts is not None
    bars = _Bars(
        progress.add_task("deliver", total=run.committed, detail=""),
        progress.add_task("receive", total=receipts.planned + MALFORMED, detail=""),
        progress.add_task("consume", total=receipts.planned, detail=""),
    )
    started = time.monotonic()
    relay = asyncio.create_task(daemon.run(), name="relay")
    helpers = [asyncio.create_task(feed_live(emulator, receipts), name="feed")]
    try:
        async with AsyncExitStack() as stack:
            pool = await database.create_pool(run.target.url, min_size=0, max_size=4)
            stack.push_async_callback(_close, pool)
            stack.push_async_callback(_cancel, helpers)  # before the pool closes
            helpers += [
                asyncio.create_task(consume_route(pool, run.target.schema, route), name=route)
                for route in receipts.routes
            ]
            watcher = await connect(run.target.url)
            stack.push_async_callback(watcher.close)
            await _watch(run, daemon, emulator, relay, helpers[0], watcher, progress, bars)
        relay.result()
    finally:
        if not relay.done():  # a second Ctrl-C cancelled us; _summarise gives held rows back
            relay.cancel()
        await _cancel([relay, *helpers])
        run.relay_seconds = time.monotonic() - started


async def _watch(
    run: Run,
    daemon: Daemon,
    emulator: Emulator,
    relay: asyncio.Task[object],
    feeding: asyncio.Task[None],
    watcher: asyncpg.Connection,
    progress: Progress,
    bars: _Bars,
) -> None:
    """Refresh the bars until the relay stops; stop it once all is done, or nothing moves."""
    receipts = run.receipts
    assert receipts is not None
    metrics = daemon.metrics
    last: tuple[object, ...] = ()
    moved = time.monotonic()
    while not relay.done():
        await asyncio.wait([relay], timeout=REFRESH_SECONDS)
        receipts.observe(emulator)
        snapshot = await read_snapshot(watcher, run.target.schema)
        published, dead = metric_total(metrics.published), metric_total(metrics.dead)
        detail = f"{dead} dead, {metric_total(metrics.retried)} retried"
        progress.update(bars.deliver, completed=published + dead, detail=detail)
        _show_inbox(progress, bars, metrics, snapshot)
        if daemon.stop.is_set():
            continue
        if finished(snapshot, receipts, feeding):
            daemon.stop.set()
        now = (published, dead, snapshot, receipts.fed, receipts.dropped_polls)
        if now != last:
            last, moved = now, time.monotonic()
        elif time.monotonic() - moved > STALL_SECONDS:
            run.gave_up = f"nothing moved for {STALL_SECONDS:g} s"
            daemon.stop.set()


def _show_inbox(progress: Progress, bars: _Bars, metrics: Metrics, snapshot: Snapshot) -> None:
    retried = metric_total(metrics.inbox_errors)  # polls that failed and were asked again
    progress.update(
        bars.receive,
        completed=snapshot.events + snapshot.malformed,
        detail=f"{snapshot.malformed} malformed, {retried} retried",
    )
    progress.update(
        bars.consume, completed=snapshot.processed, detail=f"{snapshot.consumer_failed} failed"
    )


async def _close(pool: asyncpg.Pool) -> None:
    """Close the consumers' pool; should a connection not come back, cut them all."""
    try:
        await asyncio.wait_for(pool.close(), POOL_CLOSE_SECONDS)
    except TimeoutError:
        pool.terminate()


async def _cancel(tasks: Sequence[asyncio.Task[Any]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _demo(run: Run, secret: str) -> None:
    config = EmulatorConfig(clients={CLIENT_ID: secret}, faults=FAULTS)
    async with Emulator(config) as emulator:
        settings = demo_settings(run.target, emulator, secret)
        logs.configure(settings.log_level, settings.log_format, stream=cast(TextIO, _Stderr()))
        run.daemon = Daemon(settings)
        run.receipts = receipts = Receipts(receive_plan(run.events))
        if run.interrupted:
            run.daemon.stop.set()
        try:
            await _prepare(run, emulator)
            await _send(run, run.daemon, emulator)
        finally:
            run.emulator = emulator.stats()
            run.routes = Counter(f"{e.country}/{e.tenant}" for e in emulator.events)
            receipts.capture(emulator)


async def _prepare(run: Run, emulator: Emulator) -> None:
    echo = run.console.print
    echo(f"relay demo: using {run.target.description}", soft_wrap=True)
    run.stage = "migrating"
    await start_fresh(run.target)
    echo(f"relay demo: fresh start: {run.target.fresh}", soft_wrap=True)
    # migrate() runs its own event loop (Alembic), so it needs a thread of its own.
    await asyncio.to_thread(schema.migrate, run.target.url, run.target.schema)
    run.check()
    echo(f"relay demo: schema migrated to revision {schema.head_revision()}")
    await create_cases_table(run.target)
    faults = emulator.faults
    echo(
        f"relay demo: emulated EventApi at {emulator.base_url} "
        f"(latency {faults.latency_ms:g}-{faults.latency_ms + faults.latency_jitter_ms:g} ms, "
        f"{faults.error_rate:.0%} answered 503, {faults.drop_rate:.1%} connections dropped)",
        soft_wrap=True,
    )
    receipts = run.receipts
    assert receipts is not None
    feed_backlog(emulator, receipts)
    echo(
        f"relay demo: receiving {', '.join(receipts.routes)}: {receipts.backlog:,} events "
        f"waiting at the emulator, {receipts.planned - receipts.backlog:,} more fed while the "
        f"relay polls (held up to {faults.receive_hold_seconds:g} s); {DROPPED_POLLS} poll "
        f"dropped, {MALFORMED_PAGES} page with {MALFORMED} items that are not events",
        soft_wrap=True,
    )


async def _send(run: Run, daemon: Daemon, emulator: Emulator) -> None:
    with progress_bar(run.console) as progress:
        enqueue = progress.add_task("enqueue", total=run.events, detail="")
        run.stage = "enqueueing"
        await _enqueue(run, progress, enqueue)
        run.stage = "delivering"
        await _exchange(run, daemon, emulator, progress)
    run.stage = "done"


async def _main(run: Run, secret: str) -> None:
    run.main_task = cast("asyncio.Task[None]", asyncio.current_task())
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGINT, run.interrupt)
    loop.add_signal_handler(signal.SIGTERM, run.interrupt)
    try:
        await _demo(run, secret)
    except Interrupted:
        pass
    finally:
        loop.remove_signal_handler(signal.SIGINT)
        loop.remove_signal_handler(signal.SIGTERM)


async def _summarise(run: Run) -> tuple[Tally, InboxTally] | None:
    if run.stage in ("starting", "migrating") or run.receipts is None:
        return None
    tally = await read_tally(run.target)
    if tally.in_flight and run.daemon is not None:
        await _give_back(run.target, run.daemon.settings.worker_id)
        run.given_back = tally.in_flight
        tally = await read_tally(run.target)
    return tally, await read_inbox(run.target, run.receipts)


async def _give_back(target: Target, worker_id: str) -> None:
    """Rows the stopped relay still holds go back to pending now, as their lease would make
    them later: after a second Ctrl-C (requests abandoned) or a claim cut short at shutdown.
    The demo is the only worker on its database or schema, and it has stopped."""
    pool = await database.create_pool(target.url, min_size=1, max_size=1)
    try:
        await Store(pool, target.schema, worker_id).release_all()
    finally:
        await pool.close()


def run_demo(events: int, *, keep_server: bool, console: Console | None = None) -> int:
    """Run the demo; return the exit code (0, or 130 when interrupted)."""
    started = time.monotonic()
    console = console or Console(highlight=False)
    settings = load_settings()  # RELAY_DATABASE_URL decides: embedded or yours
    with ExitStack() as stack:
        try:
            target = choose_target(settings, stack, console)
        except KeyboardInterrupt:
            _stop_leftover(console)
            console.print("relay demo: interrupted while starting PostgreSQL; nothing was written")
            return INTERRUPTED
        run = Run(target, events, console, keep_server, started)
        try:
            asyncio.run(_main(run, secrets.token_urlsafe(24)))
        except (KeyboardInterrupt, asyncio.CancelledError):  # a second Ctrl-C
            run.interrupted = True
        summary = asyncio.run(_summarise(run))
        print_report(run, *(summary or (None, None)))
        target.keep = run.server_left_running  # for the commands the report lists
    # The stack has stopped the embedded server, unless it is left running.
    if target.embedded is not None and not target.left_running:
        console.print(
            "relay demo: stopped the embedded PostgreSQL "
            "('relay demo --keep' leaves it running, to look further with 'relay status')",
            soft_wrap=True,
        )
    elif target.joined:
        console.print(
            "relay demo: left the embedded PostgreSQL running, as it was before "
            "('relay demo --stop' stops it)",
            soft_wrap=True,
        )
    if run.interrupted:
        return INTERRUPTED
    return FAILURE if run.gave_up else 0


def _stop_leftover(console: Console) -> None:
    if stop_embedded(DEMO_DIRECTORY):
        console.print("relay demo: stopped the embedded PostgreSQL")


def stop(console: Console | None = None) -> None:
    """``relay demo --stop``."""
    console = console or Console(highlight=False)
    if stop_embedded(DEMO_DIRECTORY):
        console.print("relay demo: stopped the embedded PostgreSQL")
    else:
        console.print(f"relay demo: no embedded PostgreSQL is running in {DEMO_DIRECTORY}")
