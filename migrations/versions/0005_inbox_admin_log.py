# ruff: noqa: E501
"""The audit log records what operators do to the inbox too.

``relay inbox retry``, ``relay inbox rewind`` and ``relay inbox purge`` write their entry in
the transaction of their change, as the outbox's commands do; the log's ``action`` check takes
their names (``inbox_retry``, ``inbox_rewind``, ``inbox_purge``). Nothing else changes: no table,
no column, no grant.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-30
"""

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

OUTBOX_ACTIONS = "'requeue', 'replay', 'purge', 'pause_clear'"
INBOX_ACTIONS = "'inbox_retry', 'inbox_rewind', 'inbox_purge'"


def _actions(s: str, actions: str, comment: str) -> None:
    op.execute(f'ALTER TABLE "{s}".relay_admin_log DROP CONSTRAINT relay_admin_log_action_check')
    op.execute(
        f'ALTER TABLE "{s}".relay_admin_log ADD CONSTRAINT relay_admin_log_action_check '
        f"CHECK (action IN ({actions}))"
    )
    op.execute(f"""COMMENT ON TABLE "{s}".relay_admin_log IS {comment}""")


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    _actions(
        s,
        f"{OUTBOX_ACTIONS}, {INBOX_ACTIONS}",
        """'What operators did to the outbox (relay requeue, replay, purge, pause clear) and to the inbox
(relay inbox retry, rewind, purge), each written in the transaction of its change. Read it with
relay audit.'""",
    )


def downgrade() -> None:
    # Refused (a check violation) while the log holds entries of the inbox's commands: the
    # audit log is not thinned to make a downgrade pass.
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    _actions(
        s,
        OUTBOX_ACTIONS,
        """'What operators did to the outbox (relay requeue, replay, purge, pause clear), each written in the
transaction of its change. Read it with relay audit.'""",
    )
