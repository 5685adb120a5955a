"""Every SQL statement the operator commands run, named and commented.

``relay status``, ``relay dead``, ``relay requeue``, ``relay pause``, ``relay purge`` (which
reuses the engine's ``Queries.purge_published``) and ``relay audit``, the audit log every
change writes. Statements are written for asyncpg (``$n`` parameters) and formatted once per
schema. Only ``relay.ops.admin`` runs them; ``relay inbox``'s are in ``relay.ops.inbox_queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.outbox.queries import NOTIFY_CHANNEL


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
        """Rows held back by an earlier dead row of their ordering key, parked or not yet
        (they move only once that row is requeued, when RELAY_DEAD_BLOCKS_KEY is on)."""
        return f"""
            SELECT count(*) FROM "{self.schema}".outbox o
            WHERE o.status IN ('pending', 'blocked') AND o.ordering_key IS NOT NULL
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
        """Every pause row, longest first: in force (remaining > 0), or run out and waiting
        for a relay's probe to succeed (remaining <= 0)."""
        return f"""
            SELECT route, kind, reason, set_by, set_at, until,
                   extract(epoch FROM until - now())::float8 AS remaining
            FROM "{self.schema}".relay_pause
            ORDER BY until DESC, route"""

    @property
    def blocked_on_routes(self) -> str:
        """Rows parked while their route is paused, per route as the row names it."""
        return f"""
            SELECT coalesce(country, '') || '/' || coalesce(tenant, '') AS key, count(*) AS rows
            FROM "{self.schema}".outbox
            WHERE status = 'blocked' AND blocked_by = 'route_pause'
            GROUP BY 1 ORDER BY rows DESC, key"""

    @property
    def clear_pauses(self) -> str:
        """Delete the pause rows of routes $1 (every row when $1 is NULL); return them.

        Deleting locks each row, so a relay parking that route's rows finishes first.
        """
        return f"""
            DELETE FROM "{self.schema}".relay_pause
            WHERE $1::text[] IS NULL OR route = ANY($1::text[])
            RETURNING route, kind, reason"""

    @property
    def unpark_routes(self) -> str:
        """Send now what waits on routes $1 (every route when $1 holds '*'): their parked rows,
        and their pending rows due later (a throttle's or a retry's wait), attempts untouched.
        $2/$3: the default country and tenant, NULL when unknown here; the relays, which know
        them, unblock the rest when they see the pause gone. Returns the ids."""
        return f"""
            UPDATE "{self.schema}".outbox o
            SET status = 'pending', blocked_by = NULL, available_at = now()
            WHERE ((o.status = 'blocked' AND o.blocked_by = 'route_pause')
                   OR (o.status = 'pending' AND o.available_at > now()))
              AND ('*' = ANY($1::text[])
                   OR coalesce(o.country, $2) || '/' || coalesce(o.tenant, $3) = ANY($1::text[]))
            RETURNING o.id"""

    @property
    def unpark_keys(self) -> str:
        """Unblock rows parked behind dead rows of keys $1 (after those rows were requeued).

        A later statement than the requeue, in its transaction: it sees rows a relay parked
        while the requeue waited for the dead rows' locks. Rows still behind another dead row
        of their key are parked again by the relays."""
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', blocked_by = NULL, available_at = now()
            WHERE status = 'blocked' AND blocked_by = 'dead_row'
              AND ordering_key = ANY($1::text[])"""

    @property
    def dead_list(self) -> str:
        """Dead rows by $2 event type and $3 death time: the newest $5 (NULL: all), oldest id
        first, as every list prints."""
        return f"""
            SELECT * FROM ({_dead_rows(self.schema, _DEAD_COLUMNS)}
                ORDER BY o.id DESC
                LIMIT $5) AS newest
            ORDER BY id"""

    @property
    def row(self) -> str:
        """One row in full, payload included (only ``relay dead show`` prints a payload), and
        what it waits for: the first dead row before it in its key, the first unfinished one,
        the pause of its route ($2/$3: the default country and tenant, NULL when unknown)."""
        s = self.schema
        earlier = f"""SELECT min(e.id) FROM "{s}".outbox e
                      WHERE e.ordering_key = o.ordering_key AND e.id < o.id"""
        return f"""
            SELECT o.id, o.event_type, o.payload::text AS payload, o.tenant, o.country,
                   o.ordering_key, o.status, o.blocked_by, o.attempts, o.available_at,
                   o.created_at, o.published_at, o.event_api_id, o.last_http_status,
                   o.last_error, o.claimed_by, o.lease_until, {_ERROR_CLASS} AS error_class,
                   last.attempted_at AS last_attempt_at,
                   substring(o.trace_context ->> 'traceparent'
                             FROM '^[0-9a-f]{{2}}-([0-9a-f]{{32}})-[0-9a-f]{{16}}-[0-9a-f]{{2}}$')
                       AS trace_id,
                   ({earlier} AND e.status = 'dead') AS waits_for_dead,
                   ({earlier} AND e.status IN ('pending', 'in_flight', 'blocked'))
                       AS waits_for_row,
                   (SELECT p.route || ' ' || p.kind || ': ' || p.reason
                    FROM "{s}".relay_pause p
                    WHERE p.route IN ('*', coalesce(o.country, $2) || '/' || coalesce(o.tenant, $3))
                    ORDER BY p.until DESC LIMIT 1) AS route_pause
            FROM "{s}".outbox o {_last_attempt(s)}
            WHERE o.id = $1"""

    @property
    def blocked_reasons(self) -> str:
        """Blocked rows by why they wait, and how many of them wait for a reason that has
        ended (their dead row is gone: a relay's sweep lets them go)."""
        s = self.schema
        return f"""
            SELECT o.blocked_by AS reason, count(*) AS rows,
                   count(*) FILTER (WHERE o.blocked_by = 'dead_row' AND NOT EXISTS (
                       SELECT 1 FROM "{s}".outbox d
                       WHERE d.ordering_key = o.ordering_key AND d.id < o.id
                         AND d.status = 'dead')) AS ended
            FROM "{s}".outbox o
            WHERE o.status = 'blocked'
            GROUP BY 1 ORDER BY 1"""

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
        """Give dead rows a fresh start: pending now, attempts and stops back to 0, ids kept.

        Ids are kept so a requeued row keeps its place in its ordering key. Stops are reset
        with the attempts: a row dead because relays kept stopping while sending it would
        otherwise be dead-lettered again, unsent, by the first claim after the requeue.
        last_error and last_http_status stay until the next attempt overwrites them (the
        delivery log keeps every attempt anyway). Parameters as in ``requeue_preview``;
        ``status = 'dead'`` is checked again on the locked row, so a concurrent requeue cannot
        reset a row twice.
        """
        return f"""
            WITH chosen AS ({_dead_rows(self.schema, "o.id")})
            UPDATE "{self.schema}".outbox o
            SET status = 'pending', attempts = 0, stops = 0, available_at = now(),
                claimed_by = NULL, lease_until = NULL
            FROM chosen
            WHERE o.id = chosen.id AND o.status = 'dead'
            RETURNING o.id, o.ordering_key"""

    @property
    def discard(self) -> str:
        """Delete dead rows an operator gives up on (parameters as in ``requeue_preview``),
        with their delivery log; ``status = 'dead'`` is checked again on the locked row, so a
        row requeued meanwhile is left alone. Returns each row's id, event type and key."""
        s = self.schema
        return f"""
            WITH chosen AS ({_dead_rows(s, "o.id")}
                            FOR UPDATE OF o),
                 gone AS (
                     DELETE FROM "{s}".outbox o USING chosen
                     WHERE o.id = chosen.id AND o.status = 'dead'
                     RETURNING o.id, o.event_type, o.ordering_key),
                 log AS (
                     DELETE FROM "{s}".outbox_delivery d USING gone
                     WHERE d.outbox_id = gone.id)
            SELECT id, event_type, ordering_key FROM gone ORDER BY id"""

    @property
    def notify(self) -> str:
        """Wake every listening relay of schema $1, as an insert does (sent at COMMIT)."""
        return f"SELECT pg_notify('{NOTIFY_CHANNEL}', $1)"

    # relay replay -------------------------------------------------------------------------

    @property
    def replay_candidates(self) -> str:
        """Published rows chosen by an operator: $1 ids, $2 event type, $3 published at or
        after, $4 published before (a NULL does not filter), $6 only these ids (the ones a
        confirmation covered; NULL: no limit). Oldest id first.

        ``held`` marks a keyed row with a newer row of its key not yet published (pending,
        in flight, blocked, or dead when $5, i.e. dead rows block their key). A replayed row
        keeps its id, and the relay sends a key's rows in id order, one at a time, so it would
        go before those newer rows: an old event overtaking newer ones that were waiting.
        Such rows are left alone. The key index answers the check with one probe per row.
        """
        s = self.schema
        return f"""
            SELECT o.id, o.event_type, o.ordering_key, o.published_at,
                   (o.ordering_key IS NOT NULL AND EXISTS (
                       SELECT 1 FROM "{s}".outbox n
                       WHERE n.ordering_key = o.ordering_key AND n.id > o.id
                         AND (n.status IN ('pending', 'in_flight', 'blocked')
                              OR (n.status = 'dead' AND $5::boolean)))) AS held
            FROM "{s}".outbox o
            WHERE o.status = 'published'
              AND ($1::bigint[] IS NULL OR o.id = ANY($1::bigint[]))
              AND ($2::text IS NULL OR o.event_type = $2::text)
              AND ($3::timestamptz IS NULL OR o.published_at >= $3::timestamptz)
              AND ($4::timestamptz IS NULL OR o.published_at < $4::timestamptz)
              AND ($6::bigint[] IS NULL OR o.id = ANY($6::bigint[]))
            ORDER BY o.id"""

    @property
    def replay(self) -> str:
        """Make published rows $1 pending again, to be sent again: available now, attempts and
        stops 0, ids kept (and with them their place in their key). ``published_at`` is
        cleared, the row not being published any more; ``event_api_id`` keeps the earlier
        publish's ``_id`` until the next publish overwrites it, and the delivery log keeps
        every earlier attempt. ``status = 'published'`` is checked again on the locked row,
        so a row purged or replayed meanwhile is left alone. Returns the ids replayed."""
        return f"""
            UPDATE "{self.schema}".outbox
            SET status = 'pending', attempts = 0, stops = 0, available_at = now(),
                published_at = NULL, claimed_by = NULL, lease_until = NULL, blocked_by = NULL
            WHERE id = ANY($1::bigint[]) AND status = 'published'
            RETURNING id"""

    # The audit log (migration 0003) -------------------------------------------------------

    @property
    def audit_record(self) -> str:
        """Record one operator action, in the transaction of the change it describes, so the
        two commit (or roll back) together. $1 operator, $2 host, $3 action, $4 parameters
        (JSON text: the selection, never a payload), $5 rows affected, $6 their ids (at most
        ``MAX_LOGGED_IDS``, NULL for none), $7 outcome, $8 detail (JSON text, or NULL).
        Returns the entry's id."""
        return f"""
            INSERT INTO "{self.schema}".relay_admin_log
                (operator, host, action, parameters, rows_affected, row_ids, outcome, detail)
            VALUES ($1, $2, $3, $4::jsonb, $5, $6::bigint[], $7, $8::jsonb)
            RETURNING id"""

    @property
    def audit_progress(self) -> str:
        """Add one more batch of a purge to its entry $1, in that batch's transaction: $2 rows
        it deleted, $3 outcome (``running`` until the last, empty, batch says ``done``), $4
        detail."""
        return f"""
            UPDATE "{self.schema}".relay_admin_log
            SET rows_affected = rows_affected + $2, outcome = $3, detail = $4::jsonb
            WHERE id = $1"""

    @property
    def audit_list(self) -> str:
        """The audit log: the newest $2 entries written at or after $1 (NULL: all), oldest
        first, as every list prints. The table holds a handful of rows a day; its primary key
        orders it."""
        return f"""
            SELECT * FROM (
                SELECT id, at, operator, host, action, parameters::text AS parameters,
                       rows_affected, row_ids, outcome, detail::text AS detail
                FROM "{self.schema}".relay_admin_log
                WHERE $1::timestamptz IS NULL OR at >= $1::timestamptz
                ORDER BY id DESC
                LIMIT $2) AS newest
            ORDER BY id"""

    # relay purge --------------------------------------------------------------------------

    @property
    def purge_preview(self) -> str:
        """What a purge with cut-off $1 would delete (for --dry-run): the published rows
        published before it, the oldest and newest of them, and their delivery-log entries."""
        return f"""
            SELECT count(*) AS rows, min(o.published_at) AS oldest,
                   max(o.published_at) AS newest,
                   coalesce(sum((SELECT count(*) FROM "{self.schema}".outbox_delivery d
                                 WHERE d.outbox_id = o.id)), 0)::bigint AS deliveries
            FROM "{self.schema}".outbox o
            WHERE o.status = 'published' AND o.published_at < $1::timestamptz"""
