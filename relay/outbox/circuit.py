"""The circuit breaker of one route: a pure state machine over (state, event), with its table
in the tests.

It counts consecutive failures of its route (timeouts, resets, 5xx without a Retry-After); at
``threshold`` it opens for ``base`` seconds, during which nothing of the route is sent.
When the pause runs out, one request goes as a probe (half-open). The probe's success closes
the circuit; its failure opens it again for twice as long, up to ``cap``. Failures of requests
that were already in flight when the circuit opened, or that are not the probe, change
nothing: the pause doubles once per failed probe, never once per failed request.

The circuit is shared by every replica through the route's pause row in ``relay_pause`` (kind
``circuit``): the engine writes what a transition asks for and ``observe`` folds in what other
replicas wrote. With the defaults (``RELAY_CIRCUIT_PAUSE`` 1 s, ``RELAY_CIRCUIT_PAUSE_CAP``
2 s) a failing route is probed at least every 2 s, however long it fails.
Time is an input (a monotonic ``now``), so the table tests need no clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class State(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class Admission(StrEnum):
    SEND = "send"  # closed: send as usual
    PROBE = "probe"  # the one request that tests whether the partner is back
    HOLD = "hold"  # open, or a probe is out: send nothing


class Change(StrEnum):
    """What the engine must write to the shared pause after a transition."""

    OPENED = "opened"  # set the global pause for ``pause`` seconds
    REOPENED = "reopened"  # renew it (the probe failed) for ``pause`` seconds
    CLOSED = "closed"  # clear it


@dataclass(slots=True)
class Circuit:
    threshold: int
    base: float
    cap: float
    state: State = State.CLOSED
    failures: int = 0  # consecutive failures while closed
    pause: float = 0.0  # length of the current (or last) opening, seconds
    until: float = float("-inf")  # when the current opening ends (monotonic seconds)
    probe_out: bool = False

    def admit(self, now: float) -> Admission:
        """May a request go now, and is it the probe?"""
        if self.state is State.CLOSED:
            return Admission.SEND
        if self.state is State.OPEN and now < self.until:
            return Admission.HOLD
        if self.probe_out:
            return Admission.HOLD
        self.state = State.HALF_OPEN
        self.probe_out = True
        return Admission.PROBE

    def probe_returned(self) -> None:
        """The probe was not sent after all (given back): the next request may probe."""
        self.probe_out = False

    def succeeded(self) -> Change | None:
        """A request was answered as the partner answers when it is well."""
        self.failures = 0
        if self.state is State.CLOSED:
            return None
        self.state, self.probe_out = State.CLOSED, False
        return Change.CLOSED

    def failed(self, now: float, *, probe: bool) -> Change | None:
        """A request failed in a way that counts against the partner."""
        if self.state is State.CLOSED:
            self.failures += 1
            if self.failures < self.threshold:
                return None
            self._open(now, min(self.base, self.cap))
            return Change.OPENED
        if self.state is State.HALF_OPEN and probe:
            self._open(now, min(max(self.pause, self.base) * 2, self.cap))
            return Change.REOPENED
        return None  # in flight before the circuit opened, or not the probe: no news

    def observe(self, now: float, remaining: float | None, duration: float) -> None:
        """Fold in the route's shared circuit pause: None when there is none, else the seconds
        it has left (0 once it ran out) and how long it was set for."""
        if remaining is None:
            if self.state is not State.CLOSED:
                # Another replica's success ended it.
                self.state, self.failures, self.probe_out = State.CLOSED, 0, False
            return
        self.pause = duration
        if remaining > 0:
            self.state, self.until = State.OPEN, now + remaining
            self.probe_out = False
        elif self.state is State.CLOSED:
            # Opened elsewhere and already run out: the next request here may probe.
            self.state, self.until = State.OPEN, now

    def _open(self, now: float, pause: float) -> None:
        self.state, self.pause, self.until = State.OPEN, pause, now + pause
        self.failures, self.probe_out = 0, False
