"""The HTTP ceiling: the relay's own HTTP client with no database behind it.

``python -m bench.ceiling --base-url URL --events N --concurrency C`` POSTs N events through
``relay.eventapi.publisher.Publisher`` (with ``TokenProvider`` and ``create_session``, wired as
``relay run`` wires them) from C tasks, and prints a JSON summary. Nothing else happens per
event, so this is as fast as the relay could publish with this client, this emulator and this
machine.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from collections import Counter

from bench.database import EVENT_TYPE
from bench.events import encoded_bodies
from bench.partner import CLIENT_ID, CLIENT_SECRET, COUNTRY, TENANT
from relay.config import Settings, load_settings
from relay.daemon import run_loop
from relay.eventapi.publisher import Publisher
from relay.eventapi.session import create_session
from relay.eventapi.token import TokenProvider


def settings_for(base_url: str, concurrency: int) -> Settings:
    return load_settings(
        token_url=f"{base_url}/connect/token",
        api_base_url=base_url,
        country=COUNTRY,
        tenant=TENANT,
        client_id=CLIENT_ID,
        client_secret=CLIENT_SECRET,
        concurrency=concurrency,
    )


async def _send_all(
    publisher: Publisher, bodies: list[bytes], concurrency: int
) -> tuple[Counter[str], list[float]]:
    outcomes: Counter[str] = Counter()
    latencies: list[float] = []
    queue = iter(bodies)

    async def sender() -> None:
        # One shared iterator: each task takes the next body when its request is answered,
        # as the relay's senders take the next row.
        for body in queue:
            outcome = await publisher.publish(EVENT_TYPE, body, COUNTRY, TENANT)
            outcomes[outcome.kind.value] += 1
            latencies.append(outcome.latency)

    await asyncio.gather(*(sender() for _ in range(concurrency)))
    return outcomes, latencies


async def run(base_url: str, events: int, concurrency: int) -> dict[str, object]:
    settings = settings_for(base_url, concurrency)
    bodies = encoded_bodies(events)
    async with create_session(settings) as session:
        tokens = TokenProvider(session, settings)
        publisher = Publisher(session, tokens, base_url, settings.request_timeout)
        started = time.monotonic()
        outcomes, latencies = await _send_all(publisher, bodies, concurrency)
        elapsed = time.monotonic() - started
        await tokens.close()
    return {
        "outcomes": dict(outcomes),
        "seconds": elapsed,
        # As Publisher measures it, the same figure the relay writes to the delivery log.
        "request_ms_p50": round(statistics.median(latencies) * 1000, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--events", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=32)
    options = parser.parse_args()
    # The same event loop as `relay run`, so the ratio compares the engine, not the loop.
    summary = run_loop(run(options.base_url, options.events, options.concurrency))
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
