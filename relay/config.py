"""Settings: one object, loaded from ``RELAY_*`` environment variables.

Every secret can also be given as a file (``RELAY_CLIENT_SECRET_FILE`` and so on), which is how
systemd's ``LoadCredential=`` and Kubernetes secret volumes hand them over. Secrets are held as
``SecretStr`` so they never show in a repr, a log line or an error message.

It imports nothing from the rest of the package but the exception tree.
"""

from __future__ import annotations

import os
import re
import socket
import stat
from collections.abc import Iterable, Mapping
from datetime import timedelta
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit, urlunsplit

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.errors import ConfigurationError, printable
from relay.names import schema_problem
from relay.routes import (
    COUNTRY_RULE,
    TENANT_RULE,
    country_problem,
    route_problem,
    tenant_problem,
)

ENV_PREFIX = "RELAY_"

TOKEN_URLS = {
    "production": "https://accounts.scalepoint.com/connect/token",
    "sandbox": "https://sandbox-accounts.scalepoint.com/connect/token",
}
PRODUCTION_API_BASE_URL = "https://www.scalepoint.com"

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d|w)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800, None: 1}
# The longest duration any setting or option takes: longer ones are mistakes, and past a few
# thousand years no date (Python's or PostgreSQL's) can be counted back to.
MAX_DURATION_SECONDS = 100 * 366 * 86400
MAX_DURATION_TEXT = "100 years"
MAX_DURATION_DIGITS = 20
_NOT_TEXT = re.compile("[\x00\ud800-\udfff]")
# RELAY_* variables that are not settings of the relay but are read on purpose: the test suite's
# database.
NOT_SETTINGS = frozenset({"RELAY_TEST_DATABASE_URL"})
# What Kubernetes injects for a Service named 'relay' while enableServiceLinks is on.
_SERVICE_LINK = re.compile(r"^RELAY_(SERVICE_(HOST|PORT(_\w+)?)|PORT(_\d+_(TCP|UDP|SCTP)\w*)?)$")
# Files whose contents are secret: readable by other users, they warn.
SECRET_FILES = (
    "database_url_file",
    "client_secret_file",
    "private_key_password_file",
    "pkcs12_password_file",
    "private_key_file",
    "pkcs12_file",
)


def parse_duration(value: object) -> object:
    """Accept ``250ms``, ``5s``, ``10m``, ``2h``, ``30d``, ``1w`` or a number of seconds, from
    0 to 100 years (ValueError, naming the limit, for anything else)."""
    if isinstance(value, str):
        match = _DURATION.match(value)
        if match is None:
            raise ValueError("expected a duration such as 500ms, 30s, 10m, 2h or 30d")
        amount, unit = match.groups()
        if len(amount) > MAX_DURATION_DIGITS:
            raise ValueError(f"a duration is at most {MAX_DURATION_TEXT}")
        return _bounded(float(amount) * _UNIT_SECONDS[unit])
    if isinstance(value, bool):
        raise ValueError("expected a duration such as 500ms, 30s, 10m, 2h or 30d")
    if isinstance(value, int) and abs(value) > MAX_DURATION_SECONDS:
        raise ValueError(f"a duration is at most {MAX_DURATION_TEXT}")  # before float() fails
    if isinstance(value, int | float):
        return _bounded(float(value))
    return value


def _bounded(seconds: float) -> timedelta:
    if not 0 <= seconds <= MAX_DURATION_SECONDS:  # NaN compares false too
        raise ValueError(f"a duration is from 0 to {MAX_DURATION_TEXT}")
    return timedelta(seconds=seconds)


Duration = Annotated[timedelta, BeforeValidator(parse_duration)]

KEEP = "keep"  # RELAY_RETENTION's word for "never delete"


def parse_retention(value: object) -> object:
    """A duration, or ``keep`` (None: nothing is ever deleted)."""
    if isinstance(value, str) and value.strip().lower() == KEEP:
        return None
    try:
        return parse_duration(value)
    except ValueError as error:
        raise ValueError(f"{error}, or keep") from None


Retention = Annotated[timedelta | None, BeforeValidator(parse_retention)]


def env_name(field: str) -> str:
    return f"{ENV_PREFIX}{field.upper()}"


def redact_url(url: str) -> str:
    """The URL with its password (in the authority or a ``password=`` parameter) as ``***``."""
    parts = urlsplit(url)
    if parts.password is not None:
        credentials, _, host = parts.netloc.rpartition("@")
        user = credentials.partition(":")[0]
        url = urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    return re.sub(r"([?&]password=)[^&#]*", r"\1***", url)


class Settings(BaseSettings):
    """Everything the relay can be told. Field ``foo`` is read from ``RELAY_FOO``."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        case_sensitive=False,
        extra="ignore",
        hide_input_in_errors=True,
        populate_by_name=True,
    )

    # Database
    database_url: str | None = Field(
        default=None, description="PostgreSQL URL, postgresql://user@host:5432/db"
    )
    database_url_file: Path | None = Field(
        default=None, description="file holding RELAY_DATABASE_URL (it carries a password)"
    )
    schema_name: str = Field(
        default="public",
        validation_alias="RELAY_SCHEMA",
        description="PostgreSQL schema that holds the outbox table",
    )

    # Partner
    environment: Literal["sandbox", "production"] = Field(
        default="sandbox", description="picks the default token endpoint and API base URL"
    )
    token_url: str | None = Field(default=None, description="OAuth 2.0 token endpoint")
    api_base_url: str | None = Field(default=None, description="EventApi base URL")
    country: str | None = Field(default=None, description="default country code, e.g. dk")
    tenant: str | None = Field(default=None, description="default tenant, e.g. abcinsurance")
    scope: str = Field(default="events", description="OAuth scope(s), space separated")
    ca_bundle: Path | None = Field(default=None, description="extra CA bundle (PEM) for TLS")
    https_proxy: str | None = Field(
        default=None,
        description="http:// proxy for every request to Scalepoint; wins over HTTPS_PROXY",
    )

    # Client authentication
    client_id: str | None = Field(default=None, description="OAuth client id")
    client_auth_method: Literal[
        "auto", "client_secret_post", "client_secret_basic", "private_key_jwt"
    ] = Field(default="auto", description="auto: private_key_jwt when key material is set")
    client_secret: SecretStr | None = None
    client_secret_file: Path | None = None
    private_key_file: Path | None = Field(default=None, description="PEM RSA private key")
    private_key_password: SecretStr | None = None
    private_key_password_file: Path | None = None
    certificate_file: Path | None = Field(default=None, description="PEM X.509 certificate")
    pkcs12_file: Path | None = Field(default=None, description="PKCS#12 (.pfx) key + cert")
    pkcs12_password: SecretStr | None = None
    pkcs12_password_file: Path | None = None

    # Engine
    concurrency: int = Field(default=32, ge=1, le=1024, description="requests in flight")
    request_timeout: Duration = Field(default=timedelta(seconds=10))
    claim_batch_size: int = Field(default=100, ge=1, le=10_000)
    lease: Duration = Field(default=timedelta(seconds=60))
    poll_interval: Duration = Field(default=timedelta(seconds=5))
    max_attempts: int = Field(default=20, ge=1)
    max_age: Duration = Field(default=timedelta(hours=24))
    backoff_base: Duration = Field(default=timedelta(seconds=1))
    backoff_cap: Duration = Field(default=timedelta(minutes=10))
    circuit_threshold: int = Field(default=20, ge=1)
    circuit_pause: Duration = Field(
        default=timedelta(seconds=1), description="a route's first pause when its circuit opens"
    )
    circuit_pause_cap: Duration = Field(
        default=timedelta(seconds=2),
        description="the longest circuit pause: a failing route is probed at least this often",
    )
    configuration_pause: Duration = Field(
        default=timedelta(seconds=10),
        description="pause (and probe) of a route or of every route after a refusal",
    )
    retry_after_cap: Duration = Field(
        default=timedelta(minutes=5), description="the longest Retry-After honoured"
    )
    token_backoff_base: Duration = Field(
        default=timedelta(seconds=1), description="first retry delay after a failed token request"
    )
    token_backoff_cap: Duration = Field(
        default=timedelta(seconds=2), description="longest retry delay between token requests"
    )
    shutdown_grace: Duration = Field(default=timedelta(seconds=20))
    dead_blocks_key: bool = Field(
        default=True, description="a dead row holds back later rows of its ordering key"
    )
    retention: Retention = Field(
        default=timedelta(days=30),
        description="delete published rows and processed inbox events after this; keep: never",
    )
    worker_id: str = Field(default_factory=lambda: f"{socket.gethostname()}:{os.getpid()}")

    # Receiving
    receive_routes: Annotated[tuple[str, ...], NoDecode] = Field(
        default=(), description="routes to receive Scalepoint's events for: dk/abc,dk/budget"
    )
    receive_from: str | None = Field(
        default=None, description="a new route's first receive starts after this event id"
    )
    receive_timeout: Duration = Field(
        default=timedelta(seconds=90),
        description="a receive call (a long poll) without an answer by then is retried",
    )

    # Operations
    http_host: str = Field(default="0.0.0.0")  # noqa: S104 - probes come from outside the pod
    http_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = "auto"
    propagate_trace: bool = Field(
        default=False,
        description="send each attempt's traceparent to Scalepoint (tracing must be on)",
    )

    # Warnings found while loading: logged by the CLI once logging is configured.
    _warnings: list[str] = PrivateAttr(default_factory=list)

    @field_validator("*", mode="before")
    @classmethod
    def _check_text(cls, value: object) -> object:
        """No setting holds bytes that are not UTF-8 (kept by Python as lone surrogates, which
        no driver or header can carry) or a NUL."""
        if isinstance(value, str) and _NOT_TEXT.search(value):
            raise ValueError("is not text (not valid UTF-8, or a NUL)")
        return value

    @field_validator("database_url")
    @classmethod
    def _check_database_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        return check_database_url(value)

    @field_validator("schema_name")
    @classmethod
    def _check_schema(cls, value: str) -> str:
        problem = schema_problem(value)
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("token_url", "api_base_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in {"https", "http"} or not parts.hostname:
            raise ValueError("must be an http(s) URL with a host")
        return value.rstrip("/")

    @field_validator("https_proxy")
    @classmethod
    def _check_proxy(cls, value: str | None) -> str | None:
        if value is None or not value.strip():
            return None
        problem = proxy_problem(value.strip())
        if problem is not None:
            raise ValueError(problem)
        return value.strip()

    @field_validator("country")
    @classmethod
    def _check_country(cls, value: str | None) -> str | None:
        if value is not None and country_problem(value):
            raise ValueError(f"must be {COUNTRY_RULE}")
        return value

    @field_validator("tenant")
    @classmethod
    def _check_tenant(cls, value: str | None) -> str | None:
        if value is not None and tenant_problem(value):
            raise ValueError(f"must be {TENANT_RULE}")
        return value

    @field_validator("receive_routes", mode="before")
    @classmethod
    def _check_receive_routes(cls, value: object) -> tuple[str, ...]:
        items = value.split(",") if isinstance(value, str) else value
        if not isinstance(items, list | tuple):
            raise ValueError("expected routes such as dk/abcinsurance,dk/budgetinsurance")
        routes: list[str] = []
        for item in items:
            route = str(item).strip()
            if not route:
                continue
            country, slash, tenant = route.partition("/")
            problem = "expected COUNTRY/TENANT" if not slash else route_problem(country, tenant)
            if problem:
                raise ValueError(f"{route[:40]!r}: {problem}")
            if route not in routes:
                routes.append(route)
        return tuple(routes)

    @model_validator(mode="after")
    def _check_lease(self) -> Settings:
        # Held rows are extended every quarter lease, so a row has at least three quarters of
        # the lease left whenever it is looked at; a row is sent only when what is left covers
        # one token request and one publish (two request timeouts). Three timeouts keep that
        # true with a quarter of a timeout to spare for the extension's own round trip.
        if self.lease < 3 * self.request_timeout:
            raise ValueError(
                f"{env_name('lease')}: must be at least three times RELAY_REQUEST_TIMEOUT"
            )
        return self

    @model_validator(mode="after")
    def _read_secret_files(self) -> Settings:
        for name in ("client_secret", "private_key_password", "pkcs12_password", "database_url"):
            path: Path | None = getattr(self, f"{name}_file")
            if path is None:
                continue
            if getattr(self, name) is not None:
                raise ValueError(f"{env_name(name)} and {env_name(name)}_FILE are both set")
            try:
                text = path.read_text(encoding="utf-8").rstrip("\r\n")
            except OSError as exc:
                raise ValueError(
                    f"{env_name(name)}_FILE: cannot read {path}: {exc.strerror}"
                ) from None
            if name == "database_url":
                try:
                    self.database_url = check_database_url(text.strip())
                except ValueError as error:  # the message never holds the URL
                    raise ValueError(f"{env_name(name)}_FILE: {path}: {error}") from None
            else:
                setattr(self, name, SecretStr(text))
        return self

    @model_validator(mode="after")
    def _collect_warnings(self) -> Settings:
        self._warnings = [
            *unknown_variable_warnings(os.environ),
            *(
                warning
                for name in SECRET_FILES
                if (warning := readable_by_others(env_name(name), getattr(self, name)))
            ),
        ]
        return self

    def warnings(self) -> list[str]:
        """What is suspicious but not wrong: unknown RELAY_* variables, secret files that other
        users can read. One line each, naming the variable; never a value."""
        return list(self._warnings)

    def __repr_args__(self) -> Iterable[tuple[str | None, Any]]:
        # The database and proxy URLs may carry a password; repr() and str() must not show it.
        for name, value in super().__repr_args__():
            secret = name in ("database_url", "https_proxy") and value
            yield name, redact_url(value) if secret else value

    # Derived values -------------------------------------------------------------------------

    @property
    def resolved_token_url(self) -> str:
        return self.token_url or TOKEN_URLS[self.environment]

    @property
    def resolved_api_base_url(self) -> str | None:
        if self.api_base_url:
            return self.api_base_url
        return PRODUCTION_API_BASE_URL if self.environment == "production" else None

    @property
    def uses_private_key_jwt(self) -> bool:
        if self.client_auth_method == "auto":
            return self.pkcs12_file is not None or self.private_key_file is not None
        return self.client_auth_method == "private_key_jwt"

    def require_database_url(self) -> str:
        if not self.database_url:
            raise ConfigurationError(f"{env_name('database_url')}: is not set")
        return self.database_url

    def require_partner(self, *, route: bool = True) -> None:
        """Check the settings needed to talk to the EventApi, naming the first one missing;
        ``route``: RELAY_COUNTRY and RELAY_TENANT among them."""
        if not self.client_id:
            raise ConfigurationError(f"{env_name('client_id')}: is not set")
        if self.resolved_api_base_url is None:
            raise ConfigurationError(
                f"{env_name('api_base_url')}: is not set (required in the sandbox environment:"
                " the hostname of your assigned project server)"
            )
        for name in ("country", "tenant") if route else ():
            if getattr(self, name) is None:
                raise ConfigurationError(f"{env_name(name)}: is not set")
        if self.uses_private_key_jwt:
            self._require_key_material()
        elif self.client_secret is None:
            raise ConfigurationError(
                f"{env_name('client_secret')}: is not set (or set RELAY_PRIVATE_KEY_FILE and "
                "RELAY_CERTIFICATE_FILE, or RELAY_PKCS12_FILE, for private_key_jwt)"
            )

    def _require_key_material(self) -> None:
        if self.pkcs12_file is not None:
            if self.private_key_file is not None or self.certificate_file is not None:
                raise ConfigurationError(
                    f"{env_name('pkcs12_file')}: set either it or "
                    "RELAY_PRIVATE_KEY_FILE with RELAY_CERTIFICATE_FILE, not both"
                )
            return
        if self.private_key_file is None:
            raise ConfigurationError(f"{env_name('private_key_file')}: is not set")
        if self.certificate_file is None:
            raise ConfigurationError(
                f"{env_name('certificate_file')}: is not set (private_key_jwt needs the "
                "certificate for the kid and x5t headers)"
            )


def proxy_problem(url: str) -> str | None:
    """Why ``url`` cannot be used as an HTTP proxy, without quoting it (it may hold a
    password); None when it can."""
    parts = urlsplit(url)
    if parts.scheme != "http":
        return "must be an http:// proxy URL, e.g. http://proxy.internal:3128"
    if not parts.hostname:
        return "must name the proxy's host, e.g. http://proxy.internal:3128"
    try:
        _ = parts.port
    except ValueError:
        return "has a port that is not a number"
    return None


def check_database_url(value: str) -> str:
    """The URL if it is a usable PostgreSQL URL; else ValueError, whose message never holds it."""
    parts = urlsplit(value)
    if parts.scheme not in {"postgresql", "postgres", "postgresql+asyncpg"}:
        raise ValueError("must be a postgresql:// URL")
    if not parts.hostname and "host=" not in parts.query:
        raise ValueError("must name a host, e.g. postgresql://user@localhost:5432/db")
    try:
        _ = parts.port
    except ValueError:
        raise ValueError("has a port that is not a number") from None
    return value


def setting_variables() -> dict[str, str]:
    """The variable each setting is documented as, by field: RELAY_SCHEMA for schema_name."""
    return {
        field: alias if isinstance(alias := info.validation_alias, str) else env_name(field)
        for field, info in Settings.model_fields.items()
    }


def known_variables() -> frozenset[str]:
    """Every RELAY_* variable a setting is read from: its documented name and, as
    populate_by_name allows, the prefixed field name (RELAY_SCHEMA_NAME too)."""
    return frozenset({*setting_variables().values(), *map(env_name, Settings.model_fields)})


def unknown_variable_warnings(environment: Mapping[str, str]) -> list[str]:
    """A warning for each RELAY_* variable that is not a setting, with the nearest one that is.

    Not an error: an older or a newer relay, with other settings, may share the environment.
    """
    expected = known_variables() | NOT_SETTINGS
    unknown = sorted(
        name
        for name in environment
        if name.upper().startswith(ENV_PREFIX) and name.upper() not in expected
    )
    warnings = []
    # RELAY_SERVICE_HOST, RELAY_PORT_8080_TCP, ...: one warning for them all, not a guess each.
    links = [name for name in unknown if _SERVICE_LINK.match(name.upper())]
    if "RELAY_SERVICE_HOST" in (name.upper() for name in links):
        warnings.append(
            f"{', '.join(links)}: Kubernetes service links of a Service named 'relay', not "
            "relay settings (ignored); set enableServiceLinks: false on the pod"
        )
        unknown = [name for name in unknown if name not in links]
    # Compared without the prefix, which every name shares and which would make any two close.
    suffixes = {name.removeprefix(ENV_PREFIX): name for name in setting_variables().values()}
    for name in unknown:
        close = get_close_matches(name.upper().removeprefix(ENV_PREFIX), list(suffixes), n=1)
        hint = f"; did you mean {suffixes[close[0]]}?" if close else ""
        warnings.append(f"{name}: not a setting of this relay (ignored){hint}")
    return warnings


def readable_by_others(variable: str, path: Path | None) -> str | None:
    """A warning when the secret file ``path`` can be read by every user of the machine."""
    if path is None:
        return None
    try:
        mode = path.stat().st_mode  # through a symlink, as Kubernetes secret volumes have them
    except OSError:
        return None  # reading it fails later, with its own error
    if not mode & stat.S_IROTH:
        return None
    return (
        f"{variable}: {path} can be read by any user (mode {stat.S_IMODE(mode):04o}); "
        "make it 0600 or 0640 (on Kubernetes: defaultMode 0440 on the secret volume)"
    )


def describe_validation_error(error: ValidationError) -> str:
    """One line per bad setting, each naming its variable; never the value."""
    lines = []
    for item in error.errors(include_input=False, include_url=False):
        location = item.get("loc") or ()
        message = printable(str(item.get("msg", "is invalid")).removeprefix("Value error, "))
        if location:
            field = str(location[0])
            variable = field if field.startswith(ENV_PREFIX) else env_name(field)
            if field == "schema_name":
                variable = env_name("schema")
            lines.append(f"{variable}: {message}")
        else:
            lines.append(message)
    return "\n".join(lines)


def load_settings(**overrides: Any) -> Settings:
    """Load settings from the environment; raise ConfigurationError naming what is wrong."""
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise ConfigurationError(describe_validation_error(exc)) from None
