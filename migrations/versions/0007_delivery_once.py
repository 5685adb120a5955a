# ruff: noqa: E501
"""One delivery-log row per attempt, held by the table.

A result whose write was retried after the connection broke (the first write had committed,
its answer was lost) logged the attempt twice. Each attempt is one claim of the row, and each
claim has its own token: ``outbox_delivery.claim_token`` records it, and a unique index on
(outbox_id, claim_token) refuses a second row for it; the relay's write skips it
(``ON CONFLICT DO NOTHING``). Rows logged before this revision have no token (NULL, which
the index does not compare) and stay as they are.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'ALTER TABLE "{s}".outbox_delivery ADD COLUMN claim_token bigint')
    op.execute(
        f'CREATE UNIQUE INDEX outbox_delivery_attempt_idx ON "{s}".outbox_delivery '
        "(outbox_id, claim_token)"
    )
    op.execute(f"""
COMMENT ON COLUMN "{s}".outbox_delivery.claim_token IS
'The claim this attempt was made under (outbox.claim_token then): one row per claim, so one per attempt.'""")


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'DROP INDEX "{s}".outbox_delivery_attempt_idx')
    op.execute(f'ALTER TABLE "{s}".outbox_delivery DROP COLUMN claim_token')
