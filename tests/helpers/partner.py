"""The emulated partner and settings pointing at it."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import orjson

from relay.config import Settings, load_settings
from relay.emulator import Emulator, EmulatorConfig
from relay.eventapi.keys import KeyMaterial
from relay.eventapi.proxy import proxy_for
from relay.eventapi.publisher import Publisher
from relay.eventapi.session import create_session, create_token_session
from relay.eventapi.token import TokenProvider
from relay.metrics import Metrics

CLIENT_ID = "relay-test"
CLIENT_SECRET = "s3cret-Value+with/odd:chars"  # odd characters exercise RFC 6749 2.3.1


class FakeClock:
    """A monotonic clock that moves only when the test says so."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def partner_settings(partner: Emulator | str, **overrides: Any) -> Settings:
    """Settings aimed at an emulator (or a base URL), with a client secret unless overridden."""
    base_url = partner if isinstance(partner, str) else partner.base_url
    values: dict[str, Any] = {
        "token_url": base_url + "/connect/token",
        "api_base_url": base_url,
        "country": "dk",
        "tenant": "abcinsurance",
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
        "request_timeout": 5,
        "token_backoff_base": 0.05,
    }
    values.update(overrides)
    return load_settings(**values)


def secret_config(**overrides: Any) -> EmulatorConfig:
    """An emulator configuration that knows the test client's secret."""
    return EmulatorConfig(clients={CLIENT_ID: CLIENT_SECRET}, **overrides)


@asynccontextmanager
async def running(
    config: EmulatorConfig | None = None,
    clock: Callable[[], float] = time.monotonic,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> AsyncIterator[Emulator]:
    """An emulator on a real socket on 127.0.0.1, stopped afterwards. ``wall_clock`` is its
    time of day, which client assertions are checked against."""
    emulator = Emulator(config or secret_config(), clock=clock, wall_clock=wall_clock, seed=1)
    async with emulator:
        yield emulator


class Client:
    """The relay's partner-facing side wired together, as ``run()`` wires it."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        token_session: aiohttp.ClientSession,
        tokens: TokenProvider,
        publisher: Publisher,
        metrics: Metrics,
    ) -> None:
        self.session = session  # publishes
        self.token_session = token_session  # token requests, so they never queue behind them
        self.tokens = tokens
        self.publisher = publisher
        self.metrics = metrics


@asynccontextmanager
async def client(
    settings: Settings,
    *,
    key_material: KeyMaterial | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> AsyncIterator[Client]:
    """Both sessions, token provider and publisher for ``settings``, closed afterwards."""
    metrics = Metrics()
    async with create_session(settings) as session, create_token_session(settings) as token_session:
        tokens = TokenProvider(
            token_session, settings, key_material=key_material, metrics=metrics, clock=clock
        )
        assert settings.api_base_url is not None
        publisher = Publisher(
            session,
            tokens,
            settings.api_base_url,
            settings.request_timeout,
            metrics,
            retry_after_cap=settings.retry_after_cap,
            proxy=proxy_for(settings.api_base_url, settings),
        )
        try:
            yield Client(session, token_session, tokens, publisher, metrics)
        finally:
            await tokens.close()


async def wait_for(condition: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``condition()`` holds; fail after ``within`` seconds."""
    async with asyncio.timeout(within):
        while not condition():  # noqa: ASYNC110 - polls state owned by the emulator
            await asyncio.sleep(0.005)


def event_body(event_type: str = "payment_status_updated", **extra: Any) -> bytes:
    """A compact UTF-8 JSON event as the outbox stores it."""
    document: dict[str, Any] = {
        "eventType": event_type,
        "payloadVersion": "1.0.0",
        "correlationId": str(uuid.uuid4()),
        "timestamp": "2017-07-25T10:31:28.2519514Z",
        "payment": {"uuid": str(uuid.uuid4()), "status": "canceled"},
    }
    document.update(extra)
    return orjson.dumps(document)
