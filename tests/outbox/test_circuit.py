"""The circuit breaker's transitions, as a table, and the gate's verdicts."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from relay.outbox.circuit import Admission, Change, Circuit, State
from relay.outbox.gate import Gate, Verdict
from relay.outbox.store import Pause


def circuit(state: State = State.CLOSED, **fields: float | bool | int) -> Circuit:
    machine = Circuit(threshold=3, base=5.0, cap=40.0, state=state)
    for name, value in fields.items():
        setattr(machine, name, value)
    return machine


@dataclass(frozen=True)
class Row:
    """One transition: from a state, an event at time 100, to a state, writing a change."""

    name: str
    start: Circuit
    event: str  # "success", "failure", "probe_failure", "admit"
    state: State
    change: Change | Admission | None
    pause: float | None = None


TABLE = [
    Row("closed, success", circuit(failures=2), "success", State.CLOSED, None),
    Row("closed, failure below threshold", circuit(failures=1), "failure", State.CLOSED, None),
    Row("closed, threshold reached", circuit(failures=2), "failure", State.OPEN, Change.OPENED, 5),
    Row("closed admits", circuit(), "admit", State.CLOSED, Admission.SEND),
    Row("open, in pause", circuit(State.OPEN, pause=5, until=104), "admit", State.OPEN,
        Admission.HOLD),
    # In flight before the circuit opened: no news, the pause does not grow.
    Row("open, failure", circuit(State.OPEN, pause=5, until=104), "failure", State.OPEN, None, 5),
    Row("open, pause over", circuit(State.OPEN, pause=5, until=99), "admit", State.HALF_OPEN,
        Admission.PROBE),
    Row("half open, probe out", circuit(State.HALF_OPEN, pause=5, probe_out=True), "admit",
        State.HALF_OPEN, Admission.HOLD),
    Row("half open, probe fails", circuit(State.HALF_OPEN, pause=5, probe_out=True),
        "probe_failure", State.OPEN, Change.REOPENED, 10),
    Row("half open, other failure", circuit(State.HALF_OPEN, pause=5, probe_out=True),
        "failure", State.HALF_OPEN, None, 5),
    Row("half open, capped", circuit(State.HALF_OPEN, pause=30, probe_out=True),
        "probe_failure", State.OPEN, Change.REOPENED, 40),
    Row("half open, success", circuit(State.HALF_OPEN, pause=5, probe_out=True), "success",
        State.CLOSED, Change.CLOSED),
    Row("open, success (a request from before)", circuit(State.OPEN, pause=5, until=104),
        "success", State.CLOSED, Change.CLOSED),
]  # fmt: skip


@pytest.mark.parametrize("row", TABLE, ids=[row.name for row in TABLE])
def test_transitions(row: Row) -> None:
    machine = row.start
    if row.event == "admit":
        result: Change | Admission | None = machine.admit(100.0)
    elif row.event == "success":
        result = machine.succeeded()
    else:
        result = machine.failed(100.0, probe=row.event == "probe_failure")
    assert (machine.state, result) == (row.state, row.change)
    if row.pause is not None:
        assert machine.pause == row.pause
        if row.change in (Change.OPENED, Change.REOPENED):
            assert machine.until == 100.0 + row.pause


def test_a_burst_of_failures_in_flight_opens_the_circuit_once() -> None:
    machine = circuit()
    changes = [machine.failed(100.0, probe=False) for _ in range(50)]
    assert changes.count(Change.OPENED) == 1
    assert machine.pause == 5


def test_a_returned_probe_lets_the_next_request_probe() -> None:
    machine = circuit(State.OPEN, pause=5, until=99)
    assert machine.admit(100.0) is Admission.PROBE
    assert machine.admit(100.0) is Admission.HOLD
    machine.probe_returned()
    assert machine.admit(100.0) is Admission.PROBE


@pytest.mark.parametrize(
    ("shared", "state"),
    [
        (None, State.CLOSED),  # another replica's success ended it
        ((20.0, 10.0), State.OPEN),  # another replica opened it
    ],
)
def test_the_shared_pause_is_folded_in(shared: tuple[float, float] | None, state: State) -> None:
    machine = circuit(State.HALF_OPEN, pause=5, probe_out=True)
    machine.observe(100.0, *(shared or (None, 0.0)))
    assert machine.state is state
    if shared:
        assert machine.until == 120.0
        assert machine.admit(110.0) is Admission.HOLD


def pause(route: str, remaining: float, kind: str = "retry_after") -> Pause:
    return Pause(route, kind, "test", "h:1", remaining, 10.0)


def test_a_route_pause_holds_that_route_only_and_ramps_up_after() -> None:
    gate = Gate(circuit(), concurrency=8)
    gate.refresh([pause("dk/a", 5.0)], now=0.0)
    assert gate.admit("dk/a", 1.0) is Verdict.HOLD
    assert gate.admit("dk/b", 1.0) is Verdict.SEND
    refreshed = gate.refresh([pause("dk/a", 0.0)], now=6.0)
    assert refreshed.expired == {"dk/a"}
    # One request first; the others wait for it.
    assert gate.admit("dk/a", 6.0) is Verdict.SEND
    gate.sending("dk/a")
    assert gate.admit("dk/a", 6.0) is Verdict.WAIT
    gate.finished("dk/a", succeeded=True, probe=False)
    allowed = []
    for _ in range(3):
        allowed.append(gate.admit("dk/a", 6.0))
        gate.sending("dk/a")
    assert allowed == [Verdict.SEND, Verdict.SEND, Verdict.WAIT]  # two after one success


def test_a_global_pause_holds_everything_and_then_one_probe_goes() -> None:
    gate = Gate(circuit(), concurrency=8)
    refreshed = gate.refresh([pause("*", 5.0, "configuration")], now=0.0)
    assert refreshed.global_hold_began
    assert gate.claim_limit(1.0, outstanding=0) == 0
    assert gate.admit("dk/a", 1.0) is Verdict.HOLD
    gate.refresh([pause("*", 0.0, "configuration")], now=6.0)
    assert gate.claim_limit(6.0, outstanding=0) == 1
    assert gate.admit("dk/a", 6.0) is Verdict.PROBE
    assert gate.admit("dk/b", 6.0) is Verdict.HOLD
