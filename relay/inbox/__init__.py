"""The inbox: Scalepoint's events received into the insurer's database.

The relay's receivers write it (``relay.inbox.receiver``, loaded by ``relay run`` only); the
insurer's applications read it, with SQL or with :func:`consume`, which needs asyncpg and
nothing of the daemon.
"""

from relay.inbox.consumer import InboxEvent, consume

__all__ = ["InboxEvent", "consume"]
