# ruff: noqa: E501
"""Two claim paths, so that no backlog of one kind slows the other.

The claim walked one index of every pending row, in the order rows became available. A row
that could not go (behind a dead row of its key, behind a row of its key in flight) was
looked at by every claim until something parked it: with 100,000 such rows in front, a claim
took half a second, and rows without a key waited behind them.

- ``outbox_loose_idx``: pending rows without an ordering key, in the order they became
  available. The claim takes them from here and meets nothing else.
- ``outbox_head_idx``: pending keyed rows by (ordering_key, id). The claim steps from key to key
  (one index descent each, from where its last claim stopped, round the key space in turn) and
  looks only at each key's first pending row: a key with a million rows waiting costs one step.
- ``outbox_flight_key_idx``: the keys of rows in flight. ``outbox_key_ready`` asks "is a row of
  this key in flight?" here, and "is an earlier row unfinished?" in ``outbox_key_idx`` up to the
  row's id: before, one question over the whole key read every row of it, 100,000 for a key
  with that many waiting.
- ``outbox_ready_idx`` (every pending row by availability) is dropped: the first two cover it.

All are partial indexes over rows still to send, so building them reads the table once and
then holds only what is waiting.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-07
"""

from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(
        f'CREATE INDEX outbox_loose_idx ON "{s}".outbox (available_at, id) '
        "WHERE status = 'pending' AND ordering_key IS NULL"
    )
    op.execute(
        f'CREATE INDEX outbox_head_idx ON "{s}".outbox (ordering_key, id) '
        "WHERE status = 'pending' AND ordering_key IS NOT NULL"
    )
    op.execute(
        f'CREATE INDEX outbox_flight_key_idx ON "{s}".outbox (ordering_key) '
        "WHERE status = 'in_flight' AND ordering_key IS NOT NULL"
    )
    op.execute(f'DROP INDEX "{s}".outbox_ready_idx')
    op.execute(f"""
CREATE OR REPLACE FUNCTION "{s}".outbox_key_ready(key text, row_id bigint, dead_blocks boolean)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN NOT EXISTS (
            SELECT 1 FROM "{s}".outbox e
            WHERE e.ordering_key = key AND e.id < row_id
              AND (e.status IN ('pending', 'blocked') OR (e.status = 'dead' AND dead_blocks)))
       AND NOT EXISTS (
            SELECT 1 FROM "{s}".outbox e
            WHERE e.ordering_key = key AND e.status = 'in_flight' AND e.id <> row_id);
END
$$""")


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(
        f'CREATE INDEX outbox_ready_idx ON "{s}".outbox (available_at, id) '
        "WHERE status = 'pending'"
    )
    op.execute(f'DROP INDEX "{s}".outbox_flight_key_idx')
    op.execute(f'DROP INDEX "{s}".outbox_head_idx')
    op.execute(f'DROP INDEX "{s}".outbox_loose_idx')
    op.execute(f"""
CREATE OR REPLACE FUNCTION "{s}".outbox_key_ready(key text, row_id bigint, dead_blocks boolean)
RETURNS boolean LANGUAGE plpgsql VOLATILE AS $$
BEGIN
    RETURN NOT EXISTS (
        SELECT 1 FROM "{s}".outbox e
        WHERE e.ordering_key = key AND e.id <> row_id
          AND (e.status = 'in_flight'
               OR (e.id < row_id
                   AND (e.status IN ('pending', 'blocked') OR (e.status = 'dead' AND dead_blocks)))));
END
$$""")
