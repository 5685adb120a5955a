"""The HTTP side of talking to Scalepoint: the sessions (pools, TLS trust, proxies), bounded
reads, and how a request that got no usable answer is worded.
"""

from __future__ import annotations

import ssl
import traceback
from pathlib import Path
from urllib.parse import urlsplit

import aiohttp

from relay.config import Settings, env_name
from relay.errors import ConfigurationError
from relay.eventapi.outcome import (
    MAX_ANSWER_BYTES,
    PROXY_AUTHENTICATION_REQUIRED,
    C,
    Outcome,
    T,
)
from relay.eventapi.proxy import Proxy, proxy_for

# Token requests are single-flight: one in flight, and a spare while a closed one lingers.
TOKEN_POOL_SIZE = 2
USER_AGENT = "relay (outbox relay for Scalepoint EventApi)"


def create_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for publishes: ``RELAY_CONCURRENCY`` pooled keep-alive connections, TLS
    always verified, through the proxy the settings and the environment name for the API."""
    # A receive route's long poll holds a connection for as long as Scalepoint waits.
    limit = settings.concurrency + len(settings.receive_routes)
    return _session(settings, limit, settings.resolved_api_base_url)


def create_token_session(settings: Settings) -> aiohttp.ClientSession:
    """The session for token requests: its own small pool, the same TLS trust and timeouts,
    and the proxy for the token endpoint.

    With one pool for both, a token request waited for a connection behind a full round of
    publishes, which all wait for that token when it has expired, and timed out.
    """
    return _session(settings, TOKEN_POOL_SIZE, settings.resolved_token_url)


def _session(settings: Settings, limit: int, url: str | None) -> aiohttp.ClientSession:
    proxy = proxy_for(url, settings) if url is not None else None
    connector = aiohttp.TCPConnector(
        limit=limit, ssl=_tls_context(settings), keepalive_timeout=30, enable_cleanup_closed=True
    )
    timeout = aiohttp.ClientTimeout(total=settings.request_timeout.total_seconds())
    # trust_env stays off: it would read the environment again on every request (in a
    # thread), and add ~/.netrc credentials to requests. relay.eventapi.proxy reads it once.
    return aiohttp.ClientSession(
        connector=connector,
        timeout=timeout,
        headers={"User-Agent": USER_AGENT},
        trust_env=False,
        proxy=proxy.url if proxy is not None else None,
    )


def _tls_context(settings: Settings) -> ssl.SSLContext:
    context = ssl.create_default_context()
    if settings.ca_bundle is not None:
        try:
            # Added to the system store, not replacing it: the token endpoint and the API
            # may sit behind different CAs.
            context.load_verify_locations(cafile=str(settings.ca_bundle))
        except (OSError, ssl.SSLError) as error:
            raise ConfigurationError(
                f"{env_name('ca_bundle')}: cannot load {settings.ca_bundle} as PEM CA "
                f"certificates ({type(error).__name__})"
            ) from None
    return context


async def read_bounded(response: aiohttp.ClientResponse, limit: int = MAX_ANSWER_BYTES) -> bytes:
    """The answer's body, or its first ``limit`` bytes when it is longer."""
    length = response.content_length
    if length is not None and length <= limit and "Content-Encoding" not in response.headers:
        # An answer that says its size, and it is small (and not compressed: a small
        # compressed body can unpack to any size): read at once.
        return await response.read()
    data = bytearray()
    async for chunk in response.content.iter_chunked(64 * 1024):
        data += chunk
        if len(data) >= limit:
            break  # the connection is closed rather than reused; that is cheap
    return bytes(data[:limit])


def certificate_problem(error: BaseException) -> str | None:
    """How TLS verification failed (``self-signed certificate``, ``Hostname mismatch ...``)
    when that is what ``error`` is, else None."""
    cause: BaseException | None = error
    for _ in range(8):  # a few links of __cause__ at most; never round a cycle
        if isinstance(cause, aiohttp.ClientConnectorCertificateError):
            cause = cause.certificate_error
        if isinstance(cause, ssl.SSLCertVerificationError):
            return getattr(cause, "verify_message", None) or "certificate verification failed"
        if cause is None:
            return None
        cause = cause.__cause__
    return None


def untrusted_message(url: str, problem: str) -> str:
    """What to do about a certificate that failed verification: a setting, not an outage."""
    return (
        f"TLS certificate of {urlsplit(url).hostname} not accepted ({problem}); if the "
        f"endpoint is right, set {env_name('ca_bundle')} to a PEM file with the CA that "
        "issued its certificate"
    )


def unreachable(
    error: aiohttp.ClientError,
    url: str,
    setting: str,
    proxy: Proxy | None,
    *,
    default: str | None = None,
) -> str | None:
    """Why a request to ``url`` got no answer, naming the host and what to fix: ``setting``
    (the variable holding ``url``; ``default`` says where ``url`` came from while it is not
    set), or the proxy and the variable it came from. None when ``error`` is no failure to
    reach anything."""
    host = urlsplit(url).hostname
    variable = setting
    if default is not None:
        setting = f"{setting} (not set: {default})"
    if isinstance(error, aiohttp.ClientProxyConnectionError):
        where = proxy or f"{error.host}:{error.port}"
        return f"cannot connect to the proxy {where}: {type(error.os_error).__name__}"
    if isinstance(error, aiohttp.ClientHttpProxyError):
        if error.status == PROXY_AUTHENTICATION_REQUIRED:
            return proxy_refusal(error.status, error.message, proxy)
        where = f"the proxy {proxy}" if proxy is not None else "the proxy"
        return f"{where} refused a tunnel to {host}: HTTP {error.status} {error.message}"
    if isinstance(error, aiohttp.ClientConnectorDNSError):
        if proxy is not None and error.host != host:
            return f"cannot resolve {error.host}, the host of the proxy {proxy}"
        fix = "set" if default is not None else "check"
        return f"cannot resolve {error.host}, the host of {setting}: {fix} {variable}"
    if isinstance(error, aiohttp.ClientConnectorError):
        reason = type(error.os_error).__name__
        return f"cannot connect to {error.host}:{error.port} ({setting}): {reason}"
    return None


def proxy_refusal(status: int, reason: str | None, proxy: Proxy | None) -> str:
    """A 407: a proxy wants credentials. Never Scalepoint's answer, so never the event's fault."""
    where = f"the proxy {proxy}" if proxy is not None else "a proxy"
    fix = proxy.variable if proxy is not None else "RELAY_HTTPS_PROXY"
    return (
        f"{where} answered HTTP {status} {reason or 'Proxy Authentication Required'}: "
        f"give it a user and password in {fix} (http://user:password@host:port)"
    )


def exception_origin(error: BaseException) -> str:
    """Where ``error`` was raised, as ``file.py:123 in function``: enough to find a bug from a
    log line that must not carry the exception's message (it may quote the partner)."""
    frames = traceback.extract_tb(error.__traceback__)
    if not frames:
        return "unknown"
    frame = frames[-1]
    return f"{Path(frame.filename).name}:{frame.lineno} in {frame.name}"


def no_answer(
    error: TimeoutError | aiohttp.ClientError,
    url: str,
    timeout: aiohttp.ClientTimeout,
    proxy: Proxy | None,
) -> Outcome:
    """The outcome of a request that got no usable answer (a publish or a receive)."""
    if isinstance(error, TimeoutError):  # aiohttp's own timeouts are TimeoutErrors too
        return Outcome(T, "timeout", error=f"no answer within {timeout.total:g}s from {url}")
    problem = certificate_problem(error)
    if problem is not None:
        # Retrying cannot help and every route shares the host: ask for the setting.
        message = untrusted_message(url, problem)
        return Outcome(C, "tls_certificate", error=message, for_all_routes=True)
    cause = unreachable(error, url, env_name("api_base_url"), proxy)
    if cause is not None:
        return Outcome(T, "connection", error=cause)
    if isinstance(error, aiohttp.ClientResponseError | aiohttp.ClientPayloadError):
        return Outcome(T, "bad_response", error=f"unreadable answer from {url}: {error}")
    return Outcome(T, "connection", error=f"{type(error).__name__} talking to {url}")


def proxy_refused(status: int, proxy: Proxy | None) -> Outcome | None:
    """A 407 is the proxy's answer, not Scalepoint's: retried, naming the proxy."""
    if status != PROXY_AUTHENTICATION_REQUIRED:
        return None
    return Outcome(T, "connection", http_status=status, error=proxy_refusal(status, None, proxy))
