"""Every SQL statement the engine and the producer API run, named and commented.

Statements are written for asyncpg (``$n`` parameters) and formatted once per schema. Only
``relay.outbox`` runs them. The operator commands' statements are in ``relay.ops.queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.tracing import MAX_TRACEPARENT, MAX_TRACESTATE

# The advisory-lock class that guards ordering keys; migration 0001 uses the same number in the
# insert trigger, where a producer takes the same lock in shared mode before drawing its id.
ORDERING_LOCK_CLASS = 72_616_901
# The advisory-lock class of liveness locks: each relay process holds (LIVENESS_LOCK_CLASS,
# incarnation) on its long-lived connection for as long as it lives.
LIVENESS_LOCK_CLASS = 72_616_902
NOTIFY_CHANNEL = "relay_outbox"
# The envelope fields the claim reads out of the payload for validation, so the relay never
# has to parse a payload of unbounded depth.
ENVELOPE_FIELDS = ("eventType", "payloadVersion", "correlationId", "timestamp")
# A correlationId as the producer API accepts it (``producer.UUID_PATTERN``), for ``~*``.
UUID_SQL = "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"


def _route(alias: str, country: str = "$3", tenant: str = "$4") -> str:
    """A row's route as pauses name it: its country and tenant, or the relay's defaults."""
    return f"coalesce({alias}.country, {country}) || '/' || coalesce({alias}.tenant, {tenant})"


def _unpaused(schema: str, alias: str) -> str:
    """The row's route has no pause in force, and no global pause is in force."""
    return f"""NOT EXISTS (
              SELECT 1 FROM "{schema}".relay_pause p
              WHERE p.until > now() AND p.route IN ('*', {_route(alias)}))"""


def _key_free(schema: str, alias: str) -> str:
    """A keyed row may go: its key's advisory lock is free, and no other row of its key is in
    flight and no earlier one unfinished.

    The key's advisory lock is taken first: while any producer transaction for that key is
    open (it holds the lock shared, see migration 0001's insert trigger) the row waits. Only
    once the lock is held does ``outbox_key_ready`` look for earlier rows, and it is VOLATILE,
    so it reads a snapshot taken after the lock: a producer that committed a smaller id in the
    meantime is seen. CASE fixes that order of evaluation.
    """
    key = f"{alias}.ordering_key"
    return f"""CASE
                WHEN {key} IS NULL THEN true
                WHEN pg_try_advisory_xact_lock({ORDERING_LOCK_CLASS}, hashtext({key}))
                    THEN "{schema}".outbox_key_ready({alias}.ordering_key, {alias}.id, $5)
                ELSE false
              END"""


def _expired_rows(schema: str) -> str:
    """Rows in flight whose lease ran out (their holder died: see ``rescue``), locked,
    skipping rows other replicas hold; each must be free to go by its key."""
    return f"""
        SELECT o.id FROM "{schema}".outbox o
        WHERE o.status = 'in_flight' AND (o.lease_until IS NULL OR o.lease_until <= now())
          AND {_unpaused(schema, "o")}
          AND {_key_free(schema, "o")}
        ORDER BY o.lease_until NULLS FIRST, o.id
        LIMIT $1
        FOR UPDATE OF o SKIP LOCKED"""


def _key_heads(schema: str) -> str:
    """The first pending row of up to $9 ordering keys, stepping through the keys in order
    from just after key $8 and round to the start (one index descent per key): a key with a
    million rows waiting behind a dead or an in-flight row costs one step, never a walk. The
    step number ``n`` says where the claim got to; the next claim starts after its last key,
    so every key's turn comes, however many keys cannot go."""
    next_key = f"""SELECT ordering_key, id FROM "{schema}".outbox
                  WHERE status = 'pending' AND ordering_key IS NOT NULL"""
    return f"""
        after_cursor(k, id, n) AS (
            (SELECT a.ordering_key, a.id, 1
             FROM ({next_key} AND ordering_key > $8 ORDER BY ordering_key, id LIMIT 1) a)
            UNION ALL
            SELECT nxt.ordering_key, nxt.id, a.n + 1
            FROM after_cursor a, LATERAL (
                {next_key} AND ordering_key > a.k ORDER BY ordering_key, id LIMIT 1) nxt
            WHERE a.n < $9
        ), from_start(k, id, n) AS (
            (SELECT f.ordering_key, f.id, (SELECT count(*) FROM after_cursor) + 1
             FROM ({next_key} AND ordering_key <= $8 ORDER BY ordering_key, id LIMIT 1) f)
            UNION ALL
            SELECT nxt.ordering_key, nxt.id, f.n + 1
            FROM from_start f, LATERAL (
                {next_key} AND ordering_key > f.k AND ordering_key <= $8
                ORDER BY ordering_key, id LIMIT 1) nxt
            WHERE f.n < $9
        ), heads AS (
            SELECT k, id, n FROM after_cursor
            UNION ALL
            SELECT k, id, n FROM from_start WHERE (SELECT count(*) FROM after_cursor) < $9
        )"""


def _envelope_ok(doc: str, event_type: str) -> str:
    """Whether the payload ``doc`` has the envelope every row an application writes right
    has: a JSON object whose eventType, payloadVersion, timestamp and correlationId are
    non-empty JSON strings, eventType equal to the row's ``event_type`` and correlationId a
    UUID (in the 8-4-4-4-12 form, either case). Checked by PostgreSQL, once per row; only a
    row without it has its envelope read out for the reason (``_envelope_columns``)."""
    string = [f"jsonb_typeof({doc} -> '{name}') = 'string'" for name in ENVELOPE_FIELDS]
    return " AND ".join(
        [
            f"jsonb_typeof({doc}) = 'object'",
            *string,
            f"{doc} ->> 'eventType' = {event_type}",
            f"{doc} ->> 'eventType' <> ''",
            f"{doc} ->> 'payloadVersion' <> ''",
            f"{doc} ->> 'timestamp' <> ''",
            f"{doc} ->> 'correlationId' ~* '{UUID_SQL}'",
        ]
    )


def _envelope_columns(doc: str, ok: str) -> str:
    """For each envelope field of a row whose envelope is not right (NULL for the others):
    its JSON type, and its text when it is a JSON string; and the payload's own JSON type."""
    columns = [f"CASE WHEN NOT {ok} THEN jsonb_typeof({doc}) END AS payload_type"]
    for number, name in enumerate(ENVELOPE_FIELDS):
        field = f"{doc} -> '{name}'"
        columns.append(f"CASE WHEN NOT {ok} THEN jsonb_typeof({field}) END AS kind_{number}")
        columns.append(
            f"CASE WHEN NOT {ok} AND jsonb_typeof({field}) = 'string' "
            f"THEN {doc} ->> '{name}' END AS value_{number}"
        )
    return ",\n                   ".join(columns)


def _trace_columns() -> str:
    """The row's stored trace context, read with care: NULL unless the column is an object
    with text where the fields are, and never more than a header could hold."""
    return ",\n                          ".join(
        f"left(o.trace_context ->> '{name}', {limit}) AS {name}"
        for name, limit in (("traceparent", MAX_TRACEPARENT), ("tracestate", MAX_TRACESTATE))
    )


@dataclass(frozen=True, slots=True)
class Queries:
    schema: str

    @property
    def insert(self) -> str:
        """The producer's INSERT. The payload travels as JSON text and is cast to jsonb."""
        return f"""
            INSERT INTO "{self.schema}".outbox
                (event_type, payload, tenant, country, ordering_key, trace_context)
            VALUES ($1, $2::jsonb, $3, $4, $5, $6::jsonb)
            RETURNING id"""

    @property
    def claim(self) -> str:
        """Claim up to $1 rows for claim $7 of worker $2, with a lease of $6 seconds.

        Rows whose lease ran out (their holder died: see ``rescue``) come back first. Then, in
        the order they became available, rows without a key (``outbox_loose_idx``) and the
        first pending row of each of up to $9 keys (``_key_heads``, from after key $8): two
        paths, so neither kind of backlog is walked by the other. Rows of a paused route,
        or every row while a global pause is active, are left alone, and so are the pending
        rows of routes $10, which this process can take no more of now (their allowance is in
        flight: see ``relay.outbox.gate``).

        The claim counts the attempt and, for a row taken back from a holder that stopped,
        the stop. Committed before any HTTP call is made. $3/$4: default country/tenant, $5:
        whether a dead row blocks its key. The payload comes back as the text PostgreSQL
        renders (sent unchanged), with its envelope fields read out for validation.

        Always at least one row: ``next_key`` (where the next claim's step through the keys
        begins) on every row, and a row of NULLs besides it when nothing was claimed.
        """
        s = self.schema
        return f"""
            WITH RECURSIVE {_key_heads(s)},
            expired AS ({_expired_rows(s)}),
            keyed AS (
                SELECT o.id, o.available_at FROM heads h JOIN "{s}".outbox o ON o.id = h.id
                WHERE o.status = 'pending' AND o.available_at <= now()
                  AND {_route("o")} <> ALL($10::text[])
                  AND {_unpaused(s, "o")}
                  AND {_key_free(s, "o")}
                ORDER BY o.available_at, o.id
                LIMIT $1
                FOR UPDATE OF o SKIP LOCKED
            ), loose AS (
                SELECT o.id, o.available_at FROM "{s}".outbox o
                WHERE o.status = 'pending' AND o.ordering_key IS NULL
                  AND o.available_at <= now()
                  AND {_route("o")} <> ALL($10::text[])
                  AND {_unpaused(s, "o")}
                ORDER BY o.available_at, o.id
                LIMIT $1
                FOR UPDATE OF o SKIP LOCKED
            ), chosen AS (
                SELECT id, true AS rescued FROM expired
                UNION ALL
                (SELECT id, false FROM (
                    SELECT id, available_at FROM keyed
                    UNION ALL
                    SELECT id, available_at FROM loose) ready
                 ORDER BY available_at, id)
                LIMIT $1
            ), claimed AS (
                UPDATE "{s}".outbox o
                SET status = 'in_flight', claimed_by = $2, claim_token = $7,
                    lease_until = now() + $6 * interval '1 second',
                    attempts = o.attempts + 1,
                    stops = o.stops + CASE WHEN chosen.rescued THEN 1 ELSE 0 END,
                    blocked_by = NULL
                FROM chosen
                WHERE o.id = chosen.id
                RETURNING o.id, o.claim_token AS token, o.event_type, o.payload AS doc,
                          o.tenant, o.country, o.ordering_key, o.attempts, o.stops,
                          o.created_at, {_trace_columns()}
            )
            SELECT c.id, c.token, c.event_type, c.doc::text AS payload, c.tenant, c.country,
                   c.ordering_key, c.attempts, c.stops, c.created_at, c.traceparent,
                   c.tracestate, e.ok AS envelope_ok,
                   CASE WHEN jsonb_typeof(c.doc -> 'correlationId') = 'string'
                        THEN c.doc ->> 'correlationId' END AS correlation_id,
                   {_envelope_columns("c.doc", "e.ok")},
                   next.key AS next_key
            FROM (SELECT coalesce((SELECT k FROM heads ORDER BY n DESC LIMIT 1), '') AS key) next
            LEFT JOIN (claimed c CROSS JOIN LATERAL (
                SELECT coalesce({_envelope_ok("c.doc", "c.event_type")}, false) AS ok) e) ON true"""

    @property
    def record(self) -> str:
        """Write a batch of outcomes, give-backs included, in one statement.

        Fenced per claim: a row is written only while it is in flight under the claim ($2)
        that produced the result. The one exception is an accepted publish: Scalepoint has the
        event, so its ``_id`` is recorded whatever happened to the row meanwhile (another claim
        that holds it then finds its own fence gone). Delivery-log rows are written for
        attempts ($12) that were written or accepted, once per claim: the same result written
        again (a retry after a lost answer) logs nothing more. Returns the ids written.
        Arrays: $1 id, $2 claim token, $3 status, $4 attempts, $5 delay seconds (NULL: keep
        available_at), $6 http status, $7 event_api_id, $8 error, $9 latency ms, $10 outcome
        class, $11 attempted_at (epoch seconds: a float costs asyncpg far less to send than a
        timestamp), $12 whether the attempt is logged; $13 this worker.
        """
        s = self.schema
        return f"""
            WITH result AS (
                SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::int[],
                                     $5::float8[], $6::int[], $7::text[], $8::text[],
                                     $9::float8[], $10::text[], $11::float8[],
                                     $12::boolean[])
                    AS r(id, token, status, attempts, delay, http_status, event_api_id, error,
                         latency_ms, outcome, attempted_at, logged)
            ), updated AS (
                UPDATE "{s}".outbox o
                SET status = r.status,
                    attempts = CASE WHEN o.claim_token = r.token THEN r.attempts
                                    ELSE o.attempts END,
                    available_at = CASE WHEN r.delay IS NULL THEN o.available_at
                                        ELSE now() + r.delay * interval '1 second' END,
                    claimed_by = NULL,
                    lease_until = NULL,
                    published_at = CASE WHEN r.status = 'published' THEN now() END,
                    event_api_id = coalesce(r.event_api_id, o.event_api_id),
                    last_http_status = CASE WHEN r.logged THEN r.http_status
                                            ELSE o.last_http_status END,
                    last_error = CASE WHEN r.logged THEN r.error ELSE o.last_error END
                FROM result r
                WHERE o.id = r.id
                  AND ((o.status = 'in_flight' AND o.claim_token = r.token)
                       OR (r.status = 'published' AND o.status <> 'published'))
                RETURNING o.id
            ), logged AS (
                INSERT INTO "{s}".outbox_delivery (outbox_id, attempt, attempted_at,
                    http_status, latency_ms, outcome, event_api_id, error, worker, claim_token)
                SELECT r.id, r.attempts, to_timestamp(r.attempted_at), r.http_status, r.latency_ms,
                       r.outcome, r.event_api_id, r.error, $13, r.token
                FROM result r
                WHERE r.logged
                  AND (r.status = 'published' OR r.id IN (SELECT id FROM updated))
                ON CONFLICT (outbox_id, claim_token) DO NOTHING
            )
            SELECT id FROM updated"""

    @property
    def extend(self) -> str:
        """Extend the leases of held rows ($1 ids under claims $2) to now + $3 seconds.

        Returns the ids still held: a row missing from the answer was taken by another claim
        (its lease had run out) and must not be sent by this one.
        """
        return f"""
            UPDATE "{self.schema}".outbox o
            SET lease_until = now() + $3 * interval '1 second'
            FROM unnest($1::bigint[], $2::bigint[]) AS h(id, token)
            WHERE o.id = h.id AND o.claim_token = h.token AND o.status = 'in_flight'
            RETURNING o.id"""

    @property
    def rescue(self) -> str:
        """End the leases of rows held by processes that are gone.

        A live relay holds its liveness lock (LIVENESS_LOCK_CLASS, incarnation) and writes its
        incarnation into the high half of every claim token. A row in flight under an
        incarnation whose lock nobody holds belongs to a dead process: its lease is ended now
        so the next claim takes it, instead of waiting out the lease. One read of pg_locks.
        Never the rows of incarnation $1, the caller's own: while its liveness connection is
        being made again its lock is briefly free, yet it still holds those rows.
        """
        return f"""
            WITH live AS (
                SELECT coalesce(array_agg(l.objid::bigint), '{{}}') AS incarnations
                FROM pg_locks l
                WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
                  AND l.classid = {LIVENESS_LOCK_CLASS}
                  AND l.database = (SELECT oid FROM pg_database
                                    WHERE datname = current_database())
            )
            UPDATE "{self.schema}".outbox o
            SET lease_until = now()
            FROM live
            WHERE o.status = 'in_flight' AND o.lease_until > now()
              AND o.claim_token IS NOT NULL
              AND NOT (o.claim_token >> 32) = ANY(live.incarnations)
              AND (o.claim_token >> 32) <> $1
            RETURNING o.id"""

    @property
    def release_all(self) -> str:
        """Give back every row worker $1 still holds (the demo, after its relay stopped)."""
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', claimed_by = NULL, lease_until = NULL,
                attempts = greatest(attempts - 1, 0), available_at = now()
            WHERE status = 'in_flight' AND claimed_by = $1"""

    @property
    def release_orphans(self) -> str:
        """Give back rows in flight under incarnation $1 that are not among $2 (held ids).

        A claim whose connection dies after COMMIT but before the reply leaves such rows;
        without this they would wait for their lease to run out.
        """
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', claimed_by = NULL, lease_until = NULL,
                attempts = greatest(attempts - 1, 0)
            WHERE status = 'in_flight' AND (claim_token >> 32) = $1
              AND NOT (id = ANY($2::bigint[]))"""

    @property
    def park_behind_dead(self) -> str:
        """Block pending rows queued behind dead rows of their key ($1: dead ids, or NULL for
        every dead keyed row), so that claims stop walking past them.

        The dead rows are locked FOR SHARE first, in their own statement: a requeue (which
        updates a dead row) then either runs before (and this finds the row no longer dead)
        or waits for this transaction and unblocks what it blocked. See ``park_behind``.
        """
        return f"""
            SELECT id, ordering_key FROM "{self.schema}".outbox
            WHERE status = 'dead' AND ordering_key IS NOT NULL
              AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
            ORDER BY id
            FOR SHARE"""

    @property
    def park_behind(self) -> str:
        """The second statement of ``park_behind_dead``: block at most $3 pending rows of keys
        $1 whose id is above the key's dead row $2 (found through ``outbox_head_idx``)."""
        s = self.schema
        return f"""
            UPDATE "{s}".outbox o
            SET status = 'blocked', blocked_by = 'dead_row'
            WHERE o.id IN (
                SELECT b.id
                FROM unnest($1::text[], $2::bigint[]) AS d(ordering_key, id),
                     LATERAL (SELECT p.id FROM "{s}".outbox p
                              WHERE p.status = 'pending' AND p.ordering_key = d.ordering_key
                                AND p.id > d.id
                              ORDER BY p.ordering_key, p.id
                              LIMIT $3) b
                LIMIT $3)
              AND o.status = 'pending'"""

    @property
    def unpark_stale(self) -> str:
        """Unblock rows whose reason is gone: a dead_row row with no earlier dead row of its
        key (or every such row when $3, i.e. dead rows do not block), a route_pause row whose
        route has no pause. A safety net run at start-up; normal unblocking happens where the
        reason ends (requeue, pause cleared)."""
        s = self.schema
        return f"""
            UPDATE "{s}".outbox o
            SET status = 'pending', blocked_by = NULL, available_at = now()
            WHERE o.status = 'blocked'
              AND CASE o.blocked_by
                    WHEN 'dead_row' THEN $3 OR NOT EXISTS (
                        SELECT 1 FROM "{s}".outbox d
                        WHERE d.ordering_key = o.ordering_key AND d.id < o.id
                          AND d.status = 'dead')
                    ELSE NOT EXISTS (
                        SELECT 1 FROM "{s}".relay_pause p WHERE p.route = {_route("o", "$1", "$2")})
                  END"""

    @property
    def lock_pause(self) -> str:
        """Lock route $1's pause row if it is still in force (first statement of parking).

        Parking a route's rows and clearing its pause both lock the pause row first, so a
        clear waits for a parking in progress and then unblocks everything it blocked.
        """
        return f"""
            SELECT route FROM "{self.schema}".relay_pause
            WHERE route = $1 AND until > now()
            FOR UPDATE"""

    @property
    def park_route(self) -> str:
        """Block the pending rows of route $1 ($2/$3: default country/tenant)."""
        return f"""
            UPDATE "{self.schema}".outbox o
            SET status = 'blocked', blocked_by = 'route_pause'
            WHERE o.status = 'pending' AND {_route("o", "$2", "$3")} = $1"""

    @property
    def unpark_route(self) -> str:
        """Unblock at most $4 rows of route $1 ($2/$3: defaults), oldest first: one when its
        pause ran out (the probe), all of them when it was lifted."""
        s = self.schema
        return f"""
            UPDATE "{s}".outbox o
            SET status = 'pending', blocked_by = NULL, available_at = now()
            WHERE o.id IN (
                SELECT b.id FROM "{s}".outbox b
                WHERE b.status = 'blocked' AND b.blocked_by = 'route_pause'
                  AND {_route("b", "$2", "$3")} = $1
                ORDER BY b.id
                LIMIT $4
                FOR UPDATE SKIP LOCKED)"""

    @property
    def set_pause(self) -> str:
        """Hold every replica off a route ('*' for all) until now + $2 seconds.

        A pause already in force is kept if it lasts longer.
        """
        return f"""
            INSERT INTO "{self.schema}".relay_pause (route, until, kind, reason, set_by)
            VALUES ($1, now() + $2 * interval '1 second', $3, $4, $5)
            ON CONFLICT (route) DO UPDATE
            SET until = greatest(relay_pause.until, excluded.until), kind = excluded.kind,
                reason = excluded.reason, set_by = excluded.set_by, set_at = now()"""

    @property
    def renew_pause(self) -> str:
        """Pause route $1 again after its probe failed, but only if its pause has run out.

        When several replicas probe at once, the first failure renews the pause and the other
        failures find it in force and leave it: the pause doubles once per probe, not once per
        replica. Returns the route when this call renewed it.
        """
        return f"""
            INSERT INTO "{self.schema}".relay_pause (route, until, kind, reason, set_by)
            VALUES ($1, now() + $2 * interval '1 second', $3, $4, $5)
            ON CONFLICT (route) DO UPDATE
            SET until = excluded.until, kind = excluded.kind, reason = excluded.reason,
                set_by = excluded.set_by, set_at = now()
            WHERE relay_pause.until <= now()
            RETURNING route"""

    @property
    def clear_pause(self) -> str:
        """End the pauses of routes $1 (a success, or an operator); returns the routes that had
        one. Locks each pause row, so a parking in progress finishes first."""
        return f"""
            DELETE FROM "{self.schema}".relay_pause WHERE route = ANY($1::text[])
            RETURNING route"""

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
        """For --drain: the rows still to send, judged by what they wait for, grouped.

        ``verdict`` is ``wait`` for rows that may go within $4 seconds (due, or due soon: a
        retry, a throttle, a route's circuit pause, a row in flight), ``behind_dead`` for rows
        held back by a dead row of their key (when dead rows block, $1), ``refused`` for rows
        of a route (or of every route) paused after a refusal, and ``later`` for rows not due
        within $4 seconds; the last two by route, with the pause's kind and reason. $2/$3:
        default country/tenant. ``next_in``: seconds until the group's first row is due.
        """
        s = self.schema
        return f"""
            WITH unfinished AS (
                SELECT o.status, o.available_at, o.lease_until, {_route("o", "$2", "$3")} AS route,
                       $1 AND o.ordering_key IS NOT NULL AND EXISTS (
                           SELECT 1 FROM "{s}".outbox d
                           WHERE d.ordering_key = o.ordering_key AND d.id < o.id
                             AND d.status = 'dead') AS behind_dead
                FROM "{s}".outbox o
                WHERE o.status IN ('pending', 'in_flight', 'blocked')
            ), judged AS (
                SELECT u.route, u.status, u.behind_dead, p.kind, p.reason,
                       CASE WHEN u.status = 'in_flight' THEN coalesce(u.lease_until, now())
                            WHEN u.status = 'pending'
                                THEN greatest(u.available_at, coalesce(p.until, now()))
                            ELSE coalesce(p.until, now()) END AS due
                FROM unfinished u
                LEFT JOIN LATERAL (
                    SELECT kind, reason, until FROM "{s}".relay_pause p
                    WHERE p.route IN ('*', u.route)
                    ORDER BY p.kind = 'configuration' DESC, p.until DESC
                    LIMIT 1) p ON true
            ), classed AS (
                SELECT CASE WHEN behind_dead THEN 'behind_dead'
                            WHEN status = 'in_flight' THEN 'wait'
                            WHEN kind = 'configuration' THEN 'refused'
                            WHEN due > now() + $4 * interval '1 second' THEN 'later'
                            ELSE 'wait' END AS verdict,
                       route, kind, reason, due
                FROM judged
            )
            SELECT verdict,
                   CASE WHEN verdict IN ('refused', 'later') THEN route END AS route,
                   count(*) AS rows, max(kind) AS kind, max(reason) AS reason,
                   greatest(extract(epoch FROM min(due) - now()), 0)::float8 AS next_in
            FROM classed
            GROUP BY 1, 2
            ORDER BY 1, 2"""

    @property
    def queue_sample(self) -> str:
        """Queue depth (rows still to send, blocked ones included), oldest unfinished age, and
        the blocked rows by why they wait, for the sampled gauges."""
        return f"""
            SELECT count(*) AS depth,
                   coalesce(extract(epoch FROM now() - min(created_at)), 0)::float8 AS oldest,
                   count(*) FILTER (WHERE blocked_by = 'dead_row' AND status = 'blocked')
                       AS behind_dead,
                   count(*) FILTER (WHERE blocked_by = 'route_pause' AND status = 'blocked')
                       AS on_paused_routes
            FROM "{self.schema}".outbox WHERE status IN ('pending', 'in_flight', 'blocked')"""

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
