"""What the engine (``relay.outbox.worker``) is given and what a ``--drain`` run gives back:
its configuration, the interface it sends through, and the drain's report."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Protocol

from relay.eventapi.outcome import Outcome
from relay.outbox.decide import Policy
from relay.outbox.store import Left

# --drain waits for rows that may go within this many seconds (a retry, a throttle, a route's
# circuit pause); rows it cannot send sooner (behind a dead row, on a route paused after a
# refusal, due later) are left, named in its last line, and it exits 3.
DRAIN_HORIZON = 30.0
# A route in a log line is cut to this length (a bad row's tenant can be any length).
ROUTE_IN_LOGS = 100


class Sender(Protocol):
    async def publish(self, event_type: str, body: bytes, country: str, tenant: str) -> Outcome: ...


@dataclass(frozen=True, slots=True)
class EngineConfig:
    concurrency: int
    claim_batch_size: int
    lease: timedelta
    poll_interval: timedelta
    request_timeout: timedelta
    default_country: str | None
    default_tenant: str | None
    dead_blocks_key: bool
    policy: Policy
    circuit_threshold: int
    circuit_pause: timedelta
    circuit_pause_cap: timedelta
    shutdown_grace: timedelta

    @property
    def prefetch(self) -> int:
        """Rows queued ahead of the senders. Two rounds' worth: at low partner latency a claim
        crossing a busy event loop otherwise leaves senders idle (+10 % events/s at 0 ms)."""
        return min(2 * self.concurrency, self.claim_batch_size)

    @property
    def min_claim(self) -> int:
        """Claim only when this many rows fit, unless a sender is idle (keeps claims batched)."""
        return max(1, min(self.claim_batch_size, self.concurrency // 4))

    @property
    def send_budget(self) -> float:
        """Lease a row must have left to be sent: a token request and the publish itself."""
        return 2 * self.request_timeout.total_seconds()


@dataclass(frozen=True, slots=True)
class DrainReport:
    """What a ``--drain`` run did, and what it left: rows it cannot send now."""

    published: int
    dead: int
    blocked: int  # rows left behind dead rows of their key
    left: tuple[Left, ...] = ()  # rows of refused routes, and rows due later

    @property
    def needs_attention(self) -> bool:
        return bool(self.blocked or self.left)

    def line(self) -> str:
        text = (
            f"relay: drained: {self.published} published, {self.dead} dead, "
            f"{self.blocked} blocked behind dead rows"
        )
        for group in self.left:
            rows = f"{group.rows} row{'' if group.rows == 1 else 's'}"
            route = (group.route or "")[:ROUTE_IN_LOGS]
            why = (group.reason or "").split(":", 1)[0]
            if group.verdict == "refused":
                text += f"; {rows} of {route}, paused after a refusal ({why})"
            else:
                text += f"; {rows} of {route} not due for {group.next_in:.0f}s"
        return text
