"""``relay run``: open every long-lived resource once, wire them together, run the engine.

One owner for each resource: the asyncpg pool, the aiohttp session, the token provider, the
listener and the HTTP endpoint are all opened here in one AsyncExitStack and passed down.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
from collections.abc import Callable, Coroutine
from contextlib import AsyncExitStack, suppress
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
import asyncpg
import structlog

from relay import database, schema, tracing
from relay.config import KEEP, Settings
from relay.errors import ConfigurationError, RelayError, TokenError
from relay.eventapi.keys import load_key_material
from relay.eventapi.proxy import proxy_for
from relay.eventapi.publisher import Publisher
from relay.eventapi.receive import Receiver
from relay.eventapi.session import create_session, create_token_session
from relay.eventapi.token import TokenProvider
from relay.inbox.receiver import ReceiveConfig, RouteReceiver, receive_routes
from relay.inbox.store import InboxStore
from relay.metrics import Metrics
from relay.ops import http
from relay.ops.formatting import human_duration
from relay.outbox.decide import Policy
from relay.outbox.engine import DrainReport, EngineConfig
from relay.outbox.liveness import Liveness
from relay.outbox.store import Defaults, Store
from relay.outbox.worker import Worker
from relay.retry import GiveUpPolicy, RetryPolicy

if TYPE_CHECKING:  # loaded only when tracing is on
    from relay.tracing.spans import Tracing

log = structlog.get_logger("relay.daemon")
SAMPLE_INTERVAL = 15.0
POOL_CLOSE_TIMEOUT = 2.0
PURGE_INTERVAL = 3600.0
T = TypeVar("T")


def engine_config(settings: Settings) -> EngineConfig:
    return EngineConfig(
        concurrency=settings.concurrency,
        claim_batch_size=settings.claim_batch_size,
        lease=settings.lease,
        poll_interval=settings.poll_interval,
        request_timeout=settings.request_timeout,
        default_country=settings.country,
        default_tenant=settings.tenant,
        dead_blocks_key=settings.dead_blocks_key,
        policy=Policy(
            retry=RetryPolicy(settings.backoff_base, settings.backoff_cap),
            give_up=GiveUpPolicy(settings.max_attempts, settings.max_age),
            configuration_pause=settings.configuration_pause,
        ),
        circuit_threshold=settings.circuit_threshold,
        circuit_pause=settings.circuit_pause,
        circuit_pause_cap=settings.circuit_pause_cap,
        shutdown_grace=settings.shutdown_grace,
    )


@dataclass
class Daemon:
    """The running process: what ``/readyz`` asks and what tests drive."""

    settings: Settings
    metrics: Metrics = field(default_factory=Metrics)
    stop: asyncio.Event = field(default_factory=asyncio.Event)
    worker: Worker | None = None
    tokens: TokenProvider | None = None
    http_port: int | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    # Spans (relay.tracing): by default as the OTEL_* variables say, None when they ask for none.
    tracing: Tracing | None = None

    def not_ready_reason(self) -> str | None:
        if self.worker is None or self.tokens is None:
            return "starting"
        if self.tokens.last_error is not None and not self.tokens.ready:
            return f"no access token: {self.tokens.last_error}"
        return self.worker.not_ready_reason()

    async def run(self, *, drain: bool = False) -> DrainReport | None:
        settings = self.settings
        url = settings.require_database_url()
        settings.require_partner()
        if self.tracing is None:
            self.tracing = tracing.start(
                os.environ, instance=settings.worker_id, propagate=settings.propagate_trace
            )
        self.metrics.expect_route(settings.country, settings.tenant)
        async with AsyncExitStack() as stack:
            if self.tracing is not None:  # closed last: every span has ended by then
                stack.push_async_callback(self.tracing.close)
            pool = await self._open_pool(url)
            stack.push_async_callback(self._close_pool, pool)
            session = await stack.enter_async_context(create_session(settings))
            # Token requests have connections of their own: behind a full pool of publishes
            # they would wait, and time out, exactly when a token is needed.
            token_session = await stack.enter_async_context(create_token_session(settings))
            key_material = load_key_material(settings) if settings.uses_private_key_jwt else None
            self.tokens = TokenProvider(
                token_session, settings, key_material=key_material, metrics=self.metrics
            )
            stack.push_async_callback(self.tokens.close)
            # Fetch the first token now: a rejected client shows in /readyz before any event.
            warm_up = asyncio.create_task(self._warm_up(self.tokens), name="token-warm-up")
            stack.push_async_callback(_cancel_all, [warm_up])
            api_base = settings.resolved_api_base_url
            assert api_base is not None  # require_partner() checked it
            proxy = proxy_for(api_base, settings)
            publisher = Publisher(
                session,
                self.tokens,
                api_base,
                settings.request_timeout,
                self.metrics,
                retry_after_cap=settings.retry_after_cap,
                proxy=proxy,
                trace_headers=(
                    self.tracing.inject
                    if self.tracing is not None and settings.propagate_trace
                    else None
                ),
            )
            defaults = Defaults(settings.country, settings.tenant)
            store = Store(pool, settings.schema_name, settings.worker_id, defaults)
            liveness = Liveness(database.asyncpg_dsn(url), asyncio.Event())
            self.worker = Worker(
                store,
                publisher,
                engine_config(settings),
                self.metrics,
                liveness,
                tracing=self.tracing,
            )
            address = await self._start_http(stack)
            inbox = InboxStore(pool, settings.schema_name) if settings.receive_routes else None
            background = [
                ("liveness", liveness.run()),
                ("sampler", self._sample(store, inbox)),
            ]
            if settings.receive_routes:
                background.append(("receiver", self._receive(session, api_base, url)))
            if settings.retention is not None:
                background.append(("retention", self._purge(store, inbox, settings.retention)))
            tasks = [asyncio.create_task(coro, name=name) for name, coro in background]
            stack.push_async_callback(_cancel_all, tasks)
            log.info(
                "relay.started",
                worker=settings.worker_id,
                incarnation=liveness.incarnation,
                concurrency=settings.concurrency,
                schema=settings.schema_name,
                environment=settings.environment,
                api_base_url=api_base,
                token_url=settings.resolved_token_url,
                proxy=str(proxy) if proxy is not None else None,
                http=address,
                drain=drain,
                tracing="off" if self.tracing is None else self.tracing.shown,
                retention=(
                    KEEP
                    if settings.retention is None
                    else human_duration(settings.retention.total_seconds())
                ),
            )
            self.started.set()
            # What start-up made (modules, settings, pools, sessions) lives as long as the
            # process: out of the collector's way, a full collection walks only what events
            # make.
            gc.freeze()
            report = await _supervised(self.worker.run(self.stop, drain=drain), tasks)
        log.info("relay.stopped")
        return report

    async def _open_pool(self, url: str) -> asyncpg.Pool:
        try:
            pool = await database.create_pool(url, max_size=4)
        except database.DATABASE_ERRORS as error:
            raise database.describe_connection_error(url, error) from None
        try:
            await schema.check_schema(pool, self.settings.schema_name)
        except BaseException:
            await pool.close()
            raise
        return pool

    async def _close_pool(self, pool: asyncpg.Pool) -> None:
        """Close the pool, waiting a little for connections in use; then cut them. At once
        when the engine already gave up on the database at shutdown."""
        if self.worker is not None and self.worker.stuck:
            pool.terminate()
            return
        try:
            await asyncio.wait_for(pool.close(), POOL_CLOSE_TIMEOUT)
        except TimeoutError:
            pool.terminate()

    async def _start_http(self, stack: AsyncExitStack) -> str:
        """Serve /healthz, /readyz and /metrics; return the address listened on."""
        app = http.create_app(self.metrics, self.not_ready_reason)
        host, port = self.settings.http_host, self.settings.http_port
        try:
            runner = await http.start(app, host, port)
        except OSError as error:
            raise ConfigurationError(
                f"RELAY_HTTP_PORT: cannot listen on {host}:{port}: {error.strerror or error}"
            ) from None
        stack.push_async_callback(runner.cleanup)
        self.http_port = int(runner.addresses[0][1])
        return f"{host}:{self.http_port}"

    @staticmethod
    async def _warm_up(tokens: TokenProvider) -> None:
        with suppress(TokenError):  # the provider logs it and /readyz reports it
            await tokens.get()

    async def _receive(self, session: aiohttp.ClientSession, api_base: str, url: str) -> None:
        """Receive every RELAY_RECEIVE_ROUTES route into the inbox (one poller per route
        across all replicas), sharing the publisher's session and token."""
        settings = self.settings
        assert self.tokens is not None
        client = Receiver(
            session,
            self.tokens,
            api_base,
            timeout=settings.receive_timeout,
            retry_after_cap=settings.retry_after_cap,
            proxy=proxy_for(api_base, settings),
        )
        config = ReceiveConfig(settings.receive_from, settings.configuration_pause)
        receivers = [
            RouteReceiver(
                *route.split("/", 1),
                dsn=database.asyncpg_dsn(url),
                schema=settings.schema_name,
                client=client,
                metrics=self.metrics,
                config=config,
                tracing=self.tracing,
            )
            for route in settings.receive_routes
        ]
        await receive_routes(receivers)

    async def _sample(self, store: Store, inbox: InboxStore | None) -> None:
        """Queue depth and oldest age (and each receive route's lag and last answer),
        sampled from the tables: never counted per request."""
        while True:
            try:
                sample = await store.queue_sample()
                self.metrics.queue_depth.set(sample.depth)
                self.metrics.oldest_pending_age.set(sample.oldest)
                for reason, rows in sample.blocked.items():
                    self.metrics.blocked_rows.labels(reason).set(rows)
                for route in await inbox.route_sample() if inbox is not None else []:
                    self.metrics.show_receive_route(
                        route.country,
                        route.tenant,
                        route.lag,
                        route.age,
                        (route.pending, route.oldest_pending),
                    )
            except database.DATABASE_ERRORS as error:
                log.warning("sample.failed", error=database.describe_database_error(error))
            await asyncio.sleep(SAMPLE_INTERVAL)

    async def _purge(self, store: Store, inbox: InboxStore | None, retention: timedelta) -> None:
        """Delete published outbox rows and processed inbox rows older than RELAY_RETENTION,
        in small batches, hourly."""
        seconds = retention.total_seconds()
        while True:
            total = 0
            try:
                while (deleted := await store.purge_published(seconds)) > 0:
                    total += deleted
                while inbox is not None and (deleted := await inbox.purge_processed(seconds)):
                    total += deleted
            except database.DATABASE_ERRORS as error:
                log.warning("retention.failed", error=database.describe_database_error(error))
            if total:
                log.info("retention.purged", rows=total)
            await asyncio.sleep(PURGE_INTERVAL)


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def _supervised(
    main: Coroutine[Any, Any, DrainReport | None], tasks: list[asyncio.Task[None]]
) -> DrainReport | None:
    """Run the engine; if a background task dies, say which and stop loudly."""
    engine = asyncio.ensure_future(main)
    try:
        done, _ = await asyncio.wait([engine, *tasks], return_when=asyncio.FIRST_COMPLETED)
    except asyncio.CancelledError:
        # Stop the engine (it gives its rows back) before the pool and session close under it.
        engine.cancel()
        with suppress(asyncio.CancelledError):
            await engine
        raise
    if engine in done:
        return engine.result()
    crashed = next(iter(done))
    engine.cancel()
    with suppress(asyncio.CancelledError):
        await engine
    error = crashed.exception() if not crashed.cancelled() else None
    log.error("task.crashed", task=crashed.get_name(), error=repr(error))
    raise RelayError(f"background task {crashed.get_name()} stopped: {error!r}")


def install_signal_handlers(stop: asyncio.Event) -> Callable[[], None]:
    """First SIGTERM/SIGINT: drain and stop. Second: exit at once (leases bring rows back)."""
    loop = asyncio.get_running_loop()

    def handle(signum: int) -> None:
        if stop.is_set():
            log.warning("relay.killed", signal=signal.Signals(signum).name)
            os._exit(1)
        log.info("relay.stopping", signal=signal.Signals(signum).name)
        stop.set()

    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, handle, signum)

    def remove() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(signum)

    return remove


async def run(settings: Settings, *, drain: bool = False) -> DrainReport | None:
    daemon = Daemon(settings)
    remove = install_signal_handlers(daemon.stop)
    try:
        return await daemon.run(drain=drain)
    finally:
        remove()


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run ``main`` on uvloop where it is built, else on asyncio's default loop.

    uvloop: +8 % events/s and -5 % CPU per event at 0 ms partner latency, and about 3 ms less
    per request at 20 ms (docs/benchmarks.md).
    """
    try:
        import uvloop
    except ImportError:  # not built for this platform: the default loop works, a bit slower
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
