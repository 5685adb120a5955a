"""Event bodies shaped like the ones the outbox holds."""

from __future__ import annotations

import uuid

import orjson

from bench.database import EVENT_TYPE


def body(correlation_id: str | None = None) -> dict[str, object]:
    return {
        "eventType": EVENT_TYPE,
        "payloadVersion": "1.0.0",
        "correlationId": correlation_id or str(uuid.uuid4()),
        "timestamp": "2026-11-28T10:31:28.251Z",
        "payment": {"uuid": str(uuid.uuid4()), "status": "canceled"},
    }


def encoded_bodies(count: int) -> list[bytes]:
    """Compact UTF-8 JSON, as the relay sends it."""
    return [orjson.dumps(body()) for _ in range(count)]
