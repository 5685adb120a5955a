"""The tools' commands: ``relay emulator`` and ``relay demo``."""

from __future__ import annotations

import contextlib
import sys

import click

from relay.cli.main import (
    configure_logging,
    error_boundary,
    main,
    settings_from_env,
)
from relay.errors import (
    ConfigurationError,
    UsageError,
)


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8099, show_default=True, help="Port (0: any free port).")
@click.option(
    "--client",
    "clients",
    multiple=True,
    metavar="ID:SECRET",
    help="A client_secret client (repeatable; default RELAY_CLIENT_ID/RELAY_CLIENT_SECRET).",
)
@click.option(
    "--certificate",
    "certificates",
    multiple=True,
    metavar="ID:PEM_FILE",
    help="A private_key_jwt certificate (repeatable, several per client for rotation).",
)
@click.option("--audience", default=None, help="An extra accepted assertion audience.")
@click.option("--route", "routes", multiple=True, metavar="COUNTRY/TENANT", help="Allow-list.")
@click.option("--token-lifetime", default=3600.0, show_default=True, help="expires_in, seconds.")
@click.option("--latency-ms", default=0.0, show_default=True, help="Added send latency.")
@click.option("--error-rate", default=0.0, show_default=True, help="Fraction answered in error.")
@click.option("--error-status", default=503, show_default=True, help="Status for --error-rate.")
@click.option("--drop-rate", default=0.0, show_default=True, help="Fraction of dropped sends.")
@click.option(
    "--receive-route",
    "receive_routes",
    multiple=True,
    metavar="COUNTRY/TENANT",
    help="A route with a receive stream (repeatable); --receive-events pre-feeds each.",
)
@click.option(
    "--receive-events",
    default=0,
    show_default=True,
    type=click.IntRange(0, 1_000_000),
    help="Realistic events fed to each --receive-route before it listens.",
)
@click.option(
    "--receive-type",
    default=None,
    metavar="EVENT_TYPE",
    help="Type of the pre-fed events (e.g. case_created)  [default: every type in turn]",
)
@click.option(
    "--receive-hold",
    default=20.0,
    show_default=True,
    type=click.FloatRange(min=0),
    help="Seconds a receive poll waits for events before an empty page.",
)
@click.option(
    "--receive-page-size",
    default=100,
    show_default=True,
    type=click.IntRange(min=1),
    help="Events per receive page, at most.",
)
@error_boundary
def emulator(
    host: str,
    port: int,
    clients: tuple[str, ...],
    certificates: tuple[str, ...],
    audience: str | None,
    routes: tuple[str, ...],
    token_lifetime: float,
    latency_ms: float,
    error_rate: float,
    error_status: int,
    drop_rate: float,
    receive_routes: tuple[str, ...],
    receive_events: int,
    receive_type: str | None,
    receive_hold: float,
    receive_page_size: int,
) -> None:
    """Run a local stand-in for Scalepoint's token endpoint and EventApi (send and receive).

    Faults can also be changed while it runs: POST /_emulator/faults with a JSON object
    (every key: docs/emulator.md), DELETE /_emulator/faults, POST /_emulator/revoke,
    POST /_emulator/reset, GET /_emulator/stats and GET /_emulator/events.

    \b
    Receiving: GET /api/events/v1/COUNTRY/external/TENANT/receive?lastEventId=ID
    long-polls a route's stream. Feed it while it runs with
    POST /_emulator/receive/COUNTRY/TENANT and a JSON list of events
    ({"type", "attributes"}, optional "timestamp" and "id") or {"generate": N, "type": T};
    GET /_emulator/receive reports each route's polls and events handed out.
    Example: relay emulator --receive-route dk/abcinsurance --receive-events 1000
    """
    import asyncio

    from relay import emulator as emulation

    # Settings are used only without --client, and a bad one is reported then.
    with contextlib.suppress(ConfigurationError):
        configure_logging(settings_from_env(), floor="warning")
    faults = emulation.Faults(
        token_lifetime=token_lifetime,
        latency_ms=latency_ms,
        error_rate=error_rate,
        error_status=error_status,
        drop_rate=drop_rate,
        receive_hold_seconds=receive_hold,
        receive_page_size=receive_page_size,
    )
    config = emulation.config_from_options(clients, certificates, routes, audience, faults)
    partner = emulation.Emulator(config)
    for route in receive_routes:
        country, _, tenant = route.partition("/")
        if not country or not tenant or "/" in tenant:
            raise click.BadParameter(
                f"{route!r} is not COUNTRY/TENANT", param_hint="--receive-route"
            )
        partner.generate(country, tenant, receive_events, receive_type)

    def announce(line: str) -> None:
        click.echo(f"relay emulator: {line}")

    try:
        asyncio.run(emulation.serve(partner, host, port, announce))
    except OSError as error:  # the address is taken, or not this machine's
        raise UsageError(f"cannot listen on {host}:{port}: {error.strerror or error}") from None


@main.command()
@click.option(
    "--events",
    default=3000,
    show_default=True,
    type=click.IntRange(min=10, max=1_000_000),
    help="How many events to enqueue (a handful of them invalid on purpose).",
)
@click.option(
    "--keep",
    "keep_server",
    is_flag=True,
    help="Leave the embedded PostgreSQL running afterwards, for the commands the summary "
    "lists; 'relay demo --stop' stops it. Without it the demo stops the server when done.",
)
@click.option(
    "--stop",
    "stop_only",
    is_flag=True,
    help="Only stop an embedded PostgreSQL an earlier demo left running, and exit.",
)
@error_boundary
def demo(events: int, keep_server: bool, stop_only: bool) -> None:
    """Run the relay end to end on this machine, both ways: thousands of events published from
    the outbox, a stream of Scalepoint's events received into the inbox and consumed.

    Without RELAY_DATABASE_URL it starts an embedded PostgreSQL in .relay-demo/pgdata (the
    'embedded' extra) and re-creates database relay_demo in it; with RELAY_DATABASE_URL it
    re-creates schema relay_demo in that database and touches no other schema. The emulated
    EventApi adds latency and a few failures on both sides (a dropped poll, items that are not
    events); live progress bars and a summary follow. The embedded
    PostgreSQL is stopped at the end, unless --keep leaves it running for a closer look
    ('relay demo --stop' stops it then). Ctrl-C stops cleanly (exit code 130).
    """
    try:
        from relay import demo as demonstration

        if stop_only:
            demonstration.stop()
            return
        configure_logging(settings_from_env(), floor="warning")
        code = demonstration.run_demo(events, keep_server=keep_server)
    except KeyboardInterrupt:  # before the demo could handle it (while importing, say)
        click.echo("relay demo: interrupted", err=True)
        code = 130
    if code:
        sys.exit(code)
