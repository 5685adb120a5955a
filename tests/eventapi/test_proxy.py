"""Which proxy a request to Scalepoint goes through, and what may be printed of it."""

from __future__ import annotations

import pytest

from relay.config import load_settings
from relay.errors import ConfigurationError
from relay.eventapi.proxy import proxy_for

API = "https://www.scalepoint.com"
VARIABLES = ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY")


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)


def test_no_proxy_anywhere_means_a_direct_connection() -> None:
    assert proxy_for(API, load_settings()) is None


@pytest.mark.parametrize(
    ("variables", "url", "expected"),
    [
        ({"HTTPS_PROXY": "http://p:3128"}, API, "http://p:3128 (HTTPS_PROXY)"),
        (
            {"https_proxy": "http://a:1", "HTTPS_PROXY": "http://b:2"},
            API,
            "http://a:1 (https_proxy)",
        ),
        ({"HTTP_PROXY": "http://p:3128"}, API, None),  # http_proxy is for http:// URLs
        ({"HTTP_PROXY": "http://p:3128"}, "http://emulator:8099", "http://p:3128 (HTTP_PROXY)"),
        ({"HTTPS_PROXY": "proxy.internal:3128"}, API, "http://proxy.internal:3128 (HTTPS_PROXY)"),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "scalepoint.com"}, API, None),
        ({"HTTPS_PROXY": "http://p:1", "no_proxy": ".scalepoint.com"}, API, None),
        ({"HTTPS_PROXY": "http://p:1", "NO_PROXY": "*"}, API, None),
        (
            {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other.example"},
            API,
            "http://p:1 (HTTPS_PROXY)",
        ),
    ],
)
def test_the_environment_as_curl_and_urllib_read_it(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], url: str, expected: str | None
) -> None:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    proxy = proxy_for(url, load_settings())
    assert (str(proxy) if proxy is not None else None) == expected


def test_the_setting_wins_for_every_url_and_no_proxy_still_applies(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://environment:1")
    settings = load_settings(https_proxy="http://relay:2")
    assert str(proxy_for(API, settings)) == "http://relay:2 (RELAY_HTTPS_PROXY)"
    assert str(proxy_for("http://emulator:8099", settings)) == "http://relay:2 (RELAY_HTTPS_PROXY)"
    monkeypatch.setenv("NO_PROXY", "www.scalepoint.com")
    assert proxy_for(API, settings) is None


def test_credentials_go_to_the_client_and_nowhere_else() -> None:
    settings = load_settings(https_proxy="http://alice:s%3Acret@proxy.internal:3128")
    proxy = proxy_for(API, settings)
    assert proxy is not None
    assert proxy.url == "http://alice:s%3Acret@proxy.internal:3128"
    for text in (str(proxy), repr(proxy), repr(settings), str(settings)):
        assert "s%3Acret" not in text
    assert "alice" not in str(proxy) + repr(proxy)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("socks5://alice:pw@proxy:1080", "must be an http:// proxy URL"),
        ("https://alice:pw@proxy:3128", "must be an http:// proxy URL"),
        ("http://alice:pw@:3128", "must name the proxy's host"),
        ("http://alice:pw@proxy:port", "has a port that is not a number"),
    ],
)
def test_an_unusable_setting_is_named_without_its_value(value: str, message: str) -> None:
    with pytest.raises(ConfigurationError) as refused:
        load_settings(https_proxy=value)
    assert str(refused.value).startswith(f"RELAY_HTTPS_PROXY: {message}")
    assert "pw" not in str(refused.value)


def test_an_unusable_environment_proxy_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "socks5://alice:pw@proxy:1080")
    with pytest.raises(ConfigurationError) as refused:
        proxy_for(API, load_settings())
    assert str(refused.value).startswith("HTTPS_PROXY: must be an http:// proxy URL")
    assert "RELAY_HTTPS_PROXY" in str(refused.value)
    assert "pw" not in str(refused.value)


def test_an_empty_setting_is_no_setting() -> None:
    assert load_settings(https_proxy="").https_proxy is None
