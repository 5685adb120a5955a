"""The engine's side of tracing (``relay.tracing.spans``): a delivery attempt's span made from
a claimed row, ended with what became of it. Called only when tracing is on."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from opentelemetry.trace import Span, SpanContext

    from relay.outbox.recorder import Done
    from relay.outbox.store import ClaimedRow
    from relay.tracing.spans import Tracing


def delivery(tracing: Tracing, row: ClaimedRow, route: str, correlation_id: str | None) -> Span:
    """The attempt's span, the child of the context the row was written in."""
    return tracing.delivery(
        outbox_id=row.id,
        attempt=row.attempts,
        route=route,
        event_type=row.event_type,
        correlation_id=correlation_id,
        parent=row.trace_parent,
    )


def delivered(tracing: Tracing, span: Span, done: Done, *, sent: bool) -> SpanContext:
    """End the attempt's span with the row's outcome; its context, for links and log lines."""
    result = done.result
    return tracing.delivered(
        span,
        status=result.status,
        outcome=result.outcome,
        http_status=result.http_status,
        message_id=result.event_api_id,
        delay=result.delay,
        sent=sent,
    )
