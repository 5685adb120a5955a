"""Whether a row may be sent now: the shared pauses, each route's circuit and its share of the
senders, and holds of everything.

Each route owns its trouble. A route has a circuit of its own (see ``relay.outbox.circuit``):
consecutive failures open it, which pauses the route for every replica (a ``circuit`` row in
``relay_pause``) while the others go on. A route's requests in flight are bounded by its
allowance: an eighth of the senders when the route is first seen, one when its pause ends
(the probe), doubling with each success until the route may use every sender, and halved with
each request that timed out or broke. A route that hangs from its first request holds an
eighth of the senders; one that starts hanging later holds at most its share of them while
other routes have rows waiting for one, until its timeouts bring it down to one.

Only what every route shares holds everything: a pause of every route (``*``: our client
refused everywhere, or a pause written by an older relay), and the token endpoint while it
cannot give a token (``hold``, this process only).

The pauses live in ``relay_pause`` and are shared by every replica; this is one process's view
of them, read every poll interval and aged locally in between. Nothing here touches the
database or the network: ``refresh`` takes the pause rows and returns what changed, and the
engine does the writing.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum

from relay.outbox.circuit import Admission, Change, Circuit, State
from relay.outbox.store import Pause

GLOBAL = "*"
# Answers after which a request held its sender for long (the request timed out, the
# connection broke, the body stalled): the route's allowance halves.
SLOW_FAILURES = frozenset({"timeout", "connection", "bad_response"})
# A route not yet seen to answer may have this fraction of the senders (1/8) in flight.
FIRST_SHARE = 8
# The order of circuit states from best to worst, for the process's one summary.
STATES = (State.CLOSED, State.HALF_OPEN, State.OPEN)


class Verdict(StrEnum):
    SEND = "send"
    PROBE = "probe"  # send, and what it gets decides the circuit
    HOLD = "hold"  # a pause is in force: give the row back unsent
    WAIT = "wait"  # the route has its fill in flight: keep the row aside


@dataclass(slots=True)
class Route:
    """One route as this process sees it."""

    circuit: Circuit
    # Requests in flight at most (None: as many as its share): an eighth of the senders at
    # first, doubling with each success (a route has every sender once it has answered).
    allowance: int | None = None
    in_flight: int = 0


@dataclass(frozen=True, slots=True)
class Refreshed:
    """What a refresh found: routes whose pause was lifted (their parked rows go back to
    pending), routes whose pause has run out and wait for a probe (one parked row goes back
    each refresh until a probe succeeds or fails), routes newly paused (their rows can be
    parked), and whether a hold of every route began (rows queued locally must go back)."""

    lifted: frozenset[str] = frozenset()
    expired: frozenset[str] = frozenset()
    paused: frozenset[str] = frozenset()  # routes whose pause this view sees begin
    global_hold_began: bool = False


@dataclass(slots=True)
class Gate:
    concurrency: int
    threshold: int  # consecutive failures that open a route's circuit
    pause_base: float  # seconds of a circuit's first pause ...
    pause_cap: float  # ... doubling with each failed probe up to this
    # Rows of a route waiting to be sent (queued or kept aside): would it take a sender?
    demand: Callable[[str], int] = lambda route: 0
    pauses: dict[str, Pause] = field(default_factory=dict)
    read_at: float = float("-inf")
    routes: dict[str, Route] = field(default_factory=dict)
    global_probe_out: bool = False
    held_until: float = float("-inf")  # everything held here (the token endpoint) until then
    hold_probe: bool = False  # a hold ran out: one request goes first

    def route(self, name: str) -> Route:
        state = self.routes.get(name)
        if state is None:
            circuit = Circuit(self.threshold, self.pause_base, self.pause_cap)
            state = self.routes[name] = Route(circuit, max(1, self.concurrency // FIRST_SHARE))
        return state

    # Reading the shared pauses -----------------------------------------------------------------

    def refresh(self, pauses: list[Pause], now: float) -> Refreshed:
        """Take a fresh read of ``relay_pause`` (at monotonic ``now``)."""
        was_held = self.global_held(now)
        before = {route for route in self.pauses if route != GLOBAL}
        # In force when last read, even if it has run out since: its end is news now.
        was_active = {route for route in before if self.pauses[route].remaining > 0}
        self.pauses = {pause.route: pause for pause in pauses}
        self.read_at = now
        if GLOBAL not in self.pauses:
            self.global_probe_out = False
        for name, state in self.routes.items():
            pause = self.pauses.get(name)
            if pause is not None and pause.kind == "circuit":
                state.circuit.observe(now, pause.remaining, pause.duration)
            else:
                state.circuit.observe(now, None, 0.0)  # none (any more): another's success
        for name, pause in self.pauses.items():
            if name != GLOBAL and pause.kind == "circuit" and name not in self.routes:
                self.route(name).circuit.observe(now, pause.remaining, pause.duration)
        routes = {route for route in self.pauses if route != GLOBAL}
        lifted = frozenset(before - routes)
        expired = frozenset(route for route in routes if self.pauses[route].remaining <= 0)
        paused = frozenset(route for route in routes - expired if route not in was_active)
        for name in (lifted | expired) & was_active:
            self.route(name).allowance = 1
        return Refreshed(lifted, expired, paused, self.global_held(now) and not was_held)

    def next_expiry(self, now: float) -> float | None:
        """Seconds until the first pause in force at the last read (or a hold) runs out, if
        any; 0 when one has run out since, so that its end is read before anything of its
        route is claimed."""
        left = [
            pause.remaining - (now - self.read_at)
            for pause in self.pauses.values()
            if pause.remaining > 0
        ]
        if now < self.held_until:
            left.append(self.held_until - now)
        return max(min(left), 0.0) if left else None

    def remaining(self, route: str, now: float) -> float:
        pause = self.pauses.get(route)
        if pause is None:
            return 0.0
        return max(pause.remaining - (now - self.read_at), 0.0)

    def paused_routes(self, now: float) -> set[str]:
        return {route for route in self.pauses if self.remaining(route, now) > 0}

    def global_held(self, now: float) -> bool:
        """Nothing may be sent: a pause of every route is in force, or a hold."""
        return self.remaining(GLOBAL, now) > 0 or now < self.held_until

    def claim_limit(self, now: float, outstanding: int) -> int | None:
        """At most this many rows may be claimed now (None: no limit beyond capacity)."""
        if self.global_held(now):
            return 0
        if GLOBAL in self.pauses or self.hold_probe:
            # A hold of everything ran out, and nobody has succeeded since: one probe.
            return 1 if outstanding == 0 else 0
        return None

    def full_routes(self) -> list[str]:
        """Routes that take no more rows now: their allowance is in flight. A claim leaves
        their rows for later, so the rows claimed are rows that can go."""
        return [
            name
            for name, state in self.routes.items()
            if state.allowance is not None and state.in_flight >= state.allowance
        ]

    def configuration_error(self, now: float) -> str | None:
        """A configuration pause of every route (our client is refused everywhere) in force."""
        pause = self.pauses.get(GLOBAL)
        if pause is not None and pause.kind == "configuration" and self.remaining(GLOBAL, now):
            return f"{GLOBAL}: {pause.reason}"
        return None

    def circuit_state(self) -> State:
        """The worst state of any route's circuit (closed when there is no route)."""
        states = [state.circuit.state for state in self.routes.values()]
        return max(states, key=STATES.index, default=State.CLOSED)

    # Holding everything ------------------------------------------------------------------------

    def hold(self, now: float, seconds: float) -> bool:
        """Hold every route for ``seconds`` (the token endpoint cannot give a token until
        then); then one request goes first. True when this began a hold."""
        began = not now < self.held_until
        self.held_until = max(self.held_until, now + seconds)
        self.hold_probe = True
        return began

    # Admitting one row -------------------------------------------------------------------------

    def admit(self, route: str, now: float) -> Verdict:
        """May a row of ``route`` be sent now?"""
        if self.global_held(now) or self.remaining(route, now) > 0:
            return Verdict.HOLD
        if GLOBAL in self.pauses or self.hold_probe:
            # A hold of everything that ran out: the first request probes, the others wait.
            if self.global_probe_out:
                return Verdict.HOLD
            self.global_probe_out = True
            return Verdict.PROBE
        state = self.route(route)
        if state.allowance is None and route in self.pauses:
            # Its pause has run out but was not lifted: nobody has succeeded on it since, so
            # one request goes first, whether or not a refresh saw the end.
            state.allowance = 1
        if state.in_flight >= self._limit(route, state):
            return Verdict.WAIT
        admission = state.circuit.admit(now)
        if admission is Admission.HOLD:
            return Verdict.HOLD
        return Verdict.PROBE if admission is Admission.PROBE else Verdict.SEND

    def _limit(self, route: str, state: Route) -> int:
        """How many requests of ``route`` may be in flight now: its allowance; and, while
        another route with rows waiting is held below its own share of the senders, its share."""
        limit = self.concurrency if state.allowance is None else state.allowance
        if state.in_flight < math.ceil(self.concurrency / len(self.routes)):
            return limit  # below any share there could be (or the only route)
        busy = [
            (name, other)
            for name, other in self.routes.items()
            if other.in_flight or self.demand(name)
        ]
        share = math.ceil(self.concurrency / max(len(busy), 1))
        for name, other in busy:
            room = min(share, self.concurrency if other.allowance is None else other.allowance)
            if name != route and other.in_flight < room and self.demand(name):
                return min(limit, share)  # another route waits below its share
        return limit

    def sending(self, route: str) -> None:
        self.route(route).in_flight += 1

    def returned(self, route: str, verdict: Verdict) -> None:
        """A row admitted with ``verdict`` went back unsent."""
        if verdict is Verdict.PROBE:
            self.route(route).circuit.probe_returned()
            self.global_probe_out = False

    def finished(self, route: str, *, succeeded: bool, slow: bool, probe: bool) -> None:
        """A request of ``route`` came back. A success widens the route's allowance; a
        failure that held its sender for long (``slow``) narrows it."""
        if probe:
            self.global_probe_out = False
        self.hold_probe = False  # the API answered: a token was had
        state = self.route(route)
        state.in_flight = max(state.in_flight - 1, 0)
        if succeeded:
            if state.allowance is not None:
                state.allowance *= 2
                if state.allowance >= self.concurrency:
                    state.allowance = None
        elif slow:
            current = self.concurrency if state.allowance is None else state.allowance
            state.allowance = max(1, min(current, state.in_flight + 1) // 2)

    def succeeded(self, route: str) -> Change | None:
        """The route answered as the partner answers when it is well: its circuit closes."""
        return self.route(route).circuit.succeeded()

    def failed(self, route: str, now: float, *, probe: bool) -> Change | None:
        """A request of the route failed in a way that counts against it."""
        return self.route(route).circuit.failed(now, probe=probe)

    def counts(self, route: str, probe: bool) -> bool:
        """Whether a failure now costs the row an attempt: not while the route's circuit is
        open or probing (an outage is nobody's fault)."""
        return not probe and self.route(route).circuit.state is State.CLOSED

    def paused_again(self, route: str) -> None:
        """The route was paused again: it starts over at one request when that pause ends."""
        self.route(route).allowance = 1
