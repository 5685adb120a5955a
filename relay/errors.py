"""The exception tree, and what each error means as an exit code. Each message tells the operator
what to do next.

Every ``relay`` command exits with one of :class:`ExitCode`'s codes, whatever the command: the
CLI's error boundary turns an error into one line on standard error and the ``exit_code`` of its
class. docs/cli.md has the table.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import re
from enum import IntEnum
from typing import ClassVar

_UNPRINTABLE = re.compile(r"[\x00-\x1f\x7f\ud800-\udfff]")


def printable(text: str) -> str:
    """``text`` on one line a terminal shows as it is: control characters (line breaks
    included) and bytes that were not UTF-8 as escapes (``\\n``, ``\\x1e``, ``\\udcff``).
    A message may quote what an operator gave (a path, a value); the line stays one line."""
    return _UNPRINTABLE.sub(lambda match: match.group().encode("unicode_escape").decode(), text)


class ExitCode(IntEnum):
    """What a ``relay`` command's exit status means; the same for every command."""

    OK = 0
    # Something the relay did not expect: a bug, or a surprise. The traceback says where.
    FAILURE = 1
    # Bad usage or configuration: an option or argument (click's usage errors are 2 as well), a
    # RELAY_* setting, key material, or our client refused by the partner's token endpoint.
    USAGE = 2
    # The command finished, but something needs attention: rows left blocked by `run --drain`,
    # rows named that were left alone, a schema behind (`migrate --check`).
    ATTENTION = 3
    # The database cannot be reached, or it refused us (login, database, rights, a statement).
    DATABASE = 4
    # The outbox schema is missing, or at another revision than this relay's: run relay migrate.
    SCHEMA = 5
    # The partner's token endpoint cannot be reached or fails (a timeout, a 5xx): try again.
    PARTNER = 6
    # Stopped by Ctrl-C (SIGINT) before it finished, as shells report it.
    INTERRUPTED = 130


# One line each, for the epilog of `relay --help` and the table in docs/cli.md.
EXIT_CODE_MEANINGS: dict[ExitCode, str] = {
    ExitCode.OK: "success",
    ExitCode.FAILURE: "unexpected failure: a bug or a surprise, with its traceback",
    ExitCode.USAGE: "bad usage or configuration; nothing was changed",
    ExitCode.ATTENTION: "finished, but something needs attention",
    ExitCode.DATABASE: "the database cannot be reached, or refused us",
    ExitCode.SCHEMA: "the outbox schema is missing or at another revision",
    ExitCode.PARTNER: "the partner cannot be reached, or fails",
    ExitCode.INTERRUPTED: "interrupted (Ctrl-C) before it finished",
}


class RelayError(Exception):
    """Base of every error the relay raises on purpose."""

    exit_code: ClassVar[ExitCode] = ExitCode.FAILURE


class ConfigurationError(RelayError):
    """A setting is missing or malformed; the message names the variable."""

    exit_code = ExitCode.USAGE


class UsageError(RelayError):
    """The command was asked for something it will not do as given: no rows named, a row that
    does not exist, a cut-off in the future, a large change not confirmed. Nothing was changed."""

    exit_code = ExitCode.USAGE


class SchemaNotReady(RelayError):
    """The outbox table is missing or older than this relay expects."""

    exit_code = ExitCode.SCHEMA

    def __init__(self, detail: str) -> None:
        super().__init__(f"{detail}: run 'relay migrate'")


class InvalidEvent(RelayError, ValueError):
    """The producer API refused an event; nothing was written."""

    exit_code = ExitCode.USAGE


class KeyMaterialError(ConfigurationError):
    """The private key, certificate or PKCS#12 file cannot be used."""


class TokenError(RelayError):
    """The token endpoint did not give us an access token."""

    exit_code = ExitCode.PARTNER


class TokenUnavailable(TokenError):
    """A transient failure (network, 5xx, 429): retried with backoff."""


class TokenRejected(TokenError):
    """The token endpoint refused our client (invalid_client, invalid_scope, ...).

    This is a configuration error on our side or the partner's; retried slowly.
    """

    exit_code = ExitCode.USAGE


class DatabaseUnavailable(RelayError):
    """The database named by RELAY_DATABASE_URL cannot be reached or refused us."""

    exit_code = ExitCode.DATABASE


class DatabaseRefused(RelayError):
    """The database answered a statement with an error that retrying cannot fix (a missing
    table or right, a value it cannot store); the message names the operation and SQLSTATE."""

    exit_code = ExitCode.DATABASE


class SchemaBehind(SchemaNotReady):
    """``relay migrate --check``: the schema is older than this relay; nothing was changed."""

    exit_code = ExitCode.ATTENTION


class PrivilegeMissing(RelayError):
    """The database role lacks a right the command needs; the message names the right and the
    grants (docs/database.md) that include it."""

    exit_code = ExitCode.DATABASE
