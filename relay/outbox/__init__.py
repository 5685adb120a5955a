"""The publish direction: the outbox table, the producer API applications call, and the
engine that delivers its rows.

``from relay.outbox import enqueue, enqueue_async`` loads the producer API only (asyncpg, and
SQLAlchemy when given one of its connections): never the daemon's HTTP client, metrics or
console. The engine's parts are ``worker`` (feeder and senders), ``store`` and ``queries``,
``decide``, ``gate`` and ``circuit``, ``pauses``, ``leases``, ``liveness``, ``parking`` and
``recorder``.
"""

from relay.errors import InvalidEvent
from relay.outbox.producer import enqueue, enqueue_async, prepare_event

__all__ = ["InvalidEvent", "enqueue", "enqueue_async", "prepare_event"]
