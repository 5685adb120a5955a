"""Every SQL statement of the inbox, named and commented.

Statements are written for asyncpg (``$n`` parameters) and formatted once per schema. The
receiver and the Python consumer run them; the SQL a Java or .NET consumer runs is the same as
``claim`` and ``processed`` here (docs/inbox.md).
"""

from __future__ import annotations

from dataclasses import dataclass

NOTIFY_CHANNEL = "relay_inbox"
# The advisory-lock class of receive routes: the one relay polling a route holds
# (INBOX_LOCK_CLASS, hashtext('country/tenant')) on its receiver connection.
INBOX_LOCK_CLASS = 72_616_903
MALFORMED_PREFIX = "!malformed:"
# Scalepoint's ids are short ("_122047"); a longer one is not an id to index.
MAX_EVENT_ID = 200


def _not_an_event(item: str) -> str:
    """Why the JSON value ``item`` is not an event, or NULL when it is one: an object with a
    string ``id`` (1 to MAX_EVENT_ID characters), a string ``type`` and an object
    ``attributes``."""
    return f"""CASE
                WHEN jsonb_typeof({item}) <> 'object'
                    THEN 'not an event: a JSON ' || jsonb_typeof({item})
                WHEN jsonb_typeof({item} -> 'id') IS DISTINCT FROM 'string'
                    THEN 'not an event: ' || coalesce('its id is a JSON '
                         || jsonb_typeof({item} -> 'id'), 'no id')
                WHEN length({item} ->> 'id') > {MAX_EVENT_ID}
                    THEN 'not an event: an id longer than {MAX_EVENT_ID} characters'
                WHEN {item} ->> 'id' = ''
                    THEN 'not an event: an empty id'
                WHEN jsonb_typeof({item} -> 'type') IS DISTINCT FROM 'string'
                    THEN 'not an event: ' || coalesce('its type is a JSON '
                         || jsonb_typeof({item} -> 'type'), 'no type')
                WHEN jsonb_typeof({item} -> 'attributes') IS DISTINCT FROM 'object'
                    THEN 'not an event: ' || coalesce('its attributes are a JSON '
                         || jsonb_typeof({item} -> 'attributes'), 'no attributes')
              END"""


@dataclass(frozen=True, slots=True)
class InboxQueries:
    schema: str

    # Receiving ---------------------------------------------------------------------------------

    @property
    def lock_route(self) -> str:
        """Become the one poller of route $1 (session lock; held until the connection ends)."""
        return f"SELECT pg_try_advisory_lock({INBOX_LOCK_CLASS}, hashtext($1))"

    @property
    def ensure_checkpoint(self) -> str:
        """The route's checkpoint row, created at the start (NULL: from the beginning)."""
        return f"""
            INSERT INTO "{self.schema}".inbox_checkpoint (country, tenant)
            VALUES ($1, $2)
            ON CONFLICT (country, tenant) DO NOTHING"""

    @property
    def checkpoint(self) -> str:
        return f"""
            SELECT next_path, paused_until, pause_reason
            FROM "{self.schema}".inbox_checkpoint WHERE country = $1 AND tenant = $2"""

    @property
    def inspect_page(self) -> str:
        """Read an answer's shape without Python parsing it: PostgreSQL reads JSON of any
        depth and numbers of any precision exactly. Raises a data error when it is not JSON."""
        return """
            SELECT jsonb_typeof(page) AS page_type,
                   jsonb_typeof(page -> 'data') AS data_type,
                   CASE WHEN jsonb_typeof(page -> 'data') = 'array'
                        THEN jsonb_array_length(page -> 'data') END AS items,
                   CASE WHEN jsonb_typeof(page #> '{links,next}') = 'string'
                        THEN page #>> '{links,next}' END AS next,
                   CASE WHEN jsonb_typeof(page -> 'data') = 'array'
                             AND jsonb_array_length(page -> 'data') > 0
                        THEN page -> 'data' -> -1 ->> 'id' END AS last_id,
                   CASE WHEN jsonb_typeof(page -> 'data') = 'array'
                             AND jsonb_array_length(page -> 'data') > 0
                        THEN page -> 'data' -> -1 ->> 'timestamp' END AS last_timestamp
            FROM (SELECT $1::jsonb AS page) AS answer"""

    @property
    def store_page(self) -> str:
        """Store a page's events and move the checkpoint past them, in one statement.

        The checkpoint moves only if it still says where this page was asked for ($3): a
        poller that lost its route (its lock went with its connection) cannot move it back.
        Events are inserted only when it moved, in the page's order, each at most once per
        route (a page fetched again stores nothing again). An item is an event only if it is
        a JSON object with a string ``id``, a string ``type`` and an object ``attributes``;
        anything else is kept raw as ``failed`` with the reason, under an id made of where it
        was asked for and its place, so the next fetch of the same page finds it too.
        $1 country, $2 tenant, $3 the checkpoint it was asked from (NULL: the start), $4 the
        next path, $5 the page (JSON text), $6 the last event id, $7 the newest event's time,
        $8 the path asked, $9 the trace context of the page's span (NULL: tracing is off).
        """
        s = self.schema
        return f"""
            WITH moved AS (
                UPDATE "{s}".inbox_checkpoint
                SET next_path = $4, last_event_id = coalesce($6, last_event_id),
                    newest_event_at = coalesce($7, newest_event_at),
                    updated_at = now(), answered_at = now(),
                    paused_until = NULL, pause_reason = NULL
                WHERE country = $1 AND tenant = $2 AND next_path IS NOT DISTINCT FROM $3
                RETURNING 1
            ), items AS (
                SELECT e.item, e.n, {_not_an_event("e.item")} AS problem
                FROM jsonb_array_elements($5::jsonb -> 'data') WITH ORDINALITY AS e(item, n)
                WHERE EXISTS (SELECT 1 FROM moved)
            ), checked AS (
                SELECT item, n, problem IS NULL AS good, problem FROM items
            ), inserted AS (
                INSERT INTO "{s}".inbox (country, tenant, event_id, event_type, event_timestamp,
                                         payload, raw, status, last_error, trace_context)
                SELECT $1, $2,
                       CASE WHEN good THEN item ->> 'id'
                            ELSE '{MALFORMED_PREFIX}' || md5($8 || ':' || n) END,
                       CASE WHEN good AND jsonb_typeof(item -> 'type') = 'string'
                            THEN item ->> 'type' END,
                       CASE WHEN good AND jsonb_typeof(item -> 'timestamp') = 'string'
                            THEN item ->> 'timestamp' END,
                       CASE WHEN good THEN item -> 'attributes' END,
                       CASE WHEN good THEN NULL ELSE item END,
                       CASE WHEN good THEN 'pending' ELSE 'failed' END,
                       problem, $9::jsonb
                FROM checked
                ORDER BY n
                ON CONFLICT (country, tenant, event_id) DO NOTHING
                RETURNING status, event_type
            )
            SELECT (SELECT count(*) FROM moved) AS moved,
                   (SELECT count(*) FROM inserted WHERE status = 'pending') AS stored,
                   (SELECT count(*) FROM inserted WHERE status = 'failed') AS malformed,
                   (SELECT coalesce(jsonb_object_agg(event_type, n), '{{}}')
                    FROM (SELECT event_type, count(*) AS n FROM inserted
                          WHERE event_type IS NOT NULL GROUP BY event_type) t) AS types"""

    @property
    def answered(self) -> str:
        """The route answered (with nothing new): it is alive and unpaused."""
        return f"""
            UPDATE "{self.schema}".inbox_checkpoint
            SET answered_at = now(), paused_until = NULL, pause_reason = NULL
            WHERE country = $1 AND tenant = $2"""

    @property
    def pause(self) -> str:
        """Pause route $1/$2 for $3 seconds with reason $4 (shown by relay inbox status)."""
        return f"""
            UPDATE "{self.schema}".inbox_checkpoint
            SET paused_until = now() + $3 * interval '1 second', pause_reason = $4
            WHERE country = $1 AND tenant = $2"""

    # Consuming ---------------------------------------------------------------------------------

    @property
    def claim(self) -> str:
        """The oldest due pending event, locked for this transaction; others skip it.

        Optional filters: $1 event types, $2 routes ('country/tenant').
        """
        return f"""
            SELECT id, country, tenant, event_id, event_type, event_timestamp,
                   payload::text AS payload, received_at, attempts,
                   trace_context::text AS trace_context
            FROM "{self.schema}".inbox
            WHERE status = 'pending' AND available_at <= now()
              AND ($1::text[] IS NULL OR event_type = ANY($1::text[]))
              AND ($2::text[] IS NULL OR country || '/' || tenant = ANY($2::text[]))
            ORDER BY available_at, id
            LIMIT 1
            FOR UPDATE SKIP LOCKED"""

    @property
    def processed(self) -> str:
        """Mark event $1 processed, in the transaction that did the consumer's work."""
        return f"""
            UPDATE "{self.schema}".inbox
            SET status = 'processed', processed_at = now(), attempts = attempts + 1,
                last_error = NULL
            WHERE id = $1"""

    @property
    def failed(self) -> str:
        """Record a failed attempt of event $1 (error $2): due again in $3 seconds, or
        ``failed`` for good once it has used $4 attempts."""
        return f"""
            UPDATE "{self.schema}".inbox
            SET attempts = attempts + 1, last_error = $2,
                available_at = now() + $3 * interval '1 second',
                status = CASE WHEN attempts + 1 >= $4 THEN 'failed' ELSE 'pending' END
            WHERE id = $1 AND status = 'pending'
            RETURNING status"""

    # Watching ----------------------------------------------------------------------------------

    @property
    def route_sample(self) -> str:
        """Per route: seconds behind (now minus the newest received event's own time), since
        its last answer, and the events waiting for consumers (how many, and the oldest's age),
        for the sampled gauges. The waiting events are read through the ready index."""
        s = self.schema
        return f"""
            SELECT c.country, c.tenant,
                   extract(epoch FROM now() - c.newest_event_at)::float8 AS lag,
                   extract(epoch FROM now() - coalesce(c.answered_at, c.updated_at))::float8 AS age,
                   coalesce(w.pending, 0) AS pending,
                   coalesce(w.oldest_pending, 0)::float8 AS oldest_pending
            FROM "{s}".inbox_checkpoint c
            LEFT JOIN (
                SELECT country, tenant, count(*) AS pending,
                       extract(epoch FROM now() - min(received_at)) AS oldest_pending
                FROM "{s}".inbox WHERE status = 'pending'
                GROUP BY country, tenant
            ) w USING (country, tenant)"""

    # Retention ---------------------------------------------------------------------------------

    @property
    def purge_processed(self) -> str:
        """Delete one small batch of events processed more than $1 seconds ago."""
        s = self.schema
        return f"""
            DELETE FROM "{s}".inbox WHERE id IN (
                SELECT id FROM "{s}".inbox
                WHERE status = 'processed'
                  AND processed_at < now() - $1 * interval '1 second'
                ORDER BY processed_at
                LIMIT $2
                FOR UPDATE SKIP LOCKED)"""
