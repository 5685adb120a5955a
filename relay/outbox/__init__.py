"""The publish direction: the outbox table, its producer API and the engine that delivers it."""

from relay.outbox.store import (
    REQUIRED_FIELDS,
    UUID_PATTERN,
    ClaimedRow,
    Defaults,
    Pause,
    Result,
    Store,
    claimed_row,
    enqueue,
    enqueue_async,
    prepare_event,
)

__all__ = [
    "REQUIRED_FIELDS",
    "UUID_PATTERN",
    "ClaimedRow",
    "Defaults",
    "Pause",
    "Result",
    "Store",
    "claimed_row",
    "enqueue",
    "enqueue_async",
    "prepare_event",
]
