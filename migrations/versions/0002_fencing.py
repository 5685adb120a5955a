# ruff: noqa: E501
"""Claims fenced per claim, crash recovery tied to live processes, rows parked off the claim path,
and the route rule as a constraint.

- ``claim_token``: written by each claim (the claiming process's incarnation in the high 32 bits,
  a counter in the low 32). Results, lease extensions and give-backs apply only where the row
  still carries the token of the claim that produced them. The incarnation is the key of an
  advisory lock its process holds while it lives, so a claim can tell a dead holder at once.
- ``stops``: how many times a claim of the row ended without a result (the relay stopped or hung
  while sending it). A row that keeps stopping relays is dead-lettered instead of stopping more.
- ``status = 'blocked'`` with ``blocked_by``: rows that cannot move until something else happens
  (an earlier dead row of their key is requeued, or their route's pause ends). Parked outside the
  ready index, so claims never walk past them.
- ``outbox_key_ready``: the per-key ordering check, as a VOLATILE function so that, called after
  the key's advisory lock is taken, it reads a fresh snapshot (rows committed after the claim
  statement began included).
- The route rule of ``relay.routes`` as a CHECK constraint, ``NOT VALID``: new rows must obey it,
  rows already written are not scanned (the relay dead-letters them with the reason).

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# Copies of relay.routes (a migration must not change when the code does); a test keeps them
# equal to the code's rule.
COUNTRY_PATTERN = r"^[a-z]{2}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f"""
ALTER TABLE "{s}".outbox
    ADD COLUMN claim_token bigint,
    ADD COLUMN stops integer NOT NULL DEFAULT 0,
    ADD COLUMN blocked_by text CHECK (blocked_by IN ('dead_row', 'route_pause'))""")
    op.execute(f'ALTER TABLE "{s}".outbox DROP CONSTRAINT outbox_status_check')
    op.execute(f"""
ALTER TABLE "{s}".outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'in_flight', 'published', 'dead', 'blocked')) NOT VALID""")
    # Every existing row satisfies it (the old constraint was stricter); validating takes only a
    # SHARE UPDATE EXCLUSIVE lock, so producers keep inserting while it scans.
    op.execute(f'ALTER TABLE "{s}".outbox VALIDATE CONSTRAINT outbox_status_check')
    op.execute(f"""
ALTER TABLE "{s}".outbox ADD CONSTRAINT outbox_route_check
    CHECK ((country IS NULL OR country ~ '{COUNTRY_PATTERN}')
           AND (tenant IS NULL OR tenant ~ '{TENANT_PATTERN}')) NOT VALID""")
    # Unblocking finds a key's (or every) parked row here, never in the ready index.
    op.execute(
        f'CREATE INDEX outbox_blocked_idx ON "{s}".outbox (ordering_key, id) '
        "WHERE status = 'blocked'"
    )
    op.execute(f"""
COMMENT ON COLUMN "{s}".outbox.claim_token IS
'The claim that holds (or last held) the row: incarnation << 32 | counter. Results are fenced on it.'""")
    op.execute(f"""
COMMENT ON COLUMN "{s}".outbox.stops IS
'Claims of this row that ended without a result because the relay holding it stopped.'""")
    op.execute(f"""
COMMENT ON COLUMN "{s}".outbox.blocked_by IS
'Why a blocked row waits: dead_row (an earlier row of its key is dead) or route_pause.'""")

    # A keyed row may be claimed only when no other row of its key is in flight and no earlier
    # one is unfinished (pending, blocked, or dead when dead rows block their key). The claim
    # calls this after taking the key's advisory lock; being VOLATILE, its query takes a new
    # snapshot, so it sees an earlier row whose producer committed while the claim was running.
    op.execute(f"""
CREATE FUNCTION "{s}".outbox_key_ready(key text, row_id bigint, dead_blocks boolean)
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


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'DROP FUNCTION "{s}".outbox_key_ready(text, bigint, boolean)')
    op.execute(f"UPDATE \"{s}\".outbox SET status = 'pending' WHERE status = 'blocked'")
    op.execute(f'DROP INDEX "{s}".outbox_blocked_idx')
    op.execute(f'ALTER TABLE "{s}".outbox DROP CONSTRAINT outbox_route_check')
    op.execute(f'ALTER TABLE "{s}".outbox DROP CONSTRAINT outbox_status_check')
    op.execute(f"""
ALTER TABLE "{s}".outbox ADD CONSTRAINT outbox_status_check
    CHECK (status IN ('pending', 'in_flight', 'published', 'dead'))""")
    op.execute(
        f'ALTER TABLE "{s}".outbox DROP COLUMN claim_token, DROP COLUMN stops, '
        "DROP COLUMN blocked_by"
    )
