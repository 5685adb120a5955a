"""What ``relay emulator`` runs: an emulator configured from its options (or from the relay's
own RELAY_CLIENT_* settings), served until SIGINT or SIGTERM."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from cryptography import x509

from relay.config import Settings, load_settings
from relay.emulator.model import EmulatorConfig, Faults
from relay.emulator.server import Emulator
from relay.errors import ConfigurationError
from relay.eventapi.keys import load_key_material


async def serve(emulator: Emulator, host: str, port: int, announce: Callable[[str], None]) -> None:
    """Run until SIGINT or SIGTERM (for ``relay emulator``)."""
    import signal

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signal_number, stop.set)
    await emulator.start(host, port)
    try:
        announce(f"token endpoint {emulator.token_url}")
        announce(f"API base URL   {emulator.base_url}")
        for route, stream in emulator.streams.items():
            country, _, tenant = route.partition("/")
            url = emulator.receive_url(country, tenant)
            announce(f"receive stream {route}: {len(stream.events)} events at {url}")
        await stop.wait()
    finally:
        await emulator.stop()


def config_from_options(
    clients: tuple[str, ...],
    certificates: tuple[str, ...],
    routes: tuple[str, ...],
    audience: str | None,
    faults: Faults,
) -> EmulatorConfig:
    """An EmulatorConfig from ``relay emulator`` options; with no client given, the relay's
    own RELAY_CLIENT_* settings, so one environment drives both ends of a demo."""
    config = EmulatorConfig(audience=audience, faults=faults)
    for item in clients:
        client_id, _, secret = item.partition(":")
        config.clients[client_id] = secret
    for item in certificates:
        client_id, _, path = item.partition(":")
        try:
            certificate = x509.load_pem_x509_certificate(Path(path).read_bytes())
        except (OSError, ValueError) as error:
            raise ConfigurationError(f"--certificate {item}: {type(error).__name__}") from None
        config.certificates.setdefault(client_id, []).append(certificate)
    if routes:
        config.routes = frozenset(_route(route) for route in routes)
    if not clients and not certificates:
        _clients_from_settings(config, load_settings())
    return config


def _clients_from_settings(config: EmulatorConfig, settings: Settings) -> None:
    if settings.client_id is None:
        return
    if settings.client_secret is not None:
        config.clients[settings.client_id] = settings.client_secret.get_secret_value()
    if settings.uses_private_key_jwt:
        material = load_key_material(settings)
        config.certificates[settings.client_id] = [material.certificate]


def _route(text: str) -> tuple[str, str]:
    country, _, tenant = text.partition("/")
    return country, tenant
