# ruff: noqa: E501
"""Trace context through the tables: ``outbox.trace_context`` carries the W3C trace context of
the request that wrote the row (the producer API fills it from the caller's current span, or
plain SQL sets it), and ``inbox.trace_context`` that of the page the relay stored the event
with. Both nullable, without a default: adding them rewrites nothing, and rows without one
keep working.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-08
"""

from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'ALTER TABLE "{s}".outbox ADD COLUMN trace_context jsonb')
    op.execute(f'ALTER TABLE "{s}".inbox ADD COLUMN trace_context jsonb')
    op.execute(f"""
COMMENT ON COLUMN "{s}".outbox.trace_context IS
'The W3C trace context of the request that wrote the event, {{"traceparent": "00-...", "tracestate": "..."}}: the relay''s delivery spans continue that trace. NULL: none; anything else unreadable is ignored.'""")
    op.execute(f"""
COMMENT ON COLUMN "{s}".inbox.trace_context IS
'The W3C trace context of the relay''s span for the page this event came in ({{"traceparent": ...}}): relay.inbox.consume continues it. NULL when tracing was off.'""")


def downgrade() -> None:
    s = op.get_context().config.attributes["schema"]  # type: ignore[union-attr]
    op.execute(f'ALTER TABLE "{s}".inbox DROP COLUMN trace_context')
    op.execute(f'ALTER TABLE "{s}".outbox DROP COLUMN trace_context')
