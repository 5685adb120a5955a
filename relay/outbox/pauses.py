"""The shared pauses as one relay reads and writes them.

``relay_pause`` holds every pause all replicas obey: a route's (its circuit opened, a throttle,
a refusal of the route) and every route's (``*``: our client refused everywhere). This part
reads them into the gate every poll and as soon as one runs out, has the rows of newly paused
routes parked and those of lifted or run-out routes let back, and after each outcome writes what
the gate and the route's circuit decided: a pause set, a circuit pause renewed after a failed
probe, or pauses cleared by an answer that shows the route well.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta

import structlog

from relay.database import DatabaseCalls
from relay.eventapi.outcome import Outcome, OutcomeKind
from relay.metrics import Metrics
from relay.outbox.circuit import Change
from relay.outbox.decide import is_throttle
from relay.outbox.gate import GLOBAL, SLOW_FAILURES, Gate
from relay.outbox.parking import Parker
from relay.outbox.store import Store

log = structlog.get_logger("relay.outbox.pauses")


class Pauses:
    def __init__(
        self,
        store: Store,
        calls: DatabaseCalls,
        gate: Gate,
        parker: Parker,
        metrics: Metrics,
        *,
        poll_interval: float,
        configuration_pause: timedelta,
        on_global_hold: Callable[[], None],
        on_change: Callable[[], None],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.calls = calls
        self.gate = gate
        self.parker = parker
        self.metrics = metrics
        self.poll_interval = poll_interval
        self.configuration_pause = configuration_pause
        self.on_global_hold = on_global_hold
        self.on_change = on_change
        self.clock = clock

    @property
    def next_refresh(self) -> float:
        """When to read the pauses again: every poll, and as soon as one runs out (its route
        then needs a probe, or the circuit half-opens)."""
        now = self.clock()
        due = self.gate.read_at + self.poll_interval
        expiry = self.gate.next_expiry(now)
        return due if expiry is None else min(due, now + expiry)

    async def refresh(self) -> None:
        pauses = await self.calls.run("pauses", self.store.pauses)
        refreshed = self.gate.refresh(pauses, self.clock())
        for route in refreshed.expired:
            self.parker.route_expired(route)
        for route in refreshed.paused:
            self.parker.route_paused(route)
        for route in refreshed.lifted:
            self.parker.route_lifted(route)
        if refreshed.lifted or refreshed.expired:
            self.on_change()
        if refreshed.global_hold_began:
            self.on_global_hold()
        self._metrics()

    def _metrics(self) -> None:
        active = {(route, p.kind) for route, p in self.gate.pauses.items() if p.remaining > 0}
        # relay_paused is what holds the whole relay; a route's pause shows per route.
        held = {kind for route, kind in active if route == GLOBAL}
        self.metrics.show_pauses(held, active)
        self.metrics.show_circuit(self.gate.circuit_state())

    async def react(self, outcome: Outcome, route: str, probe: bool) -> None:
        """Update the route's circuit and allowance and the shared pauses after one outcome.

        An answer about the event itself (accepted, or refused for its content) shows that the
        EventApi and the route work: it closes the route's circuit and ends its pauses (and a
        pause of every route).
        """
        answered = outcome.kind in (OutcomeKind.PUBLISHED, OutcomeKind.PERMANENT)
        slow = outcome.error_class in SLOW_FAILURES
        self.gate.finished(route, succeeded=answered, slow=slow, probe=probe)
        if answered:
            self.gate.succeeded(route)
            stale = [name for name in (GLOBAL, route) if name in self.gate.pauses]
            if stale:
                await self._clear(stale)
            return
        if outcome.kind is OutcomeKind.CONFIGURATION:
            target = GLOBAL if outcome.for_all_routes else route
            await self._pause(target, self.configuration_pause, "configuration", outcome)
        elif is_throttle(outcome):
            assert outcome.retry_after is not None
            await self._pause(route, outcome.retry_after, "retry_after", outcome)
        elif outcome.kind is OutcomeKind.TRANSIENT:
            change = self.gate.failed(route, self.clock(), probe=probe)
            await self._circuit(route, change, outcome)

    async def _circuit(self, route: str, change: Change | None, outcome: Outcome) -> None:
        """The route's circuit opened (or its probe failed): pause the route for everyone."""
        if change is None:
            return
        seconds = self.gate.route(route).circuit.pause
        reason = _reason(outcome)
        if change is Change.OPENED:
            await self.calls.run(
                "pause", lambda: self.store.set_pause(route, seconds, "circuit", reason)
            )
        else:
            renewed = await self.calls.run(
                "pause", lambda: self.store.renew_pause(route, seconds, "circuit", reason)
            )
            if not renewed:
                seconds = 0  # another replica's probe renewed it first; its length holds
        if seconds:
            log.warning("circuit.opened", route=route, seconds=seconds, **_classified(outcome))
        self.gate.paused_again(route)
        await self.refresh()

    async def _pause(self, route: str, duration: timedelta, kind: str, outcome: Outcome) -> None:
        seconds = duration.total_seconds()
        await self.calls.run(
            "pause", lambda: self.store.set_pause(route, seconds, kind, _reason(outcome))
        )
        log.warning("pause.set", route=route, kind=kind, seconds=seconds, **_classified(outcome))
        self.gate.paused_again(route)
        await self.refresh()  # sees the route newly paused, and has its rows parked

    async def _clear(self, routes: list[str]) -> None:
        cleared = await self.calls.run("pause", lambda: self.store.clear_pauses(routes))
        if cleared:
            log.info("pause.cleared", routes=sorted(cleared))
        await self.refresh()


def _reason(outcome: Outcome) -> str:
    """What a pause row says: the class and status, and the partner's words (stored only)."""
    text = outcome.error_class
    if outcome.error:
        text += f": {outcome.error}"
    return text[:500]


def _classified(outcome: Outcome) -> dict[str, object]:
    """What a log line may say of an answer: its class and status, never its text (an error
    body may echo the payload)."""
    return {"outcome": outcome.error_class, "http_status": outcome.http_status}
