"""Every Prometheus metric the relay exports, declared once.

Metrics live on an instance with its own registry, so each process (and each test) owns one.

The exposition follows Prometheus' conventions, because alerts depend on them:

- No ``*_created`` series: they double the series of every counter and histogram and no
  dashboard or alert reads them. The registry drops them itself rather than through
  ``prometheus_client.disable_created_metrics()``, which would switch them off for the whole
  process, an application's own metrics included.
- A series exists, at 0, before its first event when its labels are few and known: every
  ``reason``, pause ``kind``, circuit ``state`` and database ``operation`` from the start.
  Series labelled with an event type or an outcome class are born with their first event, so
  the number of series follows the traffic; the runbook's dead-letter alert looks for series
  younger than its window, as ``increase()`` sees nothing of a series' first sample.
- Labels stay few: routes and event types come from rows, so they are folded into ``other``
  past ``ROUTE_LIMIT`` and ``EVENT_TYPE_LIMIT`` distinct values, and whatever is not a valid
  route or a plausible event type is ``other`` at once.
"""

from __future__ import annotations

import bisect
import platform
import re
from collections.abc import Callable, Iterable, Iterator
from importlib.metadata import PackageNotFoundError, version

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector

from relay import DISTRIBUTION
from relay.routes import route_problem

# Route label sets (country, tenant) kept before the rest fold into other/other; 100 routes
# of 15 latency series each is the most the publish latency histogram can grow to.
ROUTE_LIMIT = 100
EVENT_TYPE_LIMIT = 100
# Series with a route or an event type among their labels are born with their first event,
# never ahead of it: a relay shows what happened, and the cardinality follows the traffic
# (docs/operations.md, "Cardinality"). Only the few series of the process itself (circuit,
# pauses, token and database failures, blocked rows, given-back rows) and two per configured
# receive route (polling, malformed items) start at 0.
# Routes (as given, valid or not) whose latency histogram is kept at hand.
LATENCY_CHILDREN = 2 * ROUTE_LIMIT
OTHER = "other"
GLOBAL = "*"  # the route of a pause that holds every route
# Scalepoint's event types are words such as payment_status_updated; anything else (a buggy
# producer's UUID, a megabyte of text) is counted as other.
_EVENT_TYPE = re.compile(r"[A-Za-z0-9_.:-]{1,100}")

CIRCUIT_STATES = ("closed", "half_open", "open")
PAUSE_KINDS = ("retry_after", "circuit", "configuration")
GIVE_BACK_REASONS = ("paused", "lease_too_short", "liveness_lost", "shutdown", "no_token")
TOKEN_FAILURE_REASONS = ("unavailable", "rejected")
BLOCKED_REASONS = ("dead_row", "route_pause")  # outbox.blocked_by
DATABASE_OPERATIONS = (
    "claim",
    "record",
    "extend",
    "rescue",
    "pauses",
    "pause",
    "blocked",
    "unpark_stale",
    "park_behind_dead",
    "park_route",
    "unpark_route",
    "unpark_probe",
)
# The error_class values of docs/classification.md (a unit test holds them together). A row is
# retried after a transient answer; it dies of one once it is old and tried enough, and at once
# of a permanent one. A refusal (of the route or of our client) and the token endpoint's
# outage hold the row under a pause without an attempt: neither counter moves.
# The outcome_class label takes these values (and http_NNN of statuses the table does not
# list), each series born with its first event.
RETRY_CLASSES = (
    "bad_response",
    "http_204",
    "http_408",
    "http_425",
    "http_429",
    "http_500",
    "http_502",
    "http_503",
    "http_504",
    "timeout",
    "connection",
    "unexpected",
)
DEAD_CLASSES = (
    *RETRY_CLASSES,
    "invalid_payload",
    "missing_header",
    "http_400",
    "http_405",
    "http_409",
    "http_410",
    "http_413",
    "http_415",
    "http_422",
    "invalid_event_type",
    "invalid_route",
    "invalid_event",
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


def relay_version() -> str:
    """The installed release, as ``relay --version`` prints it."""
    try:
        return version(DISTRIBUTION)
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"


class _Registry(CollectorRegistry):
    """A registry whose exposition has no ``*_created`` samples."""

    def collect(self) -> Iterator[Metric]:
        for metric in super().collect():
            created = f"{metric.name}_created"
            metric.samples = [item for item in metric.samples if item.name != created]
            yield metric


class _LatencyHistogram(Collector):
    """``relay_publish_latency_seconds``: a histogram by route, observed once per request.

    A plain count per bucket, exported at each scrape: prometheus_client's Histogram takes a
    lock and walks its buckets in Python for every observation, which cost about 1 % of the
    relay's CPU per event. The exposition is the same (cumulative ``_bucket``, ``_count``,
    ``_sum``).
    """

    def __init__(self, name: str, documentation: str, buckets: tuple[float, ...]) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = buckets
        self.series: dict[tuple[str, str], tuple[list[int], list[float]]] = {}

    def labels(self, country: str, tenant: str) -> tuple[list[int], list[float]]:
        """The route's counts (one per bucket, and one past the last) and its sum."""
        series = self.series.get((country, tenant))
        if series is None:
            series = self.series[(country, tenant)] = ([0] * (len(self.bounds) + 1), [0.0])
        return series

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=["country", "tenant"])
        for (country, tenant), (counts, total) in self.series.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((_le(bound), cumulative))
            family.add_metric([country, tenant], buckets, total[0])
        yield family


def _le(bound: float) -> str:
    """A bucket's ``le`` label as prometheus_client writes it: ``0.005``, ``1.0``, ``+Inf``."""
    return "+Inf" if bound == float("inf") else repr(float(bound))


class _Folding:
    """Label values as they come, up to ``limit`` distinct ones; then ``other``."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.known: set[tuple[str, ...]] = set()

    def __call__(self, value: tuple[str, ...], valid: Callable[[], bool]) -> bool:
        """Whether ``value`` may be a label value of its own; ``valid`` is asked only for a
        value not yet known."""
        if value in self.known:
            return True
        if len(self.known) >= self.limit or not valid():
            return False
        self.known.add(value)
        return True


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or _Registry()
        r = self.registry
        route = ["country", "tenant"]
        self.published = Counter(
            "relay_events_published",
            "Events Scalepoint accepted.",
            ["event_type", *route],
            registry=r,
        )
        self.retried = Counter(
            "relay_events_retried",
            "Delivery attempts that failed and were scheduled again.",
            ["event_type", *route, "outcome_class"],
            registry=r,
        )
        self.dead = Counter(
            "relay_events_dead_lettered",
            "Events given up on, with the class of their last error.",
            ["event_type", *route, "outcome_class"],
            registry=r,
        )
        self.publish_latency = _LatencyHistogram(
            "relay_publish_latency_seconds",
            "Duration of one publish request, token included.",
            LATENCY_BUCKETS,
        )
        r.register(self.publish_latency)
        self.in_flight = Gauge(
            "relay_requests_in_flight", "Publish requests currently in flight.", registry=r
        )
        self.queue_depth = Gauge(
            "relay_queue_depth",
            "Rows still to send: pending, in flight or blocked (sampled).",
            registry=r,
        )
        self.oldest_pending_age = Gauge(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest row not yet published or dead (sampled).",
            registry=r,
        )
        self.blocked_rows = Gauge(
            "relay_blocked_rows",
            "Rows parked: behind a dead row of their key (dead_row), or on a paused route "
            "(route_pause) (sampled).",
            ["reason"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "relay_token_refreshes", "Access tokens obtained.", registry=r
        )
        self.token_failures = Counter(
            "relay_token_failures", "Failed token requests.", ["reason"], registry=r
        )
        self.circuit_state = Gauge(
            "relay_circuit_state",
            "1 for the circuit's current state (closed, half_open: probing, open), else 0.",
            ["state"],
            registry=r,
        )
        self.claim_batch_size = Histogram(
            "relay_claim_batch_size",
            "Rows returned by one claim.",
            buckets=(0, 1, 2, 4, 8, 16, 32, 64, 128, 256, 512),
            registry=r,
        )
        self.fence_lost = Counter(
            "relay_results_fence_lost",
            "Outcomes not written because the row's lease had passed to another worker.",
            registry=r,
        )
        self.db_errors = Counter(
            "relay_database_errors", "Failed database operations.", ["operation"], registry=r
        )
        self.paused = Gauge(
            "relay_paused", "1 while a shared pause holds this relay.", ["kind"], registry=r
        )
        self.route_paused = Gauge(
            "relay_route_paused",
            "1 while a pause of this kind holds the route (country/tenant; * for all).",
            [*route, "kind"],
            registry=r,
        )
        self.given_back = Counter(
            "relay_rows_given_back",
            "Claimed rows returned unsent, without using an attempt.",
            ["reason"],
            registry=r,
        )
        self.leases_lost = Counter(
            "relay_leases_lost",
            "Held rows whose lease another claim took before this process sent them.",
            registry=r,
        )
        self.inbox_received = Counter(
            "relay_inbox_events_received",
            "Events received from Scalepoint and stored in the inbox.",
            ["country", "tenant", "event_type"],
            registry=r,
        )
        self.inbox_malformed = Counter(
            "relay_inbox_items_malformed",
            "Received items that were not events, kept raw as failed.",
            ["country", "tenant"],
            registry=r,
        )
        self.inbox_errors = Counter(
            "relay_inbox_receive_errors",
            "Failed receive calls, by the class of the failure.",
            ["country", "tenant", "error_class"],
            registry=r,
        )
        self.inbox_lag = Gauge(
            "relay_inbox_lag_seconds",
            "Now minus the newest received event's own timestamp, per route (sampled).",
            ["country", "tenant"],
            registry=r,
        )
        self.inbox_checkpoint_age = Gauge(
            "relay_inbox_checkpoint_age_seconds",
            "Seconds since Scalepoint last answered a receive call of the route (sampled).",
            ["country", "tenant"],
            registry=r,
        )
        self.inbox_pending = Gauge(
            "relay_inbox_pending_events",
            "Received events waiting for the insurer's consumers, per route (sampled).",
            ["country", "tenant"],
            registry=r,
        )
        self.inbox_oldest_pending_age = Gauge(
            "relay_inbox_oldest_pending_age_seconds",
            "Seconds since the oldest event waiting for consumers was received, 0 when none "
            "waits (sampled).",
            ["country", "tenant"],
            registry=r,
        )
        self.inbox_polling = Gauge(
            "relay_inbox_polling",
            "1 while this relay is the route's one receiver.",
            ["country", "tenant"],
            registry=r,
        )
        self.rescued = Counter(
            "relay_rows_rescued",
            "Rows of stopped relays whose lease was ended early so they are sent again.",
            registry=r,
        )
        self.ready = Gauge(
            "relay_ready", "1 while /readyz answers ready, else 0 (set when scraped).", registry=r
        )
        self.build_info = Info("relay_build", "The running release.", registry=r)
        self.build_info.info({"version": relay_version(), "python": platform.python_version()})
        self._routes = _Folding(ROUTE_LIMIT)
        self._event_types = _Folding(EVENT_TYPE_LIMIT)
        self._latency: dict[tuple[str, str], tuple[list[int], list[float]]] = {}
        self._zero_initialise()

    def _zero_initialise(self) -> None:
        for reason in TOKEN_FAILURE_REASONS:
            self.token_failures.labels(reason)
        for reason in GIVE_BACK_REASONS:
            self.given_back.labels(reason)
        for reason in BLOCKED_REASONS:
            self.blocked_rows.labels(reason)
        for operation in DATABASE_OPERATIONS:
            self.db_errors.labels(operation)
        for kind in PAUSE_KINDS:
            self.paused.labels(kind).set(0)
        self.show_circuit("closed")

    # Labels ---------------------------------------------------------------------------------

    def route_labels(self, country: str | None, tenant: str | None) -> tuple[str, str]:
        """(country, tenant) as labels: a valid route among the first ROUTE_LIMIT, else
        (other, other)."""
        value = (country or "", tenant or "")
        if self._routes(value, lambda: route_problem(country, tenant) is None):
            return value
        return OTHER, OTHER

    def _route(self, route: str | None) -> tuple[str, str]:
        country, _, tenant = (route or "").partition("/")
        return self.route_labels(country, tenant)

    def event_type_label(self, event_type: str) -> str:
        """``event_type`` as a label: a plausible one among the first EVENT_TYPE_LIMIT, else
        other."""

        def valid() -> bool:
            return _EVENT_TYPE.fullmatch(event_type) is not None

        return event_type if self._event_types((event_type,), valid) else OTHER

    def _outcome_labels(self, event_type: str, route: str | None) -> tuple[str, str, str]:
        """The labels of one event's outcome: (event type, country, tenant)."""
        return (self.event_type_label(event_type), *self._route(route))

    # What the engine reports ----------------------------------------------------------------

    def expect_route(self, country: str | None, tenant: str | None) -> None:
        """Create the series of a route known before its first publish (RELAY_COUNTRY and
        RELAY_TENANT), so its latency is there from the start."""
        if country is not None and tenant is not None:
            self.publish_latency.labels(*self.route_labels(country, tenant))

    def count_published(self, event_type: str, route: str | None, events: int = 1) -> None:
        """``events`` events accepted; ``route`` is ``country/tenant``."""
        self.published.labels(*self._outcome_labels(event_type, route)).inc(events)

    def count_retried(self, event_type: str, route: str | None, outcome_class: str) -> None:
        self.retried.labels(*self._outcome_labels(event_type, route), outcome_class).inc()

    def count_dead(self, event_type: str, route: str | None, outcome_class: str) -> None:
        self.dead.labels(*self._outcome_labels(event_type, route), outcome_class).inc()

    def observe_publish(self, country: str, tenant: str, seconds: float) -> None:
        # Once per request: the route's histogram is looked up once (a bounded number kept).
        series = self._latency.get((country, tenant))
        if series is None:
            series = self.publish_latency.labels(*self.route_labels(country, tenant))
            if len(self._latency) < LATENCY_CHILDREN:
                self._latency[(country, tenant)] = series
        counts, total = series
        counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1  # le: bound >= seconds
        total[0] += seconds

    def show_circuit(self, state: str) -> None:
        """``relay_circuit_state{state}``: 1 for ``state``, 0 for the others."""
        for known in CIRCUIT_STATES:
            self.circuit_state.labels(known).set(1 if known == state else 0)

    def show_pauses(self, held: Iterable[str], routes: Iterable[tuple[str, str]]) -> None:
        """The pauses in force: ``held``, the kinds of pause of every route; ``routes``,
        (route, kind) of each pause (route ``*`` for every route)."""
        held = set(held)
        for kind in PAUSE_KINDS:
            self.paused.labels(kind).set(1 if kind in held else 0)
        self.route_paused.clear()
        for route, kind in routes:
            labels = (GLOBAL, GLOBAL) if route == GLOBAL else self._route(route)
            self.route_paused.labels(*labels, kind).set(1)

    # What the receivers report --------------------------------------------------------------

    def expect_receive_route(self, country: str, tenant: str) -> None:
        """A receive route's series of this process, before its first page: whether this relay
        polls it, and its malformed items at 0 (so the alert sees the first one). Its errors
        get a series per class when they first happen."""
        labels = self.route_labels(country, tenant)
        self.inbox_malformed.labels(*labels)
        self.inbox_polling.labels(*labels).set(0)

    def count_received(self, country: str, tenant: str, types: dict[str, int]) -> None:
        """Events stored from one page, by event type."""
        labels = self.route_labels(country, tenant)
        for event_type, count in types.items():
            self.inbox_received.labels(*labels, self.event_type_label(event_type)).inc(count)

    def count_malformed(self, country: str, tenant: str, items: int) -> None:
        self.inbox_malformed.labels(*self.route_labels(country, tenant)).inc(items)

    def count_receive_error(self, country: str, tenant: str, error_class: str) -> None:
        self.inbox_errors.labels(*self.route_labels(country, tenant), error_class).inc()

    def show_polling(self, country: str, tenant: str, polling: bool) -> None:
        self.inbox_polling.labels(*self.route_labels(country, tenant)).set(1 if polling else 0)

    def show_receive_route(
        self,
        country: str,
        tenant: str,
        lag: float | None,
        age: float,
        waiting: tuple[int, float],
    ) -> None:
        """The sampled state of a receive route: how far behind, since its last answer, and
        the events waiting for the insurer's consumers (how many, the oldest's age)."""
        labels = self.route_labels(country, tenant)
        if lag is not None:
            self.inbox_lag.labels(*labels).set(lag)
        self.inbox_checkpoint_age.labels(*labels).set(age)
        pending, oldest = waiting
        self.inbox_pending.labels(*labels).set(pending)
        self.inbox_oldest_pending_age.labels(*labels).set(oldest)
