"""Client authentication at the emulated token endpoint, as the partner checks it.

A client proves who it is with ``client_secret_post``, ``client_secret_basic`` or
``private_key_jwt`` (RFC 7523: an RS256 assertion signed with a key whose certificate is
registered for the client), and with exactly one of them.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote_plus

import jwt
from aiohttp import web

from relay.emulator.replies import oauth_error
from relay.eventapi.keys import CLIENT_ASSERTION_TYPE, certificate_thumbprint

if TYPE_CHECKING:
    from relay.emulator.model import EmulatorConfig

# How far the client's clock may be off the partner's, either way. Strict, but as tolerant as
# the relay's own assertions need: they are backdated by relay.eventapi.keys.CLOCK_SKEW_SECONDS.
CLOCK_SKEW = 5.0


class ClientAuthentication:
    """Checks a token request's client; remembers the ``jti`` of recent assertions so none is
    accepted twice."""

    def __init__(self, config: EmulatorConfig, wall_clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._wall_clock = wall_clock
        self._seen_jti: dict[str, float] = {}

    def authenticate(
        self, request: web.Request, form: dict[str, str], record: dict[str, Any]
    ) -> str:
        """The client id, once the one method the request uses proves it; notes what it saw in
        ``record``."""
        header = request.headers.get("Authorization", "")
        methods = [
            name
            for name, present in (
                ("client_secret_basic", header.startswith("Basic ")),
                ("client_secret_post", "client_secret" in form),
                ("private_key_jwt", "client_assertion" in form),
            )
            if present
        ]
        if len(methods) > 1:
            raise oauth_error(400, "invalid_request", "more than one authentication method")
        if not methods:
            raise oauth_error(401, "invalid_client", "client authentication is required")
        record["auth_method"] = methods[0]
        if methods[0] == "private_key_jwt":
            return self._check_assertion(request, form, record)
        if methods[0] == "client_secret_basic":
            client_id, secret = _basic_credentials(header)
        else:
            client_id, secret = form.get("client_id", ""), form["client_secret"]
        record["client_id"] = client_id
        expected = self.config.clients.get(client_id)
        if expected is None or not hmac.compare_digest(expected.encode(), secret.encode()):
            raise oauth_error(401, "invalid_client", "unknown client or wrong secret")
        return client_id

    def _check_assertion(
        self, request: web.Request, form: dict[str, str], record: dict[str, Any]
    ) -> str:
        assertion = form["client_assertion"]
        record["assertion"] = assertion
        if form.get("client_assertion_type") != CLIENT_ASSERTION_TYPE:
            raise oauth_error(401, "invalid_client", "unsupported client_assertion_type")
        try:
            header = jwt.get_unverified_header(assertion)
            unverified = jwt.decode(assertion, options={"verify_signature": False})
        except jwt.InvalidTokenError:
            raise oauth_error(401, "invalid_client", "client_assertion is not a JWT") from None
        record["assertion_header"] = header
        client_id = str(unverified.get("iss", ""))
        record["client_id"] = client_id
        if form.get("client_id", client_id) != client_id or unverified.get("sub") != client_id:
            raise oauth_error(401, "invalid_client", "client_id, iss and sub must be equal")
        claims = self._verify_signature(request, assertion, header, client_id)
        record["assertion_claims"] = claims
        now = self._wall_clock()
        self._check_times(claims, now)
        self._seen_jti = {jti: exp for jti, exp in self._seen_jti.items() if exp > now - 60}
        if claims["jti"] in self._seen_jti:
            raise oauth_error(401, "invalid_client", "client_assertion jti was already used")
        self._seen_jti[claims["jti"]] = float(claims["exp"])
        return client_id

    def _check_times(self, claims: dict[str, Any], now: float) -> None:
        """iat, nbf and exp against this partner's clock, as PyJWT would with a leeway of
        CLOCK_SKEW, but on ``wall_clock`` so tests can set the partner's clock off."""
        times = [claims[name] for name in ("iat", "nbf", "exp")]
        if any(isinstance(value, bool) or not isinstance(value, int | float) for value in times):
            raise oauth_error(
                401, "invalid_client", "client_assertion: iat, nbf and exp must be numbers"
            )
        iat, nbf, exp = times
        if exp <= now - CLOCK_SKEW:
            raise oauth_error(401, "invalid_client", "client_assertion has expired")
        if max(iat, nbf) > now + CLOCK_SKEW:
            raise oauth_error(401, "invalid_client", "client_assertion is not yet valid")
        if exp - iat > self.config.max_assertion_lifetime:
            raise oauth_error(401, "invalid_client", "client_assertion lives too long")

    def _verify_signature(
        self, request: web.Request, assertion: str, header: dict[str, Any], client_id: str
    ) -> dict[str, Any]:
        if header.get("alg") != "RS256":
            raise oauth_error(401, "invalid_client", "client_assertion must be RS256")
        audiences = [str(request.url.with_query(None))]
        if self.config.audience:
            audiences.append(self.config.audience)
        for certificate in self.config.certificates.get(client_id, []):
            if header.get("kid") not in (None, certificate_thumbprint(certificate)):
                continue
            try:
                claims: dict[str, Any] = jwt.decode(
                    assertion,
                    certificate.public_key(),  # type: ignore[arg-type]
                    algorithms=["RS256"],
                    audience=audiences,
                    issuer=client_id,
                    options={
                        "require": ["iss", "sub", "aud", "exp", "iat", "nbf", "jti"],
                        # Checked by _check_times against the emulator's own clock.
                        "verify_exp": False,
                        "verify_nbf": False,
                        "verify_iat": False,
                    },
                )
            except jwt.InvalidSignatureError:
                continue  # try the client's next certificate (key rotation)
            except jwt.InvalidTokenError as error:
                raise oauth_error(401, "invalid_client", f"client_assertion: {error}") from None
            return claims
        raise oauth_error(401, "invalid_client", "no registered certificate verifies the assertion")


def _basic_credentials(header: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(header.removeprefix("Basic ").strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        raise oauth_error(401, "invalid_client", "malformed Basic credentials") from None
    client_id, separator, secret = decoded.partition(":")
    if not separator:
        raise oauth_error(401, "invalid_client", "malformed Basic credentials")
    # RFC 6749 2.3.1: both parts are form-urlencoded before base64.
    return unquote_plus(client_id), unquote_plus(secret)
