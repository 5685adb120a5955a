"""Every SQL statement the relay runs, named and commented.

Statements are written for asyncpg (``$n`` parameters) and formatted once per schema. Only
``relay.outbox`` runs them.
"""

from __future__ import annotations

from dataclasses import dataclass

# The advisory-lock class that guards ordering keys; migration 0001 uses the same number in the
# insert trigger, where a producer takes the same lock in shared mode before drawing its id.
ORDERING_LOCK_CLASS = 72_616_901
NOTIFY_CHANNEL = "relay_outbox"


def _ready_rows(schema: str, status_clause: str, order: str) -> str:
    """Rows this worker may take now, locked, skipping rows other replicas hold.

    A keyed row is eligible only when it is the earliest unfinished row of its key and no open
    transaction is still inserting into that key (see the insert trigger in migration 0001).
    Rows of a paused route, or every row while a global pause is active, are left alone.
    """
    return f"""
        SELECT o.id FROM "{schema}".outbox o
        WHERE {status_clause}
          AND NOT EXISTS (
              SELECT 1 FROM "{schema}".relay_pause p
              WHERE p.until > now()
                AND p.route IN ('*', coalesce(o.country, $3) || '/' || coalesce(o.tenant, $4)))
          AND (o.ordering_key IS NULL OR (
              NOT EXISTS (
                  SELECT 1 FROM "{schema}".outbox e
                  WHERE e.ordering_key = o.ordering_key AND e.id < o.id
                    AND e.status <> 'published' AND (e.status <> 'dead' OR $5))
              AND pg_try_advisory_xact_lock({ORDERING_LOCK_CLASS}, hashtext(o.ordering_key))))
        ORDER BY {order}
        LIMIT $1
        FOR UPDATE OF o SKIP LOCKED"""


@dataclass(frozen=True, slots=True)
class Queries:
    schema: str

    @property
    def insert(self) -> str:
        """The producer's INSERT. The payload travels as JSON text and is cast to jsonb."""
        return f"""
            INSERT INTO "{self.schema}".outbox (event_type, payload, tenant, country, ordering_key)
            VALUES ($1, $2::jsonb, $3, $4, $5)
            RETURNING id"""

    @property
    def claim(self) -> str:
        """Claim up to $1 rows for worker $2 with a lease of $6 seconds, in one statement.

        Rows whose lease expired (their worker died) come back here first, then pending rows
        in the order they became available. Committed before any HTTP call is made.
        $3/$4: default country/tenant, $5: whether a dead row blocks its key.
        """
        expired = _ready_rows(
            self.schema, "o.status = 'in_flight' AND o.lease_until <= now()", "o.lease_until"
        )
        pending = _ready_rows(
            self.schema, "o.status = 'pending' AND o.available_at <= now()", "o.available_at, o.id"
        )
        return f"""
            WITH expired AS ({expired}),
                 pending AS ({pending}),
                 chosen AS (
                     SELECT id FROM expired
                     UNION ALL
                     (SELECT id FROM pending)
                     LIMIT $1)
            UPDATE "{self.schema}".outbox o
            SET status = 'in_flight', claimed_by = $2,
                lease_until = now() + $6 * interval '1 second'
            FROM chosen
            WHERE o.id = chosen.id
            RETURNING o.id, o.event_type, o.payload::text AS payload, o.tenant, o.country,
                      o.ordering_key, o.attempts, o.created_at"""

    @property
    def record(self) -> str:
        """Write a batch of outcomes and their delivery-log rows in one statement.

        Fenced on ownership: a row whose lease passed to another worker is not touched, and
        only rows actually updated get a delivery-log row. Returns the ids written.
        Arrays: $1 id, $2 status, $3 attempts, $4 delay seconds (NULL: keep available_at),
        $5 http status, $6 event_api_id, $7 error, $8 latency ms, $9 outcome class,
        $10 attempted_at; $11 this worker.
        """
        s = self.schema
        return f"""
            WITH result AS (
                SELECT * FROM unnest($1::bigint[], $2::text[], $3::int[], $4::float8[],
                                     $5::int[], $6::text[], $7::text[], $8::float8[],
                                     $9::text[], $10::timestamptz[])
                    AS r(id, status, attempts, delay, http_status, event_api_id, error,
                         latency_ms, outcome, attempted_at)
            ), updated AS (
                UPDATE "{s}".outbox o
                SET status = r.status,
                    attempts = r.attempts,
                    available_at = CASE WHEN r.delay IS NULL THEN o.available_at
                                        ELSE now() + r.delay * interval '1 second' END,
                    claimed_by = NULL,
                    lease_until = NULL,
                    published_at = CASE WHEN r.status = 'published' THEN now() END,
                    event_api_id = coalesce(r.event_api_id, o.event_api_id),
                    last_http_status = r.http_status,
                    last_error = r.error
                FROM result r
                WHERE o.id = r.id AND o.claimed_by = $11 AND o.status = 'in_flight'
                RETURNING o.id
            ), logged AS (
                INSERT INTO "{s}".outbox_delivery (outbox_id, attempt, attempted_at,
                    http_status, latency_ms, outcome, event_api_id, error, worker)
                SELECT r.id, r.attempts, r.attempted_at, r.http_status, r.latency_ms,
                       r.outcome, r.event_api_id, r.error, $11
                FROM result r JOIN updated u ON u.id = r.id
            )
            SELECT id FROM updated"""

    @property
    def release(self) -> str:
        """Give rows back unsent (shutdown): pending again now, no attempt used."""
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', claimed_by = NULL, lease_until = NULL,
                available_at = now()
            WHERE id = ANY($1::bigint[]) AND claimed_by = $2 AND status = 'in_flight'"""

    @property
    def release_all(self) -> str:
        """Give back every row this worker still holds."""
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', claimed_by = NULL, lease_until = NULL,
                available_at = now()
            WHERE status = 'in_flight' AND claimed_by = $1"""

    @property
    def release_orphans(self) -> str:
        """Give back rows leased to this worker that it does not know it holds.

        A claim whose connection dies after COMMIT but before the reply leaves such rows;
        without this they would wait for their lease to run out.
        """
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', claimed_by = NULL, lease_until = NULL
            WHERE status = 'in_flight' AND claimed_by = $1 AND NOT (id = ANY($2::bigint[]))"""

    @property
    def set_pause(self) -> str:
        """Hold every replica off a route ('*' for all) until now + $2 seconds."""
        return f"""
            INSERT INTO "{self.schema}".relay_pause (route, until, kind, reason, set_by)
            VALUES ($1, now() + $2 * interval '1 second', $3, $4, $5)
            ON CONFLICT (route) DO UPDATE
            SET until = greatest(relay_pause.until, excluded.until), kind = excluded.kind,
                reason = excluded.reason, set_by = excluded.set_by, set_at = now()"""

    @property
    def clear_pause(self) -> str:
        """A success on a route ends its pause (and the global one)."""
        return f"""
            DELETE FROM "{self.schema}".relay_pause WHERE route = ANY($1::text[])"""

    @property
    def pauses(self) -> str:
        """Every pause row, expired or not, with the seconds it has left."""
        return f"""
            SELECT route, kind, reason, set_by,
                   greatest(extract(epoch FROM until - now()), 0)::float8 AS remaining,
                   extract(epoch FROM until - set_at)::float8 AS duration
            FROM "{self.schema}".relay_pause"""

    @property
    def unfinished(self) -> str:
        """For --drain: rows still to send, their earliest availability, and lease state.

        A row held back by a dead row of its key (when dead rows block) is not counted: it
        cannot move until an operator requeues the dead row.
        """
        s = self.schema
        return f"""
            SELECT count(*) AS remaining,
                   greatest(extract(epoch FROM min(CASE WHEN o.status = 'pending'
                       THEN o.available_at ELSE o.lease_until END) - now()), 0)::float8
                       AS next_in
            FROM "{s}".outbox o
            WHERE o.status IN ('pending', 'in_flight')
              AND NOT ($1 AND o.ordering_key IS NOT NULL AND EXISTS (
                  SELECT 1 FROM "{s}".outbox d
                  WHERE d.ordering_key = o.ordering_key AND d.id < o.id
                    AND d.status = 'dead'))"""

    @property
    def queue_sample(self) -> str:
        """Queue depth and oldest unfinished age, for the sampled gauges."""
        return f"""
            SELECT count(*) AS depth,
                   coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest
            FROM "{self.schema}".outbox WHERE status IN ('pending', 'in_flight')"""

    @property
    def purge_published(self) -> str:
        """Delete one small batch of published rows older than $1 seconds, with their log.

        Small batches in their own transactions never hold locks for long.
        """
        s = self.schema
        return f"""
            WITH doomed AS (
                SELECT id FROM "{s}".outbox
                WHERE status = 'published'
                  AND published_at < now() - $1 * interval '1 second'
                ORDER BY id
                LIMIT $2
                FOR UPDATE SKIP LOCKED
            ), batch AS (
                -- An array, so both deletes are index lookups: joining the CTE instead made
                -- the planner scan both tables whole for every batch.
                SELECT coalesce(array_agg(id), '{{}}') AS ids FROM doomed
            ), log AS (
                DELETE FROM "{s}".outbox_delivery d USING batch WHERE d.outbox_id = ANY(batch.ids)
            )
            DELETE FROM "{s}".outbox o USING batch WHERE o.id = ANY(batch.ids)"""


# Operator statements ---------------------------------------------------------------------------


def _last_attempt(schema: str) -> str:
    """A LATERAL join giving each row its latest delivery-log entry as ``last``.

    The delivery log's (outbox_id, attempted_at) index answers it with one index probe per row.
    """
    return f"""
        LEFT JOIN LATERAL (
            SELECT d.outcome, d.attempted_at FROM "{schema}".outbox_delivery d
            WHERE d.outbox_id = o.id
            ORDER BY d.attempted_at DESC, d.id DESC
            LIMIT 1) last ON true"""


# A dead row's error class: the outcome of its last attempt, or its last HTTP status when the
# delivery log holds nothing for it.
_ERROR_CLASS = "coalesce(last.outcome, 'http_' || o.last_http_status, 'unknown')"
# When a dead row died: its last attempt (every attempt is logged), else when it was written.
_DIED_AT = "coalesce(last.attempted_at, o.created_at)"


def _dead_rows(schema: str, columns: str) -> str:
    """Dead rows chosen by an operator: $1 ids, $2 event type, $3 died at or after,
    $4 died before. A NULL parameter does not filter."""
    return f"""
        SELECT {columns}
        FROM "{schema}".outbox o {_last_attempt(schema)}
        WHERE o.status = 'dead'
          AND ($1::bigint[] IS NULL OR o.id = ANY($1::bigint[]))
          AND ($2::text IS NULL OR o.event_type = $2::text)
          AND ($3::timestamptz IS NULL OR {_DIED_AT} >= $3::timestamptz)
          AND ($4::timestamptz IS NULL OR {_DIED_AT} < $4::timestamptz)"""


_DEAD_COLUMNS = f"""o.id, o.event_type, o.tenant, o.country, o.ordering_key, o.attempts,
    o.created_at, o.last_http_status, o.last_error, {_ERROR_CLASS} AS error_class,
    {_DIED_AT} AS died_at"""


@dataclass(frozen=True, slots=True)
class AdminQueries:
    """What ``relay status``, ``relay dead``, ``relay requeue`` and ``relay purge`` run.

    None of these holds a lock a relay waits on for long: the reports read a snapshot, requeue
    touches only dead rows (which no relay claims), and purge reuses ``Queries.purge_published``
    in small batches.
    """

    schema: str

    @property
    def now(self) -> str:
        """The database's clock: ages and cut-offs are measured against it, not ours."""
        return "SELECT now() AS now"

    @property
    def status_counts(self) -> str:
        """Rows per status. Counts the whole table: an operator's question, not a probe."""
        return f"""
            SELECT status, count(*) AS rows FROM "{self.schema}".outbox GROUP BY status"""

    @property
    def unfinished_summary(self) -> str:
        """The oldest row not yet published or dead, and the rows waiting for a retry (pending
        after at least one attempt) with the earliest time one of them may be tried."""
        return f"""
            SELECT min(created_at) AS oldest_created_at,
                   extract(epoch FROM now() - min(created_at))::float8 AS oldest_age,
                   count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying,
                   min(available_at) FILTER (WHERE status = 'pending' AND attempts > 0)
                       AS next_retry_at
            FROM "{self.schema}".outbox
            WHERE status IN ('pending', 'in_flight')"""

    @property
    def retrying_rows(self) -> str:
        """The $1 retrying rows due soonest, with the class of their last failure."""
        return f"""
            SELECT o.id, o.event_type, o.attempts, o.available_at AS next_attempt_at,
                   o.last_http_status, {_ERROR_CLASS} AS error_class
            FROM "{self.schema}".outbox o {_last_attempt(self.schema)}
            WHERE o.status = 'pending' AND o.attempts > 0
            ORDER BY o.available_at, o.id
            LIMIT $1"""

    @property
    def blocked_by_dead(self) -> str:
        """Pending rows held back by an earlier dead row of their ordering key (they move only
        once that row is requeued, when RELAY_DEAD_BLOCKS_KEY is on)."""
        return f"""
            SELECT count(*) FROM "{self.schema}".outbox o
            WHERE o.status = 'pending' AND o.ordering_key IS NOT NULL
              AND EXISTS (
                  SELECT 1 FROM "{self.schema}".outbox d
                  WHERE d.ordering_key = o.ordering_key AND d.id < o.id
                    AND d.status = 'dead')"""

    @property
    def dead_by_event_type(self) -> str:
        """Dead rows per event type (the partial dead index finds them)."""
        return f"""
            SELECT event_type AS key, count(*) AS rows FROM "{self.schema}".outbox
            WHERE status = 'dead' GROUP BY event_type ORDER BY rows DESC, key"""

    @property
    def dead_by_error_class(self) -> str:
        """Dead rows per class of their last error (the outcome of the last attempt)."""
        return f"""
            SELECT {_ERROR_CLASS} AS key, count(*) AS rows
            FROM "{self.schema}".outbox o {_last_attempt(self.schema)}
            WHERE o.status = 'dead'
            GROUP BY 1 ORDER BY rows DESC, key"""

    @property
    def last_published(self) -> str:
        """When the most recent publish was recorded.

        Read backwards along the delivery log's primary key (log rows are written in the order
        outcomes are recorded, and only a publish carries an event_api_id), so this stops at
        the first publish it meets instead of scanning every published row.
        """
        return f"""
            SELECT o.published_at FROM "{self.schema}".outbox_delivery d
            JOIN "{self.schema}".outbox o ON o.id = d.outbox_id AND o.status = 'published'
            WHERE d.event_api_id IS NOT NULL
            ORDER BY d.id DESC
            LIMIT 1"""

    @property
    def active_pauses(self) -> str:
        """Pauses still holding the relays, longest first."""
        return f"""
            SELECT route, kind, reason, set_by, set_at, until,
                   extract(epoch FROM until - now())::float8 AS remaining
            FROM "{self.schema}".relay_pause
            WHERE until > now()
            ORDER BY until DESC, route"""

    @property
    def dead_list(self) -> str:
        """Dead rows by $2 event type and $3 death time, oldest id first, at most $5."""
        return f"""{_dead_rows(self.schema, _DEAD_COLUMNS)}
            ORDER BY o.id
            LIMIT $5"""

    @property
    def row(self) -> str:
        """One row in full, payload included (only ``relay dead show`` prints a payload)."""
        return f"""
            SELECT o.id, o.event_type, o.payload::text AS payload, o.tenant, o.country,
                   o.ordering_key, o.status, o.attempts, o.available_at, o.created_at,
                   o.published_at, o.event_api_id, o.last_http_status, o.last_error,
                   o.claimed_by, o.lease_until, {_ERROR_CLASS} AS error_class,
                   last.attempted_at AS last_attempt_at
            FROM "{self.schema}".outbox o {_last_attempt(self.schema)}
            WHERE o.id = $1"""

    @property
    def deliveries(self) -> str:
        """The delivery log of row $1, in the order the attempts were made."""
        return f"""
            SELECT attempt, attempted_at, http_status, latency_ms, outcome, event_api_id,
                   error, worker
            FROM "{self.schema}".outbox_delivery
            WHERE outbox_id = $1
            ORDER BY attempted_at, id"""

    @property
    def requeue_preview(self) -> str:
        """The dead rows a requeue with the same parameters would reset (for --dry-run)."""
        return f"""{_dead_rows(self.schema, "o.id")}
            ORDER BY o.id"""

    @property
    def requeue(self) -> str:
        """Give dead rows a fresh start: pending now, attempts back to 0, ids kept.

        Ids are kept so a requeued row keeps its place in its ordering key. last_error and
        last_http_status stay until the next attempt overwrites them (the delivery log keeps
        every attempt anyway). Parameters as in ``requeue_preview``; ``status = 'dead'`` is
        checked again on the locked row, so a concurrent requeue cannot reset a row twice.
        """
        return f"""
            WITH chosen AS ({_dead_rows(self.schema, "o.id")})
            UPDATE "{self.schema}".outbox o
            SET status = 'pending', attempts = 0, available_at = now(),
                claimed_by = NULL, lease_until = NULL
            FROM chosen
            WHERE o.id = chosen.id AND o.status = 'dead'
            RETURNING o.id"""

    @property
    def notify(self) -> str:
        """Wake every listening relay of schema $1, as an insert does (sent at COMMIT)."""
        return f"SELECT pg_notify('{NOTIFY_CHANNEL}', $1)"
