"""Every Prometheus metric the relay exports, declared once.

Metrics live on an instance with its own registry, so each process (and each test) owns one.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

CIRCUIT_STATES = {"closed": 0, "half_open": 1, "open": 2}


class Metrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        self.published = Counter(
            "relay_events_published", "Events Scalepoint accepted.", ["event_type"], registry=r
        )
        self.retried = Counter(
            "relay_events_retried",
            "Delivery attempts that failed and were scheduled again.",
            ["event_type", "outcome_class"],
            registry=r,
        )
        self.dead = Counter(
            "relay_events_dead_lettered",
            "Events given up on, with the class of their last error.",
            ["event_type", "outcome_class"],
            registry=r,
        )
        self.publish_latency = Histogram(
            "relay_publish_latency_seconds",
            "Duration of one publish request, token included.",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.in_flight = Gauge(
            "relay_requests_in_flight", "Publish requests currently in flight.", registry=r
        )
        self.queue_depth = Gauge(
            "relay_queue_depth", "Rows pending or in flight (sampled).", registry=r
        )
        self.oldest_pending_age = Gauge(
            "relay_oldest_pending_age_seconds",
            "Age of the oldest row not yet published or dead (sampled).",
            registry=r,
        )
        self.token_refreshes = Counter(
            "relay_token_refreshes", "Access tokens obtained.", registry=r
        )
        self.token_failures = Counter(
            "relay_token_failures", "Failed token requests.", ["reason"], registry=r
        )
        self.circuit_state = Gauge(
            "relay_circuit_state", "0 closed, 1 half-open (probing), 2 open.", registry=r
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
            ["country", "tenant", "kind"],
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
        self.rescued = Counter(
            "relay_rows_rescued",
            "Rows of stopped relays whose lease was ended early so they are sent again.",
            registry=r,
        )
