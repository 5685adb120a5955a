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
            ), log AS (
                DELETE FROM "{s}".outbox_delivery d USING doomed WHERE d.outbox_id = doomed.id
            )
            DELETE FROM "{s}".outbox o USING doomed WHERE o.id = doomed.id"""
