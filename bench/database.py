"""The benchmark database: created and migrated once per suite, bulk-loaded per run."""

from __future__ import annotations

import os
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

import psycopg

from relay.outbox.queries import Queries
from relay.schema import migrate

ADMIN_URL = os.environ.get("BENCH_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DATABASE = "relay_bench"
EVENT_TYPE = "payment_status_updated"

# A payload as an application would write it (about 250 bytes), built by the server so a
# million rows load in seconds. Every row gets its own correlationId.
PAYLOAD_SQL = f"""jsonb_build_object(
    'eventType', '{EVENT_TYPE}', 'payloadVersion', '1.0.0',
    'correlationId', gen_random_uuid(), 'timestamp', '2026-11-28T10:31:28.251Z',
    'payment', jsonb_build_object('uuid', gen_random_uuid(), 'status', 'canceled'))"""

# A W3C traceparent of a random trace and span, as a traced producer's row holds; sampled
# (flags 01) with the probability given as the statement's first parameter.
TRACE_CONTEXT_SQL = """jsonb_build_object('traceparent', '00-' || md5(random()::text) || '-'
    || left(md5(random()::text), 16) || CASE WHEN random() < %s THEN '-01' ELSE '-00' END)"""


def with_database(url: str, database: str) -> str:
    return urlunsplit(urlsplit(url)._replace(path=f"/{database}"))


@dataclass(frozen=True, slots=True)
class Span:
    """When the relay published: the first and last published_at, and how many."""

    published: int
    seconds: float

    @property
    def rate(self) -> float:
        return (self.published - 1) / self.seconds if self.seconds > 0 else 0.0


class BenchDatabase:
    """``relay_bench`` on the benchmark server; every call opens its own short connection."""

    def __init__(self, admin_url: str = ADMIN_URL, name: str = DATABASE) -> None:
        self.admin_url = admin_url
        self.name = name
        self.url = with_database(admin_url, name)

    def _connect(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.url, autocommit=True)

    def recreate(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')
            admin.execute(f'CREATE DATABASE "{self.name}"')
        migrate(self.url, "public")

    def drop(self) -> None:
        with psycopg.connect(self.admin_url, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{self.name}" WITH (FORCE)')

    def server_version(self) -> str:
        with self._connect() as db:
            row = db.execute("SELECT version()").fetchone()
        assert row is not None
        return str(row[0])

    def clear(self) -> None:
        with self._connect() as db:
            db.execute("TRUNCATE outbox, outbox_delivery, relay_pause RESTART IDENTITY")

    def load_pending(
        self,
        count: int,
        tenants: tuple[str | None, ...] = (None,),
        *,
        sampled: float | None = None,
    ) -> None:
        """``count`` pending rows for each of ``tenants`` (None: the relay's RELAY_TENANT),
        interleaved: the rows of one tenant follow those of the others in turn. ``sampled``:
        each row written inside a span of its own (a trace_context, as a traced producer's),
        this fraction of them in sampled traces."""
        context = "NULL" if sampled is None else TRACE_CONTEXT_SQL
        with self._connect() as db:
            db.execute(
                f"INSERT INTO outbox (event_type, payload, tenant, trace_context) "
                f"SELECT '{EVENT_TYPE}', {PAYLOAD_SQL}, t, {context} "
                f"FROM generate_series(1, %s) g, unnest(%s::text[]) WITH ORDINALITY AS u(t, n) "
                f"ORDER BY g, n",
                (*([] if sampled is None else [sampled]), count, list(tenants)),
            )

    def load_blocked(self, count: int) -> None:
        """A dead row of one ordering key and ``count`` rows of that key behind it, written
        before (and available before) anything else: rows no claim may send, not yet parked."""
        with self._connect() as db:
            db.execute(
                f"INSERT INTO outbox (event_type, payload, ordering_key, status, last_error) "
                f"VALUES ('{EVENT_TYPE}', {PAYLOAD_SQL}, 'bench-dead', 'dead', 'bench')"
            )
            db.execute(
                f"INSERT INTO outbox (event_type, payload, ordering_key, available_at) "
                f"SELECT '{EVENT_TYPE}', {PAYLOAD_SQL}, 'bench-dead', now() - interval '1 hour' "
                f"FROM generate_series(1, %s)",
                (count,),
            )

    def load_published(self, count: int) -> None:
        """Rows already delivered, with their delivery-log rows, as months of traffic leave."""
        with self._connect() as db:
            db.execute(
                f"INSERT INTO outbox (event_type, payload, status, attempts, created_at, "
                f"    published_at, event_api_id, last_http_status) "
                f"SELECT '{EVENT_TYPE}', {PAYLOAD_SQL}, 'published', 1, "
                f"    now() - interval '1 day', now() - interval '1 day', g::text, 201 "
                f"FROM generate_series(1, %s) g",
                (count,),
            )
            db.execute(
                "INSERT INTO outbox_delivery (outbox_id, attempt, attempted_at, http_status, "
                "    latency_ms, outcome, event_api_id, worker) "
                "SELECT id, 1, published_at, 201, 1.5, 'created', event_api_id, 'preloaded' "
                "FROM outbox WHERE status = 'published'"
            )

    def vacuum_analyze(self) -> None:
        """Bring a freshly loaded state to rest: vacuumed, analysed, and checkpointed, so the
        run that follows does not pay for the load's checkpoint and full-page writes."""
        with self._connect() as db:
            db.execute("VACUUM ANALYZE outbox")
            db.execute("VACUUM ANALYZE outbox_delivery")
            db.execute("CHECKPOINT")

    def counts(self) -> dict[str, int]:
        with self._connect() as db:
            rows = db.execute("SELECT status, count(*) FROM outbox GROUP BY status").fetchall()
        return {str(status): int(str(count)) for status, count in rows}

    def delivery_summary(self) -> tuple[int, int]:
        """Delivery-log rows, and the most attempts any row used."""
        with self._connect() as db:
            logged = db.execute("SELECT count(*) FROM outbox_delivery").fetchone()
            attempts = db.execute("SELECT coalesce(max(attempts), 0) FROM outbox").fetchone()
        assert logged is not None
        assert attempts is not None
        return int(str(logged[0])), int(str(attempts[0]))

    def span(self) -> Span:
        """The relay's publishing window as the database recorded it (published_at is the
        record statement's now(), so this is slightly later than the partner saw it)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT count(*), extract(epoch FROM max(published_at) - min(published_at)) "
                "FROM outbox WHERE status = 'published' "
                "AND published_at > now() - interval '1 hour'"  # not the preloaded rows
            ).fetchone()
        assert row is not None
        return Span(int(str(row[0])), float(str(row[1] or 0)))

    def request_ms_p50(self) -> float:
        """Median publish request time the relay logged (Publisher's own measurement)."""
        with self._connect() as db:
            row = db.execute(
                "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY latency_ms) "
                "FROM outbox_delivery WHERE worker <> 'preloaded'"
            ).fetchone()
        assert row is not None
        return round(float(str(row[0] or 0)), 2)

    def transactions(self) -> int:
        """Transactions committed in this database so far (pg_stat_database.xact_commit).

        Every statement the relay sends outside an explicit transaction is one; so is every
        asyncpg pool release (its reset query). Backends report at exit or when idle.
        """
        with self._connect() as db:
            row = db.execute(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()
        assert row is not None
        return int(str(row[0]))

    def explain_claim(self, limit: int, *, generic: bool = False, jit: bool = True) -> str:
        """EXPLAIN (ANALYZE, BUFFERS) of the relay's claim statement, rolled back afterwards.

        ``generic``: the plan PostgreSQL would cache for the prepared statement (asyncpg
        prepares every statement) instead of planning it for each run's parameters.
        ``jit``: the server default (on) or off. Costs are shown: without them PostgreSQL
        leaves out the JIT summary.
        """
        claim = Queries("public").claim
        with psycopg.connect(self.url) as db:
            db.execute(
                "PREPARE bench_claim "
                "(int, text, text, text, boolean, float8, bigint, text, int, text[]) "
                f"AS {claim}",
                prepare=False,
            )
            mode = "force_generic_plan" if generic else "force_custom_plan"
            db.execute(f"SET LOCAL plan_cache_mode = {mode}")
            db.execute(f"SET LOCAL jit = {'on' if jit else 'off'}")
            rows = db.execute(
                "EXPLAIN (ANALYZE, BUFFERS) EXECUTE bench_claim "
                f"({int(limit)}, 'bench-explain', 'dk', 'abcinsurance', true, 60, {1 << 32}, "
                f"'', {2 * int(limit)}, '{{}}')"
            ).fetchall()
            db.rollback()
        return "\n".join(str(row[0]) for row in rows)
