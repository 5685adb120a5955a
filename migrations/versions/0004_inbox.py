# ruff: noqa: E501
"""The inbox: Scalepoint's events received into the insurer's database, exactly once.

- ``inbox``: one row per received event, unique per (country, tenant, event_id), so a page
  fetched twice stores nothing twice. ``payload`` is the event's ``attributes`` as Scalepoint
  sent them; an item that is not an event (not an object, no id) is kept in ``raw`` with
  status ``failed`` and the reason, so nothing received is lost. The insurer's applications
  consume ``pending`` rows and mark them ``processed`` (or ``failed`` after retries).
- ``inbox_checkpoint``: per route, where to ask next (the path and query of the last
  ``links.next``), moved in the same statement that stores the page it came with.
- A statement-level trigger notifies ``relay_inbox`` on insert, delivered at COMMIT.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f"""
CREATE TABLE "{s}".inbox (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    country          text        NOT NULL,
    tenant           text        NOT NULL,
    event_id         text        NOT NULL,
    event_type       text,
    event_timestamp  text,
    payload          jsonb,
    raw              jsonb,
    received_at      timestamptz NOT NULL DEFAULT now(),
    status           text        NOT NULL DEFAULT 'pending'
                     CHECK (status IN ('pending', 'processed', 'failed')),
    attempts         integer     NOT NULL DEFAULT 0,
    available_at     timestamptz NOT NULL DEFAULT now(),
    locked_by        text,
    locked_until     timestamptz,
    processed_at     timestamptz,
    last_error       text,
    CONSTRAINT inbox_event_unique UNIQUE (country, tenant, event_id)
)""")
    op.execute(f"""COMMENT ON TABLE "{s}".inbox IS
'Events received from Scalepoint. Applications consume pending rows (FOR UPDATE SKIP LOCKED) and
mark them processed in the transaction of their own change; relay writes the rest.'""")
    # Consumers take the oldest pending row that is due: this index holds only those.
    op.execute(
        f"CREATE INDEX inbox_ready_idx ON \"{s}\".inbox (available_at, id) WHERE status = 'pending'"
    )
    # Retention deletes processed rows by age without reading the others.
    op.execute(
        f"CREATE INDEX inbox_processed_idx ON \"{s}\".inbox (processed_at) WHERE status = 'processed'"
    )
    op.execute(f"""
CREATE TABLE "{s}".inbox_checkpoint (
    country          text        NOT NULL,
    tenant           text        NOT NULL,
    next_path        text,
    last_event_id    text,
    newest_event_at  timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    answered_at      timestamptz,
    paused_until     timestamptz,
    pause_reason     text,
    PRIMARY KEY (country, tenant)
)""")
    op.execute(f"""COMMENT ON TABLE "{s}".inbox_checkpoint IS
'Per route, where relay asks Scalepoint next: the path and query of the last links.next (NULL:
from RELAY_RECEIVE_FROM, or the beginning). Moved only with the page it came with.'""")
    op.execute(f"""
CREATE FUNCTION "{s}".inbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_inbox', TG_TABLE_SCHEMA);
    RETURN NULL;
END
$$""")
    op.execute(
        f'CREATE TRIGGER inbox_notify AFTER INSERT ON "{s}".inbox '
        f'FOR EACH STATEMENT EXECUTE FUNCTION "{s}".inbox_notify()'
    )


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'DROP TABLE "{s}".inbox_checkpoint')
    op.execute(f'DROP TABLE "{s}".inbox')
    op.execute(f'DROP FUNCTION "{s}".inbox_notify()')
