"""The audit log records discards: ``relay dead discard`` deletes dead rows an operator gives up
on (with the reason they give), in the transaction that records it.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

BEFORE = "'requeue', 'replay', 'purge', 'pause_clear', 'inbox_retry', 'inbox_rewind', 'inbox_purge'"


def _actions(s: str, actions: str) -> None:
    op.execute(f'ALTER TABLE "{s}".relay_admin_log DROP CONSTRAINT relay_admin_log_action_check')
    op.execute(
        f'ALTER TABLE "{s}".relay_admin_log ADD CONSTRAINT relay_admin_log_action_check '
        f"CHECK (action IN ({actions}))"
    )


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    _actions(s, f"{BEFORE}, 'discard'")
    op.execute(f"""COMMENT ON TABLE "{s}".relay_admin_log IS
'What operators did to the outbox (relay requeue, replay, purge, pause clear, dead discard) and to
the inbox (relay inbox retry, rewind, purge), each written in the transaction of its change. Read
it with relay audit.'""")


def downgrade() -> None:
    # Refused (a check violation) while the log holds discards: the audit log is not thinned
    # to make a downgrade pass.
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    _actions(s, BEFORE)
