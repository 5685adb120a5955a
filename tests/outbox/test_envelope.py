"""The claim's check of a row's envelope (PostgreSQL's, ``Queries.claim``) against the engine's
own reading of it (``decide``'s, in Python): a row the claim passes is one the engine would
pass, field by field, for every kind of value a table can hold there."""

from __future__ import annotations

import itertools
import json
from typing import Any

import asyncpg

from relay.outbox.decide import _envelope_problem
from relay.outbox.store import Store
from tests.outbox.test_decide import row

EVENT_TYPE = "case_created"
UUID = "70c6d351-016f-4c9e-b1a9-d581fc3a596b"
GOOD = {
    "eventType": EVENT_TYPE,
    "payloadVersion": "1.0.0",
    "correlationId": UUID,
    "timestamp": "2026-11-28T10:31:28.251Z",
}
# What a field may hold instead of its good value.
ODD: dict[str, list[Any]] = {
    "eventType": ["", "Case_Created", "case_created ", 7, None, ["case_created"]],
    "payloadVersion": ["", 1, None, {"v": "1"}, " "],
    "correlationId": [
        "", UUID.upper(), UUID + "\n", "{" + UUID + "}", "urn:uuid:" + UUID, UUID.replace("-", ""),
        UUID[:-1] + "g", UUID[:-1] + "\uff21", 12345, None, [UUID],
    ],
    "timestamp": ["", 0, None, False, "not a time"],
}  # fmt: skip
_MISSING = object()


def documents() -> list[Any]:
    """The good envelope; each field odd, or missing, alone and two at a time; not objects."""
    variants: list[Any] = [GOOD, [GOOD], "text", 42, None, {}]
    odd = [(name, value) for name, values in ODD.items() for value in [*values, _MISSING]]
    for changes in [*([c] for c in odd), *itertools.combinations(odd, 2)]:
        if len({name for name, _ in changes}) < len(changes):
            continue  # one field twice
        document = dict(GOOD, payment={"status": "canceled"})
        for name, value in changes:
            if value is _MISSING:
                del document[name]
            else:
                document[name] = value
        variants.append(document)
    return variants


async def test_the_claims_envelope_check_agrees_with_the_engines(
    db: asyncpg.Connection, database_url: str
) -> None:
    texts = [json.dumps(document, ensure_ascii=False) for document in documents()]
    await db.execute(
        "INSERT INTO outbox (event_type, payload) "
        "SELECT $1, p::jsonb FROM unnest($2::text[]) WITH ORDINALITY AS t(p, n) ORDER BY n",
        EVENT_TYPE,
        texts,
    )
    pool = await asyncpg.create_pool(database_url, min_size=1, max_size=2)
    try:
        store = Store(pool, "public", "test-envelope")
        claimed, _ = await store.claim(
            len(texts), 1 << 32 | 1, lease_seconds=60, dead_blocks_key=True
        )
    finally:
        await pool.close()
    assert len(claimed) == len(texts)
    passed = 0
    for text, claimed_row in zip(texts, claimed, strict=True):
        # As the engine reads it in Python, from the stored text (PostgreSQL's rendering).
        stored = row(claimed_row.payload)
        python_ok = _envelope_problem(stored) is None
        assert claimed_row.envelope_ok == python_ok, text
        if not claimed_row.envelope_ok:
            assert claimed_row.payload_type == stored.payload_type, text
            assert claimed_row.envelope == stored.envelope, text
            assert claimed_row.envelope_kinds == stored.envelope_kinds, text
        passed += python_ok
    # The good envelope, and the odd values the engine takes (an upper-case UUID, a blank
    # payloadVersion, a timestamp it does not read), alone and in pairs; nothing else.
    assert passed == 1 + 3 + 3
