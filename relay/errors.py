"""The exception tree. Each message tells the operator what to do next.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""

    exit_code = 1


class ConfigurationError(RelayError):
    """A setting is missing or malformed; the message names the variable."""

    exit_code = 2


class SchemaNotReady(RelayError):
    """The outbox table is missing or older than this relay expects."""

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}: run 'relay migrate'")


class InvalidEvent(RelayError, ValueError):
    """The producer API refused an event; nothing was written."""


class KeyMaterialError(ConfigurationError):
    """The private key, certificate or PKCS#12 file cannot be used."""


class TokenError(RelayError):
    """The token endpoint did not give us an access token."""


class TokenUnavailable(TokenError):
    """A transient failure (network, 5xx, 429): retried with backoff."""


class TokenRejected(TokenError):
    """The token endpoint refused our client (invalid_client, invalid_scope, ...).

    This is a configuration error on our side or the partner's; retried slowly.
    """


class DatabaseUnavailable(RelayError):
    """The database named by RELAY_DATABASE_URL cannot be reached or refused us."""

    exit_code = 2


class DatabaseRefused(RelayError):
    """The database answered a statement with an error that retrying cannot fix (a missing
    table or right, a value it cannot store); the message names the operation and SQLSTATE."""


class SchemaBehind(SchemaNotReady):
    """``relay migrate --check``: the schema is older than this relay; nothing was changed."""

    exit_code = 3


class PrivilegeMissing(RelayError):
    """The database role lacks a right the command needs; the message names the right and the
    grants (docs/database.md) that include it."""

    exit_code = 2
