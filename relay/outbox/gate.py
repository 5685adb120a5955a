"""Whether a row may be sent now: the circuit, the shared pauses and each route's ramp.

The pauses live in ``relay_pause`` and are shared by every replica; this is one process's view
of them, read every poll interval and aged locally in between, plus what only this process
knows: its circuit (see ``relay.outbox.circuit``) and, for a route whose pause just ended, how many
requests it may have in flight while it ramps back up (1, then doubling with each success).

Nothing here touches the database or the network: ``refresh`` takes the pause rows and returns
what changed, and the engine does the writing.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum

from relay.outbox.circuit import Admission, Circuit
from relay.outbox.store import Pause

GLOBAL = "*"


class Verdict(StrEnum):
    SEND = "send"
    PROBE = "probe"  # send, and what it gets decides the circuit
    HOLD = "hold"  # a pause is in force: give the row back unsent
    WAIT = "wait"  # the route is ramping up and has its fill in flight: keep the row aside


@dataclass(slots=True)
class Ramp:
    allowance: int = 1
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What a refresh found: routes whose pause was lifted (their parked rows go back to
    pending), routes whose pause has run out and wait for a probe (one parked row goes back
    each refresh until a probe succeeds or fails), routes newly paused (their rows can be
    parked), and whether a global pause began (rows queued locally must go back)."""

    lifted: frozenset[str] = frozenset()
    expired: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()  # routes whose pause this view sees begin
    global_hold_began: bool = False


@dataclass(slots=True)
class Gate:
    circuit: Circuit
    concurrency: int
    pauses: dict[str, Pause] = field(default_factory=dict)
    read_at: float = float("-inf")
    ramps: dict[str, Ramp] = field(default_factory=dict)
    global_probe_out: bool = False

    # Reading the shared pauses -----------------------------------------------------------------

    def refresh(self, pauses: list[Pause], now: float) -> Refreshed:
        """Take a fresh read of ``relay_pause`` (at monotonic ``now``)."""
        was_held = self.global_held(now)
        before = {route for route in self.pauses if route != GLOBAL}
        # In force when last read, even if it has run out since: its end is news now.
        was_active = {route for route in before if self.pauses[route].remaining > 0}
        self.pauses = {pause.route: pause for pause in pauses}
        self.read_at = now
        shared = self.pauses.get(GLOBAL)
        circuit_pause = shared if shared is not None and shared.kind == "circuit" else None
        self.circuit.observe(
            now,
            None if circuit_pause is None else circuit_pause.remaining,
            0.0 if circuit_pause is None else circuit_pause.duration,
        )
        if shared is None:
            self.global_probe_out = False
        routes = {route for route in self.pauses if route != GLOBAL}
        lifted = frozenset(before - routes)
        expired = frozenset(route for route in routes if self.pauses[route].remaining <= 0)
        paused = frozenset(route for route in routes - expired if route not in was_active)
        for route in (lifted | expired) & was_active:
            self.ramps[route] = Ramp()
        return Refreshed(lifted, expired, paused, self.global_held(now) and not was_held)

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the first pause in force at the last read (or the open circuit) runs
        out, if any; 0 when one has run out since, so that its end is read before anything
        of its route is claimed."""
        left = [
            pause.remaining - (now - self.read_at)
            for pause in self.pauses.values()
            if pause.remaining > 0
        ]
        if self.circuit.state == "open":
            left.append(self.circuit.until - now)
        return max(min(left), 0.0) if left else None

    def remaining(self, route: str, now: float) -> float:
        pause = self.pauses.get(route)
        if pause is None:
            return 0.0
        return max(pause.remaining - (now - self.read_at), 0.0)

    def paused_routes(self, now: float) -> set[str]:
        return {route for route in self.pauses if self.remaining(route, now) > 0}

    def global_held(self, now: float) -> bool:
        """Nothing may be sent: the circuit is open or a global pause is in force."""
        return self.remaining(GLOBAL, now) > 0 or (
            self.circuit.state == "open" and now < self.circuit.until
        )

    def claim_limit(self, now: float, outstanding: int) -> int | None:
        """At most this many rows may be claimed now (None: no limit beyond capacity)."""
        if self.global_held(now):
            return 0
        if GLOBAL in self.pauses or self.circuit.state != "closed":
            # A global pause that ran out, and nobody has succeeded since: one probe at a time.
            return 1 if outstanding == 0 else 0
        return None

    def configuration_error(self, now: float) -> str | None:
        """A global configuration pause (our client is refused everywhere) in force."""
        pause = self.pauses.get(GLOBAL)
        if pause is not None and pause.kind == "configuration" and self.remaining(GLOBAL, now):
            return f"{GLOBAL}: {pause.reason}"
        return None

    # Admitting one row -------------------------------------------------------------------------

    def admit(self, route: str, now: float) -> Verdict:
        """May a row of ``route`` be sent now?"""
        if self.remaining(route, now) > 0 or self.remaining(GLOBAL, now) > 0:
            return Verdict.HOLD
        ramp = self.ramps.get(route)
        if ramp is None and route in self.pauses:
            # Its pause has run out but was not lifted: nobody has succeeded on it since, so
            # one request goes first, whether or not a refresh saw the end.
            ramp = self.ramps[route] = Ramp()
        if ramp is not None and ramp.in_flight >= ramp.allowance:
            return Verdict.WAIT
        admission = self.circuit.admit(now)
        if admission is Admission.HOLD:
            return Verdict.HOLD
        if admission is Admission.SEND and GLOBAL in self.pauses:
            # A global pause that ran out: the first request probes, the others wait for it.
            if self.global_probe_out:
                return Verdict.HOLD
            self.global_probe_out = True
            return Verdict.PROBE
        return Verdict.PROBE if admission is Admission.PROBE else Verdict.SEND

    def sending(self, route: str) -> None:
        ramp = self.ramps.get(route)
        if ramp is not None:
            ramp.in_flight += 1

    def returned(self, route: str, verdict: Verdict) -> None:
        """A row admitted with ``verdict`` went back unsent."""
        if verdict is Verdict.PROBE:
            self.circuit.probe_returned()
            self.global_probe_out = False

    def finished(self, route: str, *, succeeded: bool, probe: bool) -> None:
        """A request of ``route`` came back; a success widens the route's ramp."""
        if probe:
            self.global_probe_out = False
        ramp = self.ramps.get(route)
        if ramp is None:
            return
        ramp.in_flight = max(ramp.in_flight - 1, 0)
        if succeeded:
            ramp.allowance *= 2
            if ramp.allowance >= self.concurrency:
                del self.ramps[route]

    def paused_again(self, route: str) -> None:
        """The route was paused again: its ramp starts over when that pause ends."""
        self.ramps.pop(route, None)
