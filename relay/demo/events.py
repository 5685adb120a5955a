"""The demo's events: claim cases of a few insurers as a claims system would enqueue them, and
a handful of rows the producer API would refuse.

Every case tells a short story (created, its claim lines, perhaps attachments and a repair, an
update, a payment, closed). The cases interleave as they would arrive; each keeps its own order
under its ordering key, except payments, which are independent of each other.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from typing import Any

# (country, tenant, share of cases, currency, prefix of the insurer's claim ids). Rows of the
# relay's default route (RELAY_COUNTRY/RELAY_TENANT) carry no tenant or country of their own.
TENANTS = (
    ("dk", "abcinsurance", 0.6, "DKK", "ABC"),
    ("dk", "budgetinsurance", 0.3, "DKK", "BUD"),
    ("se", "abcforsakring", 0.1, "SEK", "ABS"),
)
DEFAULT_ROUTE = ("dk", "abcinsurance")
CASE_TYPES = ("contents", "building", "travel", "motor", "glass")
PEOPLE = (
    ("Mette Kjær Hansen", "mkh"),
    ("Lars Nielsen", "lni"),
    ("Sofie Dam Jensen", "sdj"),
    ("Anders Pedersen", "ape"),
    ("Karin Lindqvist", "kli"),
    ("Jonas Ravn", "jra"),
)
CLAIM_ITEMS = ("Television", "Bicycle", "Sofa", "Laptop", "Wedding ring", "Winter coat")
ATTACHMENTS = (("receipt.pdf", "application/pdf"), ("damage.jpg", "image/jpeg"))
REPAIRS = ("glass", "water damage", "locksmith", "roof")
PAYMENT_STATUSES = ("approved", "paid", "paid", "canceled")
CHANGES = ("ClaimantUpdated", "PolicyUpdated", "CaseReopened")


@dataclass(frozen=True, slots=True)
class DemoEvent:
    """One event as a producer would enqueue it."""

    event_type: str
    payload: dict[str, Any]
    tenant: str | None
    country: str | None
    ordering_key: str | None
    at: float  # position in the interleaved stream


@dataclass(frozen=True, slots=True)
class _Case:
    """What every event of one claim case shares."""

    case: dict[str, str]
    country: str
    tenant: str
    currency: str


def _new_case(rng: random.Random) -> _Case:
    country, tenant, _, currency, prefix = rng.choices(TENANTS, [t[2] for t in TENANTS])[0]
    case = {
        "uuid": _uuid(rng),
        "token": "c." + rng.randbytes(12).hex(),
        "number": f"2026-{rng.randrange(100_000, 999_999)}",
        "caseType": rng.choice(CASE_TYPES),
        "externalClaimId": f"{prefix}-{rng.randrange(10_000_000, 99_999_999)}",
    }
    return _Case(case, country, tenant, currency)


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _person(rng: random.Random, tenant: str) -> dict[str, str]:
    name, initials = rng.choice(PEOPLE)
    return {"name": name, "userName": f"{initials}@{tenant}.example"}


def _money(rng: random.Random, currency: str) -> dict[str, Any]:
    return {"amount": round(rng.uniform(300, 40_000), 2), "currency": currency}


def _case_story(rng: random.Random, claim: _Case) -> list[tuple[str, dict[str, Any]]]:
    """The events of one case, in the order they happen."""
    who = _person(rng, claim.tenant)
    story: list[tuple[str, dict[str, Any]]] = [("case_created", {"changedBy": who})]
    for _ in range(rng.randint(1, 3)):
        line = {
            "uuid": _uuid(rng),
            "description": rng.choice(CLAIM_ITEMS),
            "price": _money(rng, claim.currency),
        }
        story.append(("claimline_changed", {"claimLine": line, "changedBy": who}))
    if rng.random() < 0.6:
        chosen = rng.sample(ATTACHMENTS, rng.randint(1, 2))
        files = [{"uuid": _uuid(rng), "fileName": name, "mimeType": mime} for name, mime in chosen]
        story.append(("attachments_updated", {"attachments": files}))
    if rng.random() < 0.3:
        repair = {"type": rng.choice(REPAIRS), "requestedBy": _person(rng, claim.tenant)}
        story.append(("repair_service_requested", {"repairService": repair}))
    story.append(("claim_updated", {"changes": [rng.choice(CHANGES)], "changedBy": who}))
    story.append(("payment_status_updated", {"payment": _payment(rng, claim.currency)}))
    story.append(("claim_updated", {"changes": ["CaseClosed"], "changedBy": who}))
    return story


def _payment(rng: random.Random, currency: str) -> dict[str, Any]:
    status = rng.choice(PAYMENT_STATUSES)
    payment: dict[str, Any] = {
        "uuid": _uuid(rng),
        "status": status,
        **_money(rng, currency),
    }
    if status == "canceled":
        payment["statusReason"] = "Payment rejected by claimant's bank"
    return payment


def _case_events(rng: random.Random) -> list[DemoEvent]:
    claim = _new_case(rng)
    default_route = (claim.country, claim.tenant) == DEFAULT_ROUTE
    at = rng.random()
    events = []
    for event_type, body in _case_story(rng, claim):
        payload: dict[str, Any] = {"case": claim.case, **body}
        if rng.random() < 0.05:
            payload["correlationId"] = str(uuid.uuid4()).upper()  # the partner sees these too
        # Payments are independent of each other; every other event keeps its case's order.
        key = None if event_type == "payment_status_updated" else f"case:{claim.case['uuid']}"
        events.append(
            DemoEvent(
                event_type,
                payload,
                None if default_route else claim.tenant,
                None if default_route else claim.country,
                key,
                at,
            )
        )
        at += rng.expovariate(20)
    return events


def realistic_events(count: int, rng: random.Random | None = None) -> list[DemoEvent]:
    """``count`` events of many cases, interleaved as they would arrive, each case in order."""
    rng = rng or random.Random()
    events: list[DemoEvent] = []
    while len(events) < count:
        events.extend(_case_events(rng))
    events.sort(key=lambda event: event.at)
    return events[:count]


def invalid_payloads() -> list[tuple[str, str]]:
    """Rows the producer API would refuse, written with plain SQL: each must end dead."""

    def body(event_type: str, **fields: Any) -> str:
        document = {"eventType": event_type, "payloadVersion": "1.0.0", **fields}
        return json.dumps(document)

    now = "2026-11-28T10:31:28.251Z"
    return [
        ("claim_updated", json.dumps([{"changes": ["CaseClosed"]}])),
        ("attachments_updated", json.dumps(["receipt.pdf"])),
        ("payment_status_updated", body("payment_status_updated", timestamp=now)),
        ("claim_updated", body("case_created", correlationId=str(uuid.uuid4()), timestamp=now)),
        ("case_created", body("case_created", correlationId="case-4711", timestamp=now)),
    ]


INVALID_ROWS = len(invalid_payloads())
# Unkeyed and on the default route: a dead row would hold back the rest of its key.
INSERT_INVALID = 'INSERT INTO "{schema}".outbox (event_type, payload) VALUES ($1, $2::jsonb)'
