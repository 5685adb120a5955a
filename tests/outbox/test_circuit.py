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
    gate = Gate(8, 3, 5.0, 40.0)
    gate.refresh([pause("dk/a", 5.0)], now=0.0)
    assert gate.admit("dk/a", 1.0) is Verdict.HOLD
    assert gate.admit("dk/b", 1.0) is Verdict.SEND
    refreshed = gate.refresh([pause("dk/a", 0.0)], now=6.0)
    assert refreshed.expired == {"dk/a"}
    # One request first; the others wait for it.
    assert gate.admit("dk/a", 6.0) is Verdict.SEND
    gate.sending("dk/a")
    assert gate.admit("dk/a", 6.0) is Verdict.WAIT
    gate.finished("dk/a", succeeded=True, slow=False, probe=False)
    allowed = []
    for _ in range(3):
        allowed.append(gate.admit("dk/a", 6.0))
        gate.sending("dk/a")
    assert allowed == [Verdict.SEND, Verdict.SEND, Verdict.WAIT]  # two after one success


def test_a_global_pause_holds_everything_and_then_one_probe_goes() -> None:
    gate = Gate(8, 3, 5.0, 40.0)
    refreshed = gate.refresh([pause("*", 5.0, "configuration")], now=0.0)
    assert refreshed.global_hold_began
    assert gate.claim_limit(1.0, outstanding=0) == 0
    assert gate.admit("dk/a", 1.0) is Verdict.HOLD
    gate.refresh([pause("*", 0.0, "configuration")], now=6.0)
    assert gate.claim_limit(6.0, outstanding=0) == 1
    assert gate.admit("dk/a", 6.0) is Verdict.PROBE
    assert gate.admit("dk/b", 6.0) is Verdict.HOLD


def admit_all(gate: Gate, route: str, count: int, now: float = 0.0) -> list[Verdict]:
    """Admit ``count`` requests of ``route`` in a row, each sent when admitted."""
    verdicts = []
    for _ in range(count):
        verdict = gate.admit(route, now)
        verdicts.append(verdict)
        if verdict in (Verdict.SEND, Verdict.PROBE):
            gate.sending(route)
    return verdicts


def test_a_route_gets_an_eighth_of_the_senders_until_it_answers_then_all() -> None:
    gate = Gate(32, 3, 5.0, 40.0)
    assert admit_all(gate, "dk/a", 5) == [Verdict.SEND] * 4 + [Verdict.WAIT]
    assert gate.full_routes() == ["dk/a"]  # a claim takes no more of its rows now
    for expected in (8, 16, 32):
        gate.finished("dk/a", succeeded=True, slow=False, probe=False)
        assert gate.route("dk/a").allowance == (None if expected == 32 else expected)
    assert gate.full_routes() == []


def test_a_route_whose_requests_time_out_falls_to_one_request() -> None:
    gate = Gate(32, 100, 5.0, 40.0)
    route = gate.route("dk/hung")
    route.allowance = None
    admit_all(gate, "dk/hung", 16)
    allowances: list[int | None] = []
    for _ in range(6):  # the requests in flight time out one after the other
        gate.finished("dk/hung", succeeded=False, slow=True, probe=False)
        allowances.append(route.allowance)
    assert allowances == [8, 4, 2, 1, 1, 1]
    # A fast failure (a 503) says nothing about senders held: the allowance stays.
    gate.finished("dk/hung", succeeded=False, slow=False, probe=False)
    assert route.allowance == 1


def test_a_route_holds_at_most_its_share_while_another_waits_below_its_own() -> None:
    demand = {"dk/a": 50, "dk/b": 50}
    gate = Gate(32, 3, 5.0, 40.0, demand=lambda route: demand.get(route, 0))
    for name in ("dk/a", "dk/b"):
        gate.route(name).allowance = None
    # dk/b waits below its share (none in flight): dk/a stops at its share, 16 of 32.
    assert admit_all(gate, "dk/a", 20) == [Verdict.SEND] * 16 + [Verdict.WAIT] * 4
    # The other 16 senders go to dk/b (the senders themselves are the bound of 32).
    assert admit_all(gate, "dk/b", 16) == [Verdict.SEND] * 16
    # dk/b has nothing more to send: dk/a may take the senders dk/b leaves.
    demand["dk/b"] = 0
    assert admit_all(gate, "dk/a", 4) == [Verdict.SEND] * 4


def test_each_route_has_its_own_circuit() -> None:
    gate = Gate(8, 3, 5.0, 40.0)
    changes = [gate.failed("dk/a", 100.0, probe=False) for _ in range(3)]
    assert changes == [None, None, Change.OPENED]
    assert gate.route("dk/a").circuit.state is State.OPEN
    assert gate.route("dk/b").circuit.state is State.CLOSED
    assert gate.counts("dk/b", probe=False)
    assert not gate.counts("dk/a", probe=False)
    assert gate.admit("dk/b", 101.0) is Verdict.SEND
    assert gate.admit("dk/a", 101.0) is Verdict.HOLD
    assert gate.circuit_state() is State.OPEN  # the process's summary: its worst route


def test_a_hold_of_everything_ends_with_one_probe() -> None:
    """The token endpoint cannot give a token for 2 s: nothing goes, then one request."""
    gate = Gate(8, 3, 5.0, 40.0)
    assert gate.hold(0.0, 2.0)
    assert not gate.hold(1.0, 0.5)  # already held: not a new hold
    assert gate.claim_limit(1.0, outstanding=0) == 0
    assert gate.admit("dk/a", 1.0) is Verdict.HOLD
    assert gate.next_expiry(1.0) == 1.0
    assert gate.claim_limit(2.5, outstanding=0) == 1
    assert gate.admit("dk/a", 2.5) is Verdict.PROBE
    assert gate.admit("dk/b", 2.5) is Verdict.HOLD
    gate.finished("dk/a", succeeded=False, slow=False, probe=True)  # the API answered
    assert gate.claim_limit(2.5, outstanding=0) is None
