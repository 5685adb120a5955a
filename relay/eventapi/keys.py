"""Key material for ``private_key_jwt``: loading, checking, and signing client assertions.

The key is checked when it is loaded, so a wrong file stops the relay at start-up with a
message naming the variable to fix instead of failing later at the token endpoint. Nothing
here ever puts key bytes, passwords or signed assertions into a message or a repr.
"""

from __future__ import annotations

import base64
import hashlib
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import pkcs12

from relay.config import Settings, env_name
from relay.errors import KeyMaterialError

CLIENT_ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
MINIMUM_KEY_BITS = 2048
# The official Scalepoint Java client uses 10 s: long enough for clock skew on a slow
# request, short enough that a leaked assertion is useless almost at once.
ASSERTION_LIFETIME_SECONDS = 10
# iat and nbf are set this far in the past, so a token endpoint whose clock runs a few seconds
# behind ours does not find the assertion "not yet valid". exp is not moved: the assertion
# expires as soon as before.
CLOCK_SKEW_SECONDS = 5


@dataclass(frozen=True, slots=True, repr=False)
class KeyMaterial:
    """An RSA private key with the certificate whose public key it matches."""

    private_key: rsa.RSAPrivateKey
    certificate: x509.Certificate
    source: str  # the variable(s) it was loaded from, for messages

    @property
    def thumbprint(self) -> str:
        """base64url (no padding) SHA-1 of the DER certificate: the ``kid`` and ``x5t``."""
        return certificate_thumbprint(self.certificate)

    def __repr__(self) -> str:
        return f"KeyMaterial(source={self.source!r}, thumbprint={self.thumbprint!r})"


def certificate_thumbprint(certificate: x509.Certificate) -> str:
    """The x5t thumbprint of a certificate (RFC 7515 section 4.1.7)."""
    der = certificate.public_bytes(serialization.Encoding.DER)
    digest = hashlib.sha1(der, usedforsecurity=False).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def load_key_material(settings: Settings) -> KeyMaterial:
    """Load and check the key material the settings name (PKCS#12, or PEM key and cert)."""
    if settings.pkcs12_file is not None:
        password = settings.pkcs12_password
        return load_pkcs12(
            settings.pkcs12_file, password.get_secret_value() if password is not None else None
        )
    if settings.private_key_file is None or settings.certificate_file is None:
        raise KeyMaterialError(
            f"{env_name('private_key_file')} and {env_name('certificate_file')} (or "
            f"{env_name('pkcs12_file')}) must be set for private_key_jwt"
        )
    password = settings.private_key_password
    return load_pem(
        settings.private_key_file,
        settings.certificate_file,
        password.get_secret_value() if password is not None else None,
    )


def load_pem(key_file: Path, certificate_file: Path, password: str | None = None) -> KeyMaterial:
    """Load a PEM private key (optionally encrypted) and a PEM certificate, and check them."""
    key_variable = env_name("private_key_file")
    cert_variable = env_name("certificate_file")
    key_bytes = _read(key_file, key_variable)
    cert_bytes = _read(certificate_file, cert_variable)
    try:
        key = serialization.load_pem_private_key(
            key_bytes, password.encode("utf-8") if password is not None else None
        )
    except TypeError:
        # cryptography raises TypeError for "encrypted but no password" and the reverse.
        hint = (
            "is encrypted: set RELAY_PRIVATE_KEY_PASSWORD"
            if password is None
            else ("is not encrypted: unset RELAY_PRIVATE_KEY_PASSWORD")
        )
        raise KeyMaterialError(f"{key_variable}: {key_file} {hint}") from None
    except ValueError:
        raise KeyMaterialError(
            f"{key_variable}: {key_file} is not a PEM private key, or "
            f"{env_name('private_key_password')} is wrong"
        ) from None
    try:
        certificate = x509.load_pem_x509_certificate(cert_bytes)
    except ValueError:
        raise KeyMaterialError(
            f"{cert_variable}: {certificate_file} is not a PEM X.509 certificate"
        ) from None
    return _checked(key, certificate, f"{key_variable} with {cert_variable}")


def load_pkcs12(path: Path, password: str | None) -> KeyMaterial:
    """Load a PKCS#12 (.pfx/.p12) file holding the private key and its certificate."""
    variable = env_name("pkcs12_file")
    data = _read(path, variable)
    try:
        key, certificate, _ = pkcs12.load_key_and_certificates(
            data, password.encode("utf-8") if password is not None else None
        )
    except ValueError:
        raise KeyMaterialError(
            f"{variable}: {path} is not a PKCS#12 file, or {env_name('pkcs12_password')} "
            "is wrong or missing"
        ) from None
    if key is None or certificate is None:
        raise KeyMaterialError(f"{variable}: {path} must hold both a private key and a certificate")
    return _checked(key, certificate, variable)


def _read(path: Path, variable: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise KeyMaterialError(f"{variable}: cannot read {path}: {error.strerror}") from None


def _checked(key: object, certificate: x509.Certificate, source: str) -> KeyMaterial:
    if not isinstance(key, rsa.RSAPrivateKey):
        raise KeyMaterialError(f"{source}: the private key is not RSA (RS256 needs an RSA key)")
    if key.key_size < MINIMUM_KEY_BITS:
        raise KeyMaterialError(
            f"{source}: the RSA key has {key.key_size} bits; at least {MINIMUM_KEY_BITS} needed"
        )
    certificate_key = certificate.public_key()
    if not isinstance(certificate_key, rsa.RSAPublicKey) or (
        certificate_key.public_numbers() != key.public_key().public_numbers()
    ):
        raise KeyMaterialError(
            f"{source}: the private key does not match the certificate's public key "
            f"(certificate thumbprint {certificate_thumbprint(certificate)}); "
            "use the key the certificate was issued for"
        )
    return KeyMaterial(private_key=key, certificate=certificate, source=source)


def client_assertion(
    material: KeyMaterial,
    client_id: str,
    audience: str,
    *,
    wall_clock: Callable[[], float] = time.time,
) -> str:
    """A fresh RS256 client assertion (OIDC Core 1.0 section 9, RFC 7523 section 3)."""
    now = int(wall_clock())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": audience,
        "jti": str(uuid.uuid4()),
        "iat": now - CLOCK_SKEW_SECONDS,
        "nbf": now - CLOCK_SKEW_SECONDS,
        "exp": now + ASSERTION_LIFETIME_SECONDS,
    }
    headers = {"typ": "JWT", "kid": material.thumbprint, "x5t": material.thumbprint}
    return jwt.encode(claims, material.private_key, algorithm="RS256", headers=headers)
