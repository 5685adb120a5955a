"""Keys and self-signed certificates generated at test time; none is ever committed."""

from __future__ import annotations

import datetime
import ipaddress
import ssl
from functools import cache
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import NameOID

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@cache
def rsa_key(index: int = 0, bits: int = 2048) -> rsa.RSAPrivateKey:
    """An RSA key, cached per (index, bits) because generating one takes a while."""
    return rsa.generate_private_key(public_exponent=65537, key_size=bits)


def certificate(key: PrivateKey, common_name: str = "relay-test") -> x509.Certificate:
    """A self-signed certificate for ``key``, as Scalepoint's clients use."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(key, hashes.SHA256())
    )


def write_pem(
    directory: Path,
    key: PrivateKey,
    cert: x509.Certificate,
    password: str | None = None,
) -> tuple[Path, Path]:
    """Write key.pem (encrypted when a password is given) and cert.pem; return both paths."""
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password.encode())
        if password is not None
        else serialization.NoEncryption()
    )
    key_path = directory / "key.pem"
    cert_path = directory / "cert.pem"
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption)
    )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key_path, cert_path


def write_pkcs12(
    directory: Path, key: rsa.RSAPrivateKey, cert: x509.Certificate, password: str
) -> Path:
    """Write a password-protected client.pfx holding the key and its certificate."""
    path = directory / "client.pfx"
    path.write_bytes(
        pkcs12.serialize_key_and_certificates(
            b"relay", key, cert, None, serialization.BestAvailableEncryption(password.encode())
        )
    )
    return path


def server_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server TLS context for 127.0.0.1 with a self-signed certificate, and that
    certificate's PEM path, to hand to the client as RELAY_CA_BUNDLE."""
    key = rsa_key(2)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    tls_directory = directory / "tls"
    tls_directory.mkdir(exist_ok=True)
    key_path, cert_path = write_pem(tls_directory, key, cert)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context, cert_path
