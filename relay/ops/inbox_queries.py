"""Every SQL statement ``relay inbox`` runs, named and commented: its reports, retry, rewind
and purge. Written for asyncpg (``$n`` parameters) and formatted once per schema; only
``relay.ops.inbox`` runs them. The outbox's operator statements are in ``relay.ops.queries``.
"""

from __future__ import annotations

from dataclasses import dataclass

from relay.inbox.queries import INBOX_LOCK_CLASS, MALFORMED_PREFIX
from relay.inbox.queries import NOTIFY_CHANNEL as INBOX_NOTIFY_CHANNEL

# An item Scalepoint sent that was not an event: kept raw, never made pending.
_MALFORMED = f"(event_id LIKE '{MALFORMED_PREFIX}%' AND payload IS NULL)"


def _failed_events(schema: str, columns: str) -> str:
    """Failed events chosen by an operator: $1 ids, $2/$3 country and tenant, $4 event type,
    $5 received at or after, $6 received before. A NULL parameter does not filter."""
    return f"""
        SELECT {columns}
        FROM "{schema}".inbox
        WHERE status = 'failed'
          AND ($1::bigint[] IS NULL OR id = ANY($1::bigint[]))
          AND ($2::text IS NULL OR (country = $2::text AND tenant = $3::text))
          AND ($4::text IS NULL OR event_type = $4::text)
          AND ($5::timestamptz IS NULL OR received_at >= $5::timestamptz)
          AND ($6::timestamptz IS NULL OR received_at < $6::timestamptz)"""


@dataclass(frozen=True, slots=True)
class InboxAdminQueries:
    """What ``relay inbox`` runs: its reports, retry, rewind and purge.

    None holds a lock a receiver or a consumer waits on for long: the reports read a snapshot;
    retry touches only failed events, which no consumer claims; rewind locks one checkpoint row
    for one short transaction (a receiver storing a page meanwhile waits for it, then finds the
    checkpoint moved and reads it again); purge reuses the daemon's retention statement
    (``InboxQueries.purge_processed``) in small batches.
    """

    schema: str

    @property
    def routes(self) -> str:
        """Per receive route (a checkpoint row, events stored under it, or one of $1, the
        routes configured where the command runs): where it asks next, how far behind and
        since when unanswered, its pause, its events by status and the age of its oldest
        pending one, and whether a relay holds its receive lock now.

        Counts the whole inbox: an operator's question, not a probe. The lock is the
        receiver's advisory lock (INBOX_LOCK_CLASS, hashtext(route)) in this database.
        """
        s = self.schema
        return f"""
            WITH configured AS (
                SELECT split_part(route, '/', 1) AS country, split_part(route, '/', 2) AS tenant
                FROM unnest($1::text[]) AS route
            ), counts AS (
                SELECT country, tenant,
                       count(*) FILTER (WHERE status = 'pending') AS pending,
                       count(*) FILTER (WHERE status = 'pending' AND attempts > 0) AS retrying,
                       count(*) FILTER (WHERE status = 'processed') AS processed,
                       count(*) FILTER (WHERE status = 'failed') AS failed,
                       count(*) FILTER (WHERE status = 'failed' AND {_MALFORMED}) AS malformed,
                       min(received_at) FILTER (WHERE status = 'pending') AS oldest_pending_at,
                       max(received_at) AS last_received_at
                FROM "{s}".inbox
                GROUP BY country, tenant
            ), stored AS (
                SELECT coalesce(k.country, c.country) AS country,
                       coalesce(k.tenant, c.tenant) AS tenant,
                       k.country IS NOT NULL AS has_checkpoint,
                       k.next_path, k.last_event_id, k.newest_event_at, k.answered_at,
                       k.updated_at, k.paused_until, k.pause_reason,
                       coalesce(c.pending, 0) AS pending, coalesce(c.retrying, 0) AS retrying,
                       coalesce(c.processed, 0) AS processed, coalesce(c.failed, 0) AS failed,
                       coalesce(c.malformed, 0) AS malformed,
                       c.oldest_pending_at, c.last_received_at
                FROM "{s}".inbox_checkpoint k
                FULL JOIN counts c ON c.country = k.country AND c.tenant = k.tenant
            ), routes AS (
                SELECT coalesce(r.country, f.country) AS country,
                       coalesce(r.tenant, f.tenant) AS tenant,
                       f.country IS NOT NULL AS configured,
                       coalesce(r.has_checkpoint, false) AS has_checkpoint,
                       r.next_path, r.last_event_id, r.newest_event_at, r.answered_at,
                       r.updated_at, r.paused_until, r.pause_reason,
                       coalesce(r.pending, 0) AS pending, coalesce(r.retrying, 0) AS retrying,
                       coalesce(r.processed, 0) AS processed, coalesce(r.failed, 0) AS failed,
                       coalesce(r.malformed, 0) AS malformed,
                       r.oldest_pending_at, r.last_received_at
                FROM stored r
                FULL JOIN configured f ON f.country = r.country AND f.tenant = r.tenant
            )
            SELECT r.*,
                   extract(epoch FROM now() - r.newest_event_at)::float8 AS lag,
                   extract(epoch FROM now() - r.answered_at)::float8 AS answered_age,
                   extract(epoch FROM r.paused_until - now())::float8 AS pause_remaining,
                   extract(epoch FROM now() - r.oldest_pending_at)::float8 AS oldest_pending_age,
                   EXISTS (
                       SELECT 1 FROM pg_locks l
                       WHERE l.locktype = 'advisory' AND l.granted
                         AND l.database = (SELECT oid FROM pg_database
                                           WHERE datname = current_database())
                         AND l.classid = {INBOX_LOCK_CLASS}
                         AND l.objid = hashtext(r.country || '/' || r.tenant)::oid
                         AND l.objsubid = 2) AS polled
            FROM routes r
            ORDER BY r.country, r.tenant"""

    @property
    def list_events(self) -> str:
        """Events without payloads, the newest $6, oldest first as every list prints: $1/$2
        country and tenant, $3 status, $4 event type, $5 received at or after (a NULL does not
        filter)."""
        return f"""
            SELECT * FROM (
                SELECT id, country, tenant, event_id, event_type, event_timestamp, received_at,
                       status, attempts, available_at, processed_at, last_error,
                       {_MALFORMED} AS malformed
                FROM "{self.schema}".inbox
                WHERE ($1::text IS NULL OR (country = $1::text AND tenant = $2::text))
                  AND ($3::text IS NULL OR status = $3::text)
                  AND ($4::text IS NULL OR event_type = $4::text)
                  AND ($5::timestamptz IS NULL OR received_at >= $5::timestamptz)
                ORDER BY id DESC
                LIMIT $6) AS newest
            ORDER BY id"""

    @property
    def event(self) -> str:
        """Event $1 in full, its payload (or the raw item) as stored and pretty-printed by
        PostgreSQL: numbers exactly as Scalepoint wrote them. Only ``relay inbox show``
        prints it."""
        return f"""
            SELECT id, country, tenant, event_id, event_type, event_timestamp, received_at,
                   status, attempts, available_at, processed_at, last_error, locked_by,
                   locked_until, {_MALFORMED} AS malformed,
                   payload::text AS payload, jsonb_pretty(payload) AS payload_pretty,
                   raw::text AS raw, jsonb_pretty(raw) AS raw_pretty
            FROM "{self.schema}".inbox
            WHERE id = $1"""

    @property
    def retry_candidates(self) -> str:
        """The failed events a retry with the same parameters chooses, oldest first, each
        marked when it is a malformed item (never made pending). Locks them, so two retries
        do not both count one event."""
        columns = f"id, event_id, {_MALFORMED} AS malformed"
        return f"""{_failed_events(self.schema, columns)}
            ORDER BY id
            FOR UPDATE"""

    @property
    def retry_preview(self) -> str:
        """``retry_candidates`` without the lock, for --dry-run."""
        columns = f"id, event_id, {_MALFORMED} AS malformed"
        return f"""{_failed_events(self.schema, columns)}
            ORDER BY id"""

    @property
    def retry(self) -> str:
        """Failed events $1 back to pending: due now, attempts 0, no lease; ``last_error``
        stays until the next attempt. Malformed items are left failed. Returns the ids."""
        return f"""
            UPDATE "{self.schema}".inbox
            SET status = 'pending', attempts = 0, available_at = now(), locked_by = NULL,
                locked_until = NULL
            WHERE id = ANY($1::bigint[]) AND status = 'failed' AND NOT {_MALFORMED}
            RETURNING id"""

    @property
    def notify(self) -> str:
        """Wake the consumers listening on schema $1, as the inbox's insert trigger does (sent
        at COMMIT)."""
        return f"SELECT pg_notify('{INBOX_NOTIFY_CHANNEL}', $1)"

    @property
    def checkpoint(self) -> str:
        """Route $1/$2's checkpoint (for a rewind's --dry-run)."""
        return f"""
            SELECT next_path, last_event_id
            FROM "{self.schema}".inbox_checkpoint
            WHERE country = $1 AND tenant = $2"""

    @property
    def checkpoint_for_update(self) -> str:
        """Route $1/$2's checkpoint, locked until the rewind commits: a receiver storing a
        page meanwhile waits, then finds the checkpoint moved."""
        return f"{self.checkpoint}\n            FOR UPDATE"

    @property
    def stored_event(self) -> str:
        """Event $3 of route $1/$2 as the inbox holds it, and how many events of the route it
        stored after it (a rewind fetches those again and stores none of them twice)."""
        s = self.schema
        return f"""
            SELECT e.id, e.status, e.received_at,
                   (SELECT count(*) FROM "{s}".inbox n
                    WHERE n.country = $1 AND n.tenant = $2 AND n.id > e.id) AS stored_after
            FROM "{s}".inbox e
            WHERE e.country = $1 AND e.tenant = $2 AND e.event_id = $3"""

    @property
    def rewind(self) -> str:
        """Move route $1/$2's checkpoint: next ask $3, after event $4. A receiver that fetched
        a page from the old position finds its compare-and-set fails and reads this one."""
        return f"""
            UPDATE "{self.schema}".inbox_checkpoint
            SET next_path = $3, last_event_id = $4, updated_at = now()
            WHERE country = $1 AND tenant = $2"""

    @property
    def purge_preview(self) -> str:
        """What a purge with cut-off $1 would delete (for --dry-run): the processed events
        processed before it, and the oldest and newest of them."""
        return f"""
            SELECT count(*) AS rows, min(processed_at) AS oldest, max(processed_at) AS newest
            FROM "{self.schema}".inbox
            WHERE status = 'processed' AND processed_at < $1::timestamptz"""
