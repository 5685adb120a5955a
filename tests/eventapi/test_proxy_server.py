"""Token requests and publishes through a real forward proxy (proxy.py) to the emulator."""

from __future__ import annotations

import gc
import warnings
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest

from relay.errors import TokenUnavailable
from relay.eventapi.outcome import OutcomeKind
from relay.eventapi.proxy import proxy_for
from relay.eventapi.publisher import Publisher
from relay.eventapi.session import create_session
from tests.helpers.keys import server_tls
from tests.helpers.partner import client, event_body, partner_settings, running
from tests.helpers.proxy import PASSWORD, USER, ForwardProxy, forward_proxy

EVENT = "payment_status_updated"


@pytest.fixture(scope="module")
def proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    """One proxy that wants credentials, shared by the module (it takes a second to start)."""
    with forward_proxy(tmp_path_factory.mktemp("proxy"), credentials=True) as started:
        yield started


@pytest.fixture(scope="module")
def open_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ForwardProxy]:
    """A proxy without credentials, as HTTPS_PROXY/HTTP_PROXY usually name one."""
    with forward_proxy(tmp_path_factory.mktemp("open-proxy")) as started:
        yield started


@pytest.fixture(autouse=True)
def tunnels_collected_here() -> Iterator[None]:
    """A TLS connection made inside a proxy's CONNECT tunnel is aborted when its session closes,
    and the tunnel's own socket transport can outlive the test's event loop; Python reports
    it unclosed only when it is collected, in whichever test runs then (once a loaded suite's
    refused-tunnel test here). Collected at the end of each test of this module instead."""
    yield
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ResourceWarning)
        gc.collect()


@pytest.fixture(autouse=True)
def no_proxy_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)


def carried(proxy: ForwardProxy, port: int) -> list[tuple[str, str]]:
    """What the proxy carried to the emulator on ``port``."""
    return [(method, target) for method, target in proxy.requests() if f":{port}" in target]


async def test_token_and_publish_go_through_relay_https_proxy_with_credentials(
    proxy: ForwardProxy,
) -> None:
    async with running() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        settings = partner_settings(emulator, https_proxy=proxy.url)
        async with client(settings) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
        assert outcome.kind is OutcomeKind.PUBLISHED, outcome.error
        proxy.wait_for("POST", f"127.0.0.1:{port}/api/events/v1/dk/external/abcinsurance/send")
        proxy.wait_for("POST", f"127.0.0.1:{port}/connect/token")
    assert len(emulator.events) == 1
    assert PASSWORD not in repr(settings) + str(settings)


async def test_the_environments_http_proxy_is_honoured(
    open_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        monkeypatch.setenv("HTTP_PROXY", open_proxy.url)
        async with client(partner_settings(emulator)) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
        assert outcome.kind is OutcomeKind.PUBLISHED, outcome.error
        open_proxy.wait_for("POST", f"127.0.0.1:{port}/api/events/v1/dk/external/")
        open_proxy.wait_for("POST", f"127.0.0.1:{port}/connect/token")


@pytest.mark.parametrize("setting", [False, True])
async def test_no_proxy_goes_around_the_proxy(
    open_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch, setting: bool
) -> None:
    async with running() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        monkeypatch.setenv("HTTP_PROXY", open_proxy.url)
        monkeypatch.setenv("NO_PROXY", "localhost,127.0.0.1")
        overrides = {"https_proxy": open_proxy.url} if setting else {}
        async with client(partner_settings(emulator, **overrides)) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert outcome.kind is OutcomeKind.PUBLISHED, outcome.error
    assert carried(open_proxy, port) == []


async def test_relay_https_proxy_wins_over_the_environment(
    open_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with running() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
        async with client(partner_settings(emulator, https_proxy=open_proxy.url)) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
        assert outcome.kind is OutcomeKind.PUBLISHED, outcome.error
        open_proxy.wait_for("POST", f"127.0.0.1:{port}/connect/token")


async def test_a_proxy_refusing_our_credentials_is_transient_and_named_without_them(
    proxy: ForwardProxy,
) -> None:
    wrong = proxy.url.replace(PASSWORD, "not-the-password")
    async with running() as emulator:
        async with client(partner_settings(emulator, https_proxy=wrong)) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
            token_error = relay.tokens.last_error
        # A token fetched directly; only the publish goes through the proxy.
        through = partner_settings(emulator, https_proxy=wrong)
        async with client(partner_settings(emulator)) as direct, create_session(through) as session:
            proxied = proxy_for(emulator.base_url, through)
            refused = Publisher(
                session, direct.tokens, emulator.base_url, timedelta(seconds=5), proxy=proxied
            )
            published = await refused.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert emulator.events == []
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "token_unavailable")
    assert isinstance(token_error, TokenUnavailable)
    assert (published.kind, published.error_class) == (OutcomeKind.TRANSIENT, "connection")
    assert published.error is not None
    assert "HTTP 407" in published.error
    messages = [str(token_error), outcome.error or "", published.error]
    for message in messages:
        assert f"the proxy {proxy.shown} (RELAY_HTTPS_PROXY) answered HTTP 407" in message
        assert PASSWORD not in message
        assert "not-the-password" not in message
        assert USER not in message


async def test_a_proxy_that_is_not_there_is_transient_and_named(tmp_path: Path) -> None:
    async with running() as emulator:
        settings = partner_settings(emulator, https_proxy="http://someone:secret@127.0.0.1:9")
        async with client(settings) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
    assert (outcome.kind, outcome.error_class) == (OutcomeKind.TRANSIENT, "token_unavailable")
    assert outcome.error is not None
    assert "cannot connect to the proxy http://127.0.0.1:9 (RELAY_HTTPS_PROXY)" in outcome.error
    assert "secret" not in outcome.error
    assert "someone" not in outcome.error


async def test_tls_to_the_partner_through_the_proxys_tunnel(
    proxy: ForwardProxy, tmp_path: Path
) -> None:
    server_context, ca_file = server_tls(tmp_path)
    async with running() as emulator:
        await emulator.stop()
        await emulator.start(ssl_context=server_context)
        port = int(emulator.base_url.rsplit(":", 1)[1])
        settings = partner_settings(emulator, https_proxy=proxy.url, ca_bundle=ca_file)
        async with client(settings) as relay:
            outcome = await relay.publisher.publish(EVENT, event_body(), "dk", "abcinsurance")
        assert outcome.kind is OutcomeKind.PUBLISHED, outcome.error
        proxy.wait_for("CONNECT", f"127.0.0.1:{port}")
    assert emulator.base_url.startswith("https://")
    assert len(emulator.events) == 1


async def test_a_refused_tunnel_names_the_proxy(proxy: ForwardProxy, tmp_path: Path) -> None:
    server_context, ca_file = server_tls(tmp_path)
    wrong = proxy.url.replace(PASSWORD, "not-the-password")
    async with running() as emulator:
        await emulator.stop()
        await emulator.start(ssl_context=server_context)
        settings = partner_settings(emulator, https_proxy=wrong, ca_bundle=ca_file)
        async with client(settings) as relay:
            with pytest.raises(TokenUnavailable) as refused:
                await relay.tokens.get()
    message = str(refused.value)
    assert f"the proxy {proxy.shown} (RELAY_HTTPS_PROXY) answered HTTP 407" in message
    assert "not-the-password" not in message


async def test_the_lower_case_variable_comes_first_as_in_curl_and_urllib(
    open_proxy: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("http_proxy", open_proxy.url)
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nothing listens there
    async with running() as emulator:
        port = int(emulator.base_url.rsplit(":", 1)[1])
        async with client(partner_settings(emulator)) as relay:
            token = await relay.tokens.get()
        open_proxy.wait_for("POST", f"127.0.0.1:{port}/connect/token")
    assert token.value
