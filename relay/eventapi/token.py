"""The one access token of the process: the OAuth 2.0 client-credentials grant (RFC 6749 4.4).

Policy, and why:

- One token shared by every publish; one token request in flight at most (single flight), so a
  burst of 200 publishes costs one request, and the token endpoint is never hammered.
- Refresh ahead: once 80% of the lifetime has passed, a background refresh starts while the
  old token keeps being served, so the hot path never waits for the token endpoint. A token
  is treated as expired a little before its real expiry (the skew margin), because it must
  still be valid when the request carrying it reaches the server.
- Transient failures (network, timeout, 5xx, 429, unreadable answers) back off exponentially
  with full jitter; until the backoff ends, callers without a valid token fail fast with
  ``TokenUnavailable`` instead of each sending a request. Refusals (``invalid_client``,
  ``invalid_scope`` ...) are configuration problems: ``TokenRejected``, retried only after
  ``configuration_pause``.
- No secret, assertion or token value ever reaches an exception, a log line or a repr. The
  endpoint's own words (an error_description may echo what it was sent) reach the exception
  with every run of the secret and the assertion masked (``relay.eventapi.masks``), bounded, for
  the operator; log lines carry status and class only.
"""

from __future__ import annotations

import asyncio
import base64
import json
import math
import random
import time
from collections.abc import Callable, Mapping
from datetime import timedelta
from urllib.parse import quote_plus

import aiohttp
import orjson
import structlog

from relay.config import Settings, env_name
from relay.errors import (
    ConfigurationError,
    KeyMaterialError,
    TokenError,
    TokenRejected,
    TokenUnavailable,
)
from relay.eventapi.keys import CLIENT_ASSERTION_TYPE, KeyMaterial, client_assertion
from relay.eventapi.masks import Masks, storable
from relay.eventapi.outcome import (
    PROXY_AUTHENTICATION_REQUIRED,
    Outcome,
    OutcomeKind,
    parse_retry_after,
)
from relay.eventapi.proxy import proxy_for
from relay.eventapi.session import (
    certificate_problem,
    exception_origin,
    proxy_refusal,
    read_bounded,
    unreachable,
    untrusted_message,
)
from relay.metrics import Metrics

log = structlog.get_logger("relay.eventapi.token")

REFRESH_AT = 0.8  # fraction of the lifetime after which a background refresh starts
MAX_SKEW_MARGIN = 30.0  # seconds; the margin is 10% of the lifetime, at most this
DEFAULT_LIFETIME = 60.0  # seconds, when the server omits expires_in (RFC 6749 5.1 allows it)
# The longest lifetime believed: a token claimed to live for ever is refreshed daily all the
# same, so a revoked or rotated client shows within a day.
MAX_LIFETIME = 86400.0
MAX_ERROR_TEXT = 300
_TRANSIENT_STATUSES = frozenset({408, 425, 429})


class _Unavailable(TokenUnavailable):
    """A transient failure, labelled for logs (which never carry its message)."""

    def __init__(
        self,
        message: str,
        error_class: str,
        *,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.status = status
        self.retry_after = retry_after  # seconds the endpoint asked us to wait, if it did


class _Rejected(TokenRejected):
    """A refusal of our client, labelled for logs (which never carry its message)."""

    def __init__(self, message: str, error_class: str, *, status: int | None = None) -> None:
        super().__init__(message)
        self.error_class = error_class
        self.status = status


class AccessToken:
    """An access token and the monotonic times at which to refresh it and stop using it."""

    __slots__ = ("_value", "expires_at", "issued_at", "lifetime", "refresh_at", "scope")

    def __init__(self, value: str, issued_at: float, lifetime: float, scope: str | None) -> None:
        self._value = value
        self.issued_at = issued_at
        self.lifetime = lifetime
        self.scope = scope
        margin = min(MAX_SKEW_MARGIN, lifetime * 0.1)
        self.expires_at = issued_at + lifetime - margin
        self.refresh_at = issued_at + lifetime * REFRESH_AT

    @property
    def value(self) -> str:
        """The bearer token itself; only the Authorization header should ever see it."""
        return self._value

    def is_valid(self, now: float) -> bool:
        """Still usable at monotonic time ``now`` (the skew margin already subtracted)."""
        return now < self.expires_at

    def __repr__(self) -> str:
        return f"AccessToken(value='***', lifetime={self.lifetime:g}s, scope={self.scope!r})"


class TokenProvider:
    """Gets, caches and refreshes the process's access token; see the module docstring."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        settings: Settings,
        *,
        key_material: KeyMaterial | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        jitter: Callable[[], float] = random.random,
    ) -> None:
        if settings.client_id is None:
            raise ConfigurationError("RELAY_CLIENT_ID: is not set")
        self._session = session
        self._settings = settings
        self._client_id = settings.client_id
        self._key_material = key_material
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        self._jitter = jitter
        self.auth_method = _auth_method(settings)
        if self.auth_method == "private_key_jwt" and key_material is None:
            raise KeyMaterialError(
                "private_key_jwt needs RELAY_PKCS12_FILE, or RELAY_PRIVATE_KEY_FILE with "
                "RELAY_CERTIFICATE_FILE"
            )
        self.token_url = settings.resolved_token_url
        # Named in errors; the session goes through it (create_token_session).
        self._proxy = proxy_for(self.token_url, settings)
        self._token: AccessToken | None = None
        self._refresh: asyncio.Task[AccessToken] | None = None
        self._failures = 0
        self._not_before = float("-inf")
        self.last_error: TokenError | None = None

    # State for readiness probes -------------------------------------------------------------

    @property
    def token(self) -> AccessToken | None:
        """The current token if it is still valid."""
        token = self._token
        return token if token is not None and token.is_valid(self._clock()) else None

    @property
    def ready(self) -> bool:
        """A valid token is held and the endpoint has not refused us since it was obtained."""
        return self.token is not None and not isinstance(self.last_error, TokenRejected)

    # The API --------------------------------------------------------------------------------

    async def get(self) -> AccessToken:
        """A valid token, from the cache when possible.

        Raises TokenUnavailable (transient) or TokenRejected (configuration).
        """
        token = self.cached()
        if token is not None:
            return token
        now = self._clock()
        if now < self._not_before and self.last_error is not None:
            raise self._fail_fast(self.last_error)
        # shield: a caller being cancelled must not cancel the refresh others are waiting on.
        return await asyncio.shield(self._start_refresh())

    def cached(self) -> AccessToken | None:
        """The cached token while it is valid (a refresh started in the background once it is
        due), else None: ``get`` without an ``await``, for the path every publish takes."""
        now = self._clock()
        token = self._token
        if token is None or not token.is_valid(now):
            return None
        if now >= token.refresh_at and now >= self._not_before:
            self._start_refresh()
        return token

    def next_attempt_in(self) -> float:
        """Seconds until the next token request may go (0 when it may go now)."""
        return max(0.0, self._not_before - self._clock())

    def invalidate(self, token: AccessToken) -> None:
        """Forget ``token`` after the API refused it; a newer current token is kept."""
        if self._token is token:
            self._token = None
            log.info("token.invalidated", lifetime=token.lifetime)

    async def close(self) -> None:
        """Cancel a refresh still in flight (at shutdown)."""
        task = self._refresh
        if task is not None and not task.done():
            task.cancel()
            await asyncio.wait([task])

    # Internals ------------------------------------------------------------------------------

    def _fail_fast(self, error: TokenError) -> TokenError:
        wait = max(0.0, self._not_before - self._clock())
        kind = TokenRejected if isinstance(error, TokenRejected) else TokenUnavailable
        return kind(f"{error} (next token request in {wait:.1f}s)")

    def _start_refresh(self) -> asyncio.Task[AccessToken]:
        if self._refresh is None or self._refresh.done():
            self._refresh = asyncio.create_task(self._fetch(), name="relay.eventapi.token.refresh")
            self._refresh.add_done_callback(_consume_exception)
        return self._refresh

    async def _fetch(self) -> AccessToken:
        started = self._clock()
        try:
            token = await self._request(started)
        except TokenRejected as error:
            self._record_failure(error, self._settings.configuration_pause.total_seconds())
            raise
        except TokenUnavailable as error:
            self._record_failure(error, self._backoff(error))
            raise
        except Exception as error:  # a surprise must not end the process: back off, try again
            unavailable = self._unexpected(error)
            self._record_failure(unavailable, self._backoff(unavailable))
            raise unavailable from None
        self._token = token
        self._failures = 0
        self._not_before = float("-inf")
        self.last_error = None
        if self._metrics is not None:
            self._metrics.token_refreshes.inc()
        log.info("token.refreshed", lifetime=token.lifetime, auth_method=self.auth_method)
        return token

    def _unexpected(self, error: Exception) -> _Unavailable:
        name = type(error).__name__
        log.error("token.unexpected_error", error_class=name, where=exception_origin(error))
        message = f"unexpected {name} while fetching a token from {self.token_url}"
        return _Unavailable(message, "unexpected")

    def _backoff(self, error: TokenUnavailable) -> float:
        base = self._settings.token_backoff_base.total_seconds()
        cap = self._settings.token_backoff_cap.total_seconds()
        ceiling = min(cap, base * 2.0 ** min(self._failures, 30))
        delay = self._jitter() * ceiling  # full jitter: spreads out many relays restarting
        if isinstance(error, _Unavailable) and error.retry_after is not None:
            return max(delay, error.retry_after)
        return delay

    def _record_failure(self, error: TokenError, delay: float) -> None:
        self._failures += 1
        self.last_error = error
        self._not_before = self._clock() + delay
        reason = "rejected" if isinstance(error, TokenRejected) else "unavailable"
        if self._metrics is not None:
            self._metrics.token_failures.labels(reason=reason).inc()
        error_class, status = _labels(error)
        # A refusal's message is not logged: the endpoint's error_description may echo what it
        # was sent. An outage's message is ours (what failed, and where).
        log.warning(
            "token.request_failed",
            reason=reason,
            endpoint=self.token_url,
            error_class=error_class,
            status=status,
            error=str(error) if reason == "unavailable" else None,
            failures=self._failures,
            retry_in=round(delay, 3),
        )

    async def _request(self, started: float) -> AccessToken:
        form, headers = self._credentials()
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout.total_seconds())
        try:
            async with self._session.post(
                self.token_url, data=form, headers=headers, timeout=timeout, allow_redirects=False
            ) as response:
                body = await read_bounded(response)
                # What the form and headers carried that an answer must not give back.
                sent: list[str | None] = [form.get("client_secret"), form.get("client_assertion")]
                sent += [headers.get("Authorization"), *self._secret_forms()]
                masks = Masks(sent)
                return self._parse(response.status, response.headers, body, started, masks)
        except TimeoutError:
            seconds = timeout.total
            raise _Unavailable(
                f"token endpoint did not answer within {seconds:g}s", "timeout"
            ) from None
        except aiohttp.ClientError as error:
            raise self._unreachable(error) from None

    def _unreachable(self, error: aiohttp.ClientError) -> TokenError:
        problem = certificate_problem(error)
        if problem is not None:
            # Not an outage: no retry helps until someone sets the CA bundle.
            return _Rejected(untrusted_message(self.token_url, problem), "tls_certificate")
        default = None
        if self._settings.token_url is None:
            default = f"the default for {env_name('environment')}={self._settings.environment}"
        cause = unreachable(
            error, self.token_url, env_name("token_url"), self._proxy, default=default
        )
        return _Unavailable(
            f"cannot reach the token endpoint {self.token_url}: {cause or type(error).__name__}",
            "connection",
        )

    def _credentials(self) -> tuple[dict[str, str], dict[str, str]]:
        form = {"grant_type": "client_credentials"}
        if self._settings.scope:
            form["scope"] = self._settings.scope
        headers = {"Accept": "application/json"}
        if self.auth_method == "private_key_jwt":
            assert self._key_material is not None  # checked in __init__
            form["client_id"] = self._client_id
            form["client_assertion_type"] = CLIENT_ASSERTION_TYPE
            form["client_assertion"] = client_assertion(
                self._key_material, self._client_id, self.token_url, wall_clock=self._wall_clock
            )
            return form, headers
        secret = self._settings.client_secret
        if secret is None:
            raise _Rejected("RELAY_CLIENT_SECRET: is not set", "missing_secret")
        if self.auth_method == "client_secret_basic":
            headers["Authorization"] = basic_authorization(
                self._client_id, secret.get_secret_value()
            )
        else:
            form["client_id"] = self._client_id
            form["client_secret"] = secret.get_secret_value()
        return form, headers

    def _parse(
        self, status: int, headers: Mapping[str, str], body: bytes, started: float, masks: Masks
    ) -> AccessToken:
        if status == 200:
            return _token_from(body, started)
        cap = self._settings.retry_after_cap
        label = f"http_{status}"
        if status == PROXY_AUTHENTICATION_REQUIRED:
            # A proxy's answer, not the token endpoint's: our client is not refused.
            message = f"token endpoint not reached: {proxy_refusal(status, None, self._proxy)}"
            raise _Unavailable(message, label, status=status)
        if status in _TRANSIENT_STATUSES or status >= 500:
            message = f"token endpoint answered HTTP {status}"
            raise _Unavailable(
                message, label, status=status, retry_after=_retry_after_seconds(headers, cap)
            )
        if 200 <= status < 300:
            message = f"token endpoint answered HTTP {status} instead of 200"
            raise _Unavailable(message, label, status=status)
        raise _Rejected(self._refusal(status, body, masks), label, status=status)

    def _refusal(self, status: int, body: bytes, masks: Masks) -> str:
        prefix = f"token endpoint refused client {self._client_id!r} ({self.auth_method})"
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            document = None
        if not isinstance(document, dict) or not isinstance(document.get("error"), str):
            if 300 <= status < 400:
                return f"{prefix}: HTTP {status} redirect; set RELAY_TOKEN_URL to the final URL"
            return f"{prefix}: HTTP {status} without an OAuth error body"
        # Servers sometimes echo what they were sent: never the secret or the assertion.
        text = f"{prefix}: HTTP {status} {masks.clean(document['error'])}"
        description = document.get("error_description")
        if isinstance(description, str) and description:
            text += f": {masks.clean(description)}"
        # One line: relay check prints it as the command's one line of error.
        return storable(text.replace("\n", " "), MAX_ERROR_TEXT)

    def _secret_forms(self) -> list[str]:
        """The client secret as the form and Basic credentials encode it (masked too)."""
        secret = self._settings.client_secret
        if secret is None or not secret.get_secret_value():
            return []
        return [secret.get_secret_value(), quote_plus(secret.get_secret_value())]


def _auth_method(settings: Settings) -> str:
    if settings.uses_private_key_jwt:
        return "private_key_jwt"
    if settings.client_auth_method == "auto":
        return "client_secret_post"
    return settings.client_auth_method


def basic_authorization(client_id: str, secret: str) -> str:
    """HTTP Basic credentials as RFC 6749 section 2.3.1 wants: form-urlencode, then base64."""
    pair = f"{quote_plus(client_id)}:{quote_plus(secret)}".encode()
    return "Basic " + base64.b64encode(pair).decode("ascii")


def _labels(error: TokenError) -> tuple[str, int | None]:
    """What a log line may say about a failure: its class and HTTP status."""
    if isinstance(error, _Unavailable | _Rejected):
        return error.error_class, error.status
    return type(error).__name__, None


def _bad_answer(message: str) -> _Unavailable:
    return _Unavailable(f"token endpoint answered {message}", "bad_response", status=200)


def _lenient_json(body: bytes) -> object:
    """The token answer as JSON; Python's own parser as a fallback, as it takes the NaN,
    Infinity and out-of-range numbers some servers write for expires_in."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise _bad_answer("200 with a body that is not JSON") from None


def _lifetime(expires_in: object) -> float:
    """expires_in in seconds, at most MAX_LIFETIME. A value that is no number at all counts as
    absent (the token is still good; only its lifetime is unknown); one not above zero says
    the token is already dead."""
    if isinstance(expires_in, str):
        try:
            expires_in = float(expires_in)  # some servers send it as a string
        except ValueError:
            return DEFAULT_LIFETIME
    if isinstance(expires_in, bool) or not isinstance(expires_in, int | float):
        return DEFAULT_LIFETIME
    if isinstance(expires_in, float) and math.isnan(expires_in):
        return DEFAULT_LIFETIME
    if expires_in <= 0:
        raise _bad_answer("with an unusable expires_in")
    # Compared before float(): a JSON integer may be too large for a float.
    return MAX_LIFETIME if expires_in >= MAX_LIFETIME else float(expires_in)


def _token_from(body: bytes, started: float) -> AccessToken:
    document = _lenient_json(body)
    if not isinstance(document, dict):
        raise _bad_answer("200 without a JSON object")
    value = document.get("access_token")
    token_type = document.get("token_type")
    if not isinstance(value, str) or not value:
        raise _bad_answer("200 without an access_token")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise _bad_answer("with a token_type other than Bearer")
    lifetime = _lifetime(document.get("expires_in"))
    scope = document.get("scope")
    # Lifetime counts from when we sent the request: the server's clock started before ours.
    return AccessToken(value, started, lifetime, scope if isinstance(scope, str) else None)


def _retry_after_seconds(headers: Mapping[str, str], cap: timedelta) -> float | None:
    wait = parse_retry_after(headers, cap)
    return None if wait is None else wait.total_seconds()


def _consume_exception(task: asyncio.Task[AccessToken]) -> None:
    # A background refresh nobody awaited: its failure is already logged and kept as
    # last_error; reading it here stops asyncio reporting "exception never retrieved".
    if not task.cancelled():
        task.exception()


async def bearer(tokens: TokenProvider) -> AccessToken | Outcome:
    """The token to send, or the outcome of not having one (nothing was sent): a transient
    failure, with the time until the provider tries again as its ``retry_after``, or our
    client refused (a configuration error of every route)."""
    try:
        return await tokens.get()
    except TokenUnavailable as error:
        wait = timedelta(seconds=tokens.next_attempt_in())
        return Outcome(
            OutcomeKind.TRANSIENT, "token_unavailable", error=str(error), retry_after=wait,
            sent=False,
        )  # fmt: skip
    except TokenRejected as error:
        return Outcome(
            OutcomeKind.CONFIGURATION, "token_rejected", error=str(error), for_all_routes=True,
            sent=False,
        )  # fmt: skip
