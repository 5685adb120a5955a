"""The process's long-lived connection: proof of life for its claims, and the wake-up on inserts.

On this one connection the process holds a session advisory lock (``LIVENESS_LOCK_CLASS``,
``incarnation``) for as long as it lives, and LISTENs on the outbox channel. The incarnation
is drawn at random for each process and written into every claim token, so another relay can
tell at once that the holder of a row is gone: PostgreSQL drops the lock the moment the
connection closes (a process killed with SIGKILL included, as its kernel closes the socket).

When the connection is lost, the process must stop sending the rows it holds (another relay
may now take them): ``alive`` is cleared and ``on_lost`` called. It reconnects with backoff,
keeping its incarnation when it can, and sets ``wake`` on every (re)connect since notifications
sent meanwhile are lost.

A host that vanishes without closing its sockets (power loss, a network partition) is noticed
by PostgreSQL through the TCP keepalives and user timeout this connection asks the server for
(``KEEPALIVES``): its lock goes about 6 s after the host went quiet, and its rows are rescued
then. This side asks the server something every ``heartbeat`` and counts the connection lost
when no answer comes within ``heartbeat_timeout``: within 3 s of a cut, before the server can
let another relay take its rows, it stops sending them.
A pooler in transaction mode (PgBouncer) cannot carry a session lock or LISTEN, so the relay
must reach PostgreSQL directly or through a session-mode pool.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable

import asyncpg
import structlog

from relay.database import (
    CONNECTION_ERRORS,
    DATABASE_ERRORS,
    KEEPALIVES,
    RECONNECT_CAP,
    describe_database_error,
)
from relay.outbox.queries import LIVENESS_LOCK_CLASS, NOTIFY_CHANNEL

log = structlog.get_logger("relay.outbox.liveness")

INCARNATIONS = 2**31 - 1  # an int4 key of the advisory lock, and the token's high half
# While the database stays away, one connect_failed line for this many failed connects.
REPORT_EVERY = 30


class Liveness:
    """Holds the liveness lock and the LISTEN; see the module docstring."""

    def __init__(
        self,
        dsn: str,
        wake: asyncio.Event,
        *,
        on_lost: Callable[[], None] = lambda: None,
        heartbeat: float = 1.0,
        heartbeat_timeout: float = 2.0,
        connect_timeout: float = 10.0,
        rng: random.Random | None = None,
    ) -> None:
        self.dsn = dsn
        self.wake = wake
        self.on_lost = on_lost
        self.heartbeat = heartbeat
        self.heartbeat_timeout = heartbeat_timeout
        self.connect_timeout = connect_timeout
        self.rng = rng or random.SystemRandom()
        self.incarnation = self._draw()
        self.alive = asyncio.Event()
        self.problem: str | None = "not connected yet"

    def _draw(self) -> int:
        return self.rng.randrange(1, INCARNATIONS)

    async def run(self) -> None:
        """Hold the lock until cancelled, reconnecting whenever the connection is lost."""
        failures = 0
        while True:
            try:
                connection = await self._connect()
            except DATABASE_ERRORS as error:
                failures += 1
                self.problem = f"liveness connection: {describe_database_error(error)}"
                if failures == 1 or failures % REPORT_EVERY == 0:  # a line, not one a second
                    log.warning("liveness.connect_failed", error=self.problem, failures=failures)
                await asyncio.sleep(
                    min(RECONNECT_CAP, 0.1 * 2**failures) * self.rng.random() + 0.05
                )
                continue
            failures = 0
            try:
                await self._hold(connection)
            except asyncio.CancelledError:
                self.alive.clear()  # stopping: the lock goes with the connection
                raise
            else:
                self._lost()
            finally:
                connection.terminate()

    async def _connect(self) -> asyncpg.Connection:
        connection = await asyncpg.connect(
            self.dsn,
            timeout=self.connect_timeout,
            server_settings={"application_name": "relay liveness", **KEEPALIVES},
        )
        try:
            while not await connection.fetchval(
                "SELECT pg_try_advisory_lock($1::int, $2::int)",
                LIVENESS_LOCK_CLASS,
                self.incarnation,
                timeout=self.connect_timeout,
            ):
                # Held by a live process (a draw one in two billion times, or this process's
                # own previous connection not yet gone): take another number.
                self.incarnation = self._draw()
        except BaseException:
            connection.terminate()
            raise
        return connection

    async def _hold(self, connection: asyncpg.Connection) -> None:
        closed = asyncio.Event()
        connection.add_termination_listener(lambda _: closed.set())
        try:
            await connection.add_listener(NOTIFY_CHANNEL, lambda *_: self.wake.set())
            self.alive.set()
            self.problem = None
            self.wake.set()
            log.info("liveness.held", incarnation=self.incarnation)
            while not connection.is_closed():
                try:
                    await asyncio.wait_for(closed.wait(), self.heartbeat)
                except TimeoutError:
                    # Nothing heard for a while: make sure the server is still there.
                    await connection.execute("SELECT 1", timeout=self.heartbeat_timeout)
        except CONNECTION_ERRORS as error:
            self.problem = f"liveness connection lost: {describe_database_error(error)}"

    def _lost(self) -> None:
        if not self.alive.is_set():
            return
        self.alive.clear()
        self.problem = self.problem or "liveness connection lost"
        log.warning("liveness.lost", incarnation=self.incarnation, error=self.problem)
        self.on_lost()
