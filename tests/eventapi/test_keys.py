"""Key material: PEM and PKCS#12 load; wrong material is refused at start-up, clearly."""

from __future__ import annotations

import time
import uuid
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import pkcs12

from relay.config import load_settings
from relay.errors import KeyMaterialError
from relay.eventapi.keys import (
    certificate_thumbprint,
    client_assertion,
    load_key_material,
    load_pem,
    load_pkcs12,
)
from tests.helpers.keys import certificate, rsa_key, write_pem, write_pkcs12


def test_pem_loads(tmp_path: Path) -> None:
    key = rsa_key(0)
    cert = certificate(key)
    material = load_pem(*write_pem(tmp_path, key, cert))
    assert material.certificate == cert
    assert material.thumbprint == certificate_thumbprint(cert)
    assert "=" not in material.thumbprint
    assert len(material.thumbprint) == 27  # 20 bytes of SHA-1, base64url without padding


def test_encrypted_pem_loads_through_settings(tmp_path: Path) -> None:
    key = rsa_key(0)
    key_file, cert_file = write_pem(tmp_path, key, certificate(key), password="pem-pass")
    settings = load_settings(
        private_key_file=key_file, certificate_file=cert_file, private_key_password="pem-pass"
    )
    assert load_key_material(settings).private_key.key_size == 2048


def test_pkcs12_loads_through_settings(tmp_path: Path) -> None:
    key = rsa_key(0)
    cert = certificate(key)
    path = write_pkcs12(tmp_path, key, cert, "pfx-pass")
    settings = load_settings(pkcs12_file=path, pkcs12_password="pfx-pass")
    material = load_key_material(settings)
    assert material.certificate == cert
    assert material.source == "RELAY_PKCS12_FILE"


def test_mismatched_key_and_certificate_are_refused(tmp_path: Path) -> None:
    key_file, cert_file = write_pem(tmp_path, rsa_key(0), certificate(rsa_key(1)))
    with pytest.raises(KeyMaterialError) as caught:
        load_pem(key_file, cert_file)
    message = str(caught.value)
    assert "RELAY_PRIVATE_KEY_FILE with RELAY_CERTIFICATE_FILE" in message
    assert "does not match the certificate's public key" in message


def test_pkcs12_without_its_certificate_is_refused(tmp_path: Path) -> None:
    # A .pfx whose only certificate belongs to another key: kid and x5t need the key's own.
    path = tmp_path / "key-only.pfx"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"relay",
            rsa_key(0),
            None,
            [certificate(rsa_key(1))],
            serialization.BestAvailableEncryption(b"pfx-pass"),
        )
    )
    with pytest.raises(KeyMaterialError, match="must hold both a private key and a certificate"):
        load_pkcs12(path, "pfx-pass")


def test_wrong_pkcs12_password(tmp_path: Path) -> None:
    path = write_pkcs12(tmp_path, rsa_key(0), certificate(rsa_key(0)), "pfx-pass")
    with pytest.raises(KeyMaterialError, match="RELAY_PKCS12_PASSWORD is wrong"):
        load_pkcs12(path, "not-it")


@pytest.mark.parametrize(
    ("password_used", "password_given", "match"),
    [
        ("pem-pass", None, "is encrypted: set RELAY_PRIVATE_KEY_PASSWORD"),
        (None, "pem-pass", "is not encrypted"),
        ("pem-pass", "wrong", "RELAY_PRIVATE_KEY_PASSWORD is wrong"),
    ],
)
def test_pem_password_problems(
    tmp_path: Path, password_used: str | None, password_given: str | None, match: str
) -> None:
    key = rsa_key(0)
    key_file, cert_file = write_pem(tmp_path, key, certificate(key), password=password_used)
    with pytest.raises(KeyMaterialError, match=match) as caught:
        load_pem(key_file, cert_file, password_given)
    assert "pem-pass" not in str(caught.value)


def test_small_rsa_key_is_refused(tmp_path: Path) -> None:
    key = rsa_key(0, bits=1024)
    with pytest.raises(KeyMaterialError, match="1024 bits; at least 2048"):
        load_pem(*write_pem(tmp_path, key, certificate(key)))


def test_non_rsa_key_is_refused(tmp_path: Path) -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    with pytest.raises(KeyMaterialError, match="not RSA"):
        load_pem(*write_pem(tmp_path, key, certificate(key)))


def test_unreadable_and_garbage_files(tmp_path: Path) -> None:
    key_file, cert_file = write_pem(tmp_path, rsa_key(0), certificate(rsa_key(0)))
    with pytest.raises(KeyMaterialError, match="RELAY_PRIVATE_KEY_FILE: cannot read"):
        load_pem(tmp_path / "missing.pem", cert_file)
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    with pytest.raises(KeyMaterialError, match=r"RELAY_CERTIFICATE_FILE: .* not a PEM X\.509"):
        load_pem(key_file, garbage)
    with pytest.raises(KeyMaterialError, match=r"RELAY_PKCS12_FILE: .* not a PKCS#12"):
        load_pkcs12(garbage, "x")


def test_repr_shows_no_key(tmp_path: Path) -> None:
    key = rsa_key(0)
    material = load_pem(*write_pem(tmp_path, key, certificate(key)))
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    text = repr(material)
    assert material.thumbprint in text
    assert pem.splitlines()[1] not in text


def test_client_assertion_claims(tmp_path: Path) -> None:
    key = rsa_key(0)
    material = load_pem(*write_pem(tmp_path, key, certificate(key)))
    audience = "https://sandbox-accounts.scalepoint.com/connect/token"
    first = client_assertion(material, "client", audience, wall_clock=lambda: 1_700_000_000.7)
    second = client_assertion(material, "client", audience)
    claims: dict[str, Any] = jwt.decode(
        first,
        material.certificate.public_key(),  # type: ignore[arg-type]
        algorithms=["RS256"],
        audience=audience,
        options={"verify_exp": False, "verify_iat": False, "verify_nbf": False},
    )
    assert claims == {
        "iss": "client",
        "sub": "client",
        "aud": audience,
        "jti": claims["jti"],
        # Backdated 5 s for a token endpoint whose clock is behind ours; exp stays 10 s ahead.
        "iat": 1_699_999_995,
        "nbf": 1_699_999_995,
        "exp": 1_700_000_010,
    }
    assert uuid.UUID(claims["jti"]).version == 4
    second_claims = jwt.decode(second, options={"verify_signature": False})
    assert second_claims["jti"] != claims["jti"]
    assert abs(second_claims["iat"] + 5 - time.time()) < 5
    assert jwt.get_unverified_header(first)["x5t"] == material.thumbprint
