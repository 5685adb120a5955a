# ruff: noqa: E501
"""The operators' audit log: every requeue, replay, purge and pause clear, who ran it, and what
it changed.

Each of those commands (not their dry runs) writes its row in the transaction that makes its
change, so a change is never without its record and a record never without its change; the
``admin.*`` log lines go to the caller's standard error, which ``kubectl exec`` loses. Payloads
are never written here: the parameters are the operator's selection, the ids say which rows.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f"""
CREATE TABLE "{s}".relay_admin_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    operator      text        NOT NULL CHECK (operator <> ''),
    host          text        NOT NULL,
    action        text        NOT NULL
                  CHECK (action IN ('requeue', 'replay', 'purge', 'pause_clear')),
    parameters    jsonb       NOT NULL,
    rows_affected bigint      NOT NULL CHECK (rows_affected >= 0),
    row_ids       bigint[],
    outcome       text        NOT NULL CHECK (outcome IN ('done', 'partial', 'running')),
    detail        jsonb
)""")
    op.execute(f"""COMMENT ON TABLE "{s}".relay_admin_log IS
'What operators did to the outbox (relay requeue, replay, purge, pause clear), each written in the
transaction of its change. Read it with relay audit.'""")
    op.execute(f"""COMMENT ON COLUMN "{s}".relay_admin_log.parameters IS
'The selection as the operator gave it, times resolved; never a payload.'""")
    op.execute(f"""COMMENT ON COLUMN "{s}".relay_admin_log.row_ids IS
'The ids of the rows changed, at most 1000 (rows_affected is exact); NULL for purge and pause clear.'""")
    op.execute(f"""COMMENT ON COLUMN "{s}".relay_admin_log.outcome IS
'done; partial: some of what was named was left alone (see detail); running: a purge still deleting, or stopped before it finished (rows_affected counts what it deleted).'""")


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'DROP TABLE "{s}".relay_admin_log')
