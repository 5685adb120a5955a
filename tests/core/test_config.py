"""Settings: every RELAY_* variable parses; a bad one is named in one line; secrets stay hidden."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from relay.config import (
    PRODUCTION_API_BASE_URL,
    TOKEN_URLS,
    Settings,
    env_name,
    load_settings,
    parse_duration,
    redact_url,
)
from relay.errors import ConfigurationError

DOCS = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
SECRETS = ("client_secret", "private_key_password", "pkcs12_password")
SECRET_VALUE = "s3cr3t-Value-that-must-not-leak"


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what a test sets: no RELAY_* variable leaks in from the shell that runs pytest."""
    for name in list(os.environ):
        if name.upper().startswith("RELAY_"):
            monkeypatch.delenv(name)


def variable(field: str) -> str:
    """The environment variable a Settings field is read from."""
    alias = Settings.model_fields[field].validation_alias
    return alias if isinstance(alias, str) else env_name(field)


def load(monkeypatch: pytest.MonkeyPatch, **variables: str) -> Settings:
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return load_settings()


def refusal(monkeypatch: pytest.MonkeyPatch, **variables: str) -> str:
    with pytest.raises(ConfigurationError) as caught:
        load(monkeypatch, **variables)
    assert caught.value.exit_code == 2
    return str(caught.value)


# Every variable parses ------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    field: str
    raw: str
    expected: Any


PARSES = [
    Case("database_url", "postgresql://relay@db.internal:5432/insurer", None),
    Case("database_url", "postgres://relay@db.internal/insurer", None),
    Case("database_url", "postgresql+asyncpg://relay@db.internal/insurer", None),
    Case("database_url", "postgresql:///insurer?host=/run/postgresql", None),
    Case("schema_name", "events_out", "events_out"),
    Case("environment", "production", "production"),
    Case(
        "token_url",
        "https://accounts.example/connect/token/",
        "https://accounts.example/connect/token",
    ),
    Case("api_base_url", "https://project.example/", "https://project.example"),
    Case("country", "dk", "dk"),
    Case("tenant", "abc-insurance.budget_1", "abc-insurance.budget_1"),
    Case("scope", "events claims", "events claims"),
    Case("ca_bundle", "/etc/relay/ca.pem", Path("/etc/relay/ca.pem")),
    Case("https_proxy", "http://proxy.internal:3128", "http://proxy.internal:3128"),
    Case("client_id", "abc_client", "abc_client"),
    Case("client_auth_method", "client_secret_basic", "client_secret_basic"),
    Case("private_key_file", "/run/keys/key.pem", Path("/run/keys/key.pem")),
    Case("certificate_file", "/run/keys/cert.pem", Path("/run/keys/cert.pem")),
    Case("pkcs12_file", "/run/keys/client.pfx", Path("/run/keys/client.pfx")),
    Case("concurrency", "64", 64),
    Case("request_timeout", "2500ms", timedelta(seconds=2.5)),
    Case("claim_batch_size", "500", 500),
    Case("lease", "2m", timedelta(minutes=2)),
    Case("poll_interval", "1.5s", timedelta(seconds=1.5)),
    Case("max_attempts", "5", 5),
    Case("max_age", "3d", timedelta(days=3)),
    Case("backoff_base", "250ms", timedelta(milliseconds=250)),
    Case("backoff_cap", "1h", timedelta(hours=1)),
    Case("circuit_threshold", "3", 3),
    Case("circuit_pause", "10s", timedelta(seconds=10)),
    Case("circuit_pause_cap", "15m", timedelta(minutes=15)),
    Case("configuration_pause", "90", timedelta(seconds=90)),
    Case("retry_after_cap", "2m", timedelta(minutes=2)),
    Case("receive_routes", "dk/abcinsurance, dk/budget", ("dk/abcinsurance", "dk/budget")),
    Case("receive_from", "_122047", "_122047"),
    Case("receive_timeout", "2m", timedelta(minutes=2)),
    Case("token_backoff_base", "2s", timedelta(seconds=2)),
    Case("token_backoff_cap", "5m", timedelta(minutes=5)),
    Case("shutdown_grace", "25s", timedelta(seconds=25)),
    Case("dead_blocks_key", "false", False),
    Case("retention", "30d", timedelta(days=30)),
    Case("worker_id", "relay-0", "relay-0"),
    Case("http_host", "127.0.0.1", "127.0.0.1"),
    Case("http_port", "0", 0),
    Case("log_level", "debug", "debug"),
    Case("log_format", "json", "json"),
    Case("propagate_trace", "true", True),
]
# Secrets and their *_FILE twins (and the database URL's) are read in the tests further down.
SECRET_FIELDS = {*SECRETS, *(f"{name}_file" for name in SECRETS), "database_url_file"}


@pytest.mark.parametrize("case", PARSES, ids=lambda case: f"{variable(case.field)}={case.raw}")
def test_every_variable_parses(monkeypatch: pytest.MonkeyPatch, case: Case) -> None:
    settings = load(monkeypatch, **{variable(case.field): case.raw})
    expected = case.raw if case.expected is None else case.expected
    assert getattr(settings, case.field) == expected


def test_every_setting_is_tested_and_documented() -> None:
    fields = set(Settings.model_fields)
    assert fields == {case.field for case in PARSES} | SECRET_FIELDS
    documented = set(re.findall(r"`(RELAY_[A-Z0-9_]+)`", DOCS.read_text(encoding="utf-8")))
    missing = {variable(field) for field in fields} - documented
    assert not missing, f"not in docs/configuration.md: {sorted(missing)}"


def test_defaults_need_no_environment() -> None:
    settings = load_settings()
    assert settings.database_url is None
    assert settings.schema_name == "public"
    assert settings.environment == "sandbox"
    assert settings.concurrency == 32
    assert settings.lease == timedelta(seconds=60)
    assert settings.max_age == timedelta(hours=24)
    assert settings.dead_blocks_key is True
    assert settings.retention == timedelta(days=30)
    assert settings.http_port == 8080
    assert settings.worker_id.endswith(f":{os.getpid()}")


@pytest.mark.parametrize("keep", ["keep", "KEEP", " keep "])
def test_a_retention_of_keep_deletes_nothing(monkeypatch: pytest.MonkeyPatch, keep: str) -> None:
    assert load(monkeypatch, RELAY_RETENTION=keep).retention is None
    assert "RELAY_RETENTION" in refusal(monkeypatch, RELAY_RETENTION="forever")


def test_names_are_case_insensitive(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load(monkeypatch, relay_concurrency="7").concurrency == 7


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("500ms", timedelta(milliseconds=500)),
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("2h", timedelta(hours=2)),
        ("30d", timedelta(days=30)),
        ("1w", timedelta(weeks=1)),
        ("45", timedelta(seconds=45)),
        ("0.5", timedelta(milliseconds=500)),
        (" 15 s ", timedelta(seconds=15)),
        (12, timedelta(seconds=12)),
        (timedelta(minutes=1), timedelta(minutes=1)),
    ],
)
def test_durations(raw: object, expected: timedelta) -> None:
    assert parse_duration(raw) == expected


@pytest.mark.parametrize("raw", ["forever", "", "-5s", "10 minutes", "5y", "1h30m", "s"])
def test_malformed_durations(raw: str) -> None:
    with pytest.raises(ValueError, match="expected a duration such as 500ms, 30s"):
        parse_duration(raw)


def test_derived_endpoints_follow_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = load_settings()
    assert sandbox.resolved_token_url == TOKEN_URLS["sandbox"]
    assert sandbox.resolved_api_base_url is None
    production = load(monkeypatch, RELAY_ENVIRONMENT="production")
    assert production.resolved_token_url == TOKEN_URLS["production"]
    assert production.resolved_api_base_url == PRODUCTION_API_BASE_URL
    custom = load(
        monkeypatch, RELAY_TOKEN_URL="https://t.example/token", RELAY_API_BASE_URL="https://a.x"
    )
    assert custom.resolved_token_url == "https://t.example/token"
    assert custom.resolved_api_base_url == "https://a.x"


# A bad setting is named in one line ----------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "raw", "message"),
    [
        ("RELAY_CONCURRENCY", "abc", "valid integer"),
        ("RELAY_CONCURRENCY", "0", "greater than or equal to 1"),
        ("RELAY_CONCURRENCY", "5000", "less than or equal to 1024"),
        ("RELAY_DATABASE_URL", "mysql://x", "must be a postgresql:// URL"),
        ("RELAY_DATABASE_URL", "postgresql://relay@db:port/x", "port that is not a number"),
        ("RELAY_DATABASE_URL", "postgresql:///insurer", "must name a host"),
        ("RELAY_MAX_AGE", "forever", "expected a duration"),
        ("RELAY_LEASE", "-1s", "expected a duration"),
        ("RELAY_COUNTRY", "DK", "lower-case two-letter code"),
        ("RELAY_COUNTRY", "dnk", "lower-case two-letter code"),
        ("RELAY_TENANT", "abc insurance", "letters, digits"),
        ("RELAY_SCHEMA", "Events", "lower-case SQL identifier"),
        ("RELAY_SCHEMA", 'x"; DROP TABLE outbox; --', "lower-case SQL identifier"),
        ("RELAY_ENVIRONMENT", "staging", "'sandbox' or 'production'"),
        ("RELAY_TOKEN_URL", "ftp://accounts.example/token", "http(s) URL"),
        ("RELAY_API_BASE_URL", "www.scalepoint.com", "http(s) URL"),
        ("RELAY_CLIENT_AUTH_METHOD", "magic", "private_key_jwt"),
        ("RELAY_DEAD_BLOCKS_KEY", "maybe", "valid boolean"),
        ("RELAY_HTTP_PORT", "70000", "less than or equal to 65535"),
        ("RELAY_LOG_LEVEL", "loud", "'debug', 'info', 'warning' or 'error'"),
        ("RELAY_RETENTION", "a month", "expected a duration"),
    ],
)
def test_a_malformed_setting_is_one_line_naming_it(
    monkeypatch: pytest.MonkeyPatch, name: str, raw: str, message: str
) -> None:
    text = refusal(monkeypatch, **{name: raw})
    assert "\n" not in text
    assert text.startswith(f"{name}: ")
    assert message in text
    assert raw not in text.removeprefix(f"{name}: ")  # the value itself is never echoed


def test_two_bad_settings_give_one_line_each(monkeypatch: pytest.MonkeyPatch) -> None:
    text = refusal(monkeypatch, RELAY_CONCURRENCY="abc", RELAY_COUNTRY="DK")
    lines = text.splitlines()
    assert len(lines) == 2
    assert {line.split(":")[0] for line in lines} == {"RELAY_CONCURRENCY", "RELAY_COUNTRY"}


def test_a_missing_database_url_is_named() -> None:
    with pytest.raises(ConfigurationError, match=r"^RELAY_DATABASE_URL: is not set$"):
        load_settings().require_database_url()


@pytest.mark.parametrize(
    ("unset", "named"),
    [
        ("RELAY_CLIENT_ID", "RELAY_CLIENT_ID"),
        ("RELAY_API_BASE_URL", "RELAY_API_BASE_URL"),
        ("RELAY_COUNTRY", "RELAY_COUNTRY"),
        ("RELAY_TENANT", "RELAY_TENANT"),
        ("RELAY_CLIENT_SECRET", "RELAY_CLIENT_SECRET"),
    ],
)
def test_a_missing_partner_setting_is_named(
    monkeypatch: pytest.MonkeyPatch, unset: str, named: str
) -> None:
    complete = {
        "RELAY_CLIENT_ID": "abc",
        "RELAY_API_BASE_URL": "https://project.example",
        "RELAY_COUNTRY": "dk",
        "RELAY_TENANT": "abcinsurance",
        "RELAY_CLIENT_SECRET": SECRET_VALUE,
    }
    load(monkeypatch, **complete).require_partner()
    monkeypatch.delenv(unset)
    with pytest.raises(ConfigurationError) as caught:
        load_settings().require_partner()
    message = str(caught.value)
    assert message.startswith(f"{named}: is not set")
    assert "\n" not in message


def test_private_key_jwt_needs_its_certificate(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        RELAY_CLIENT_ID="abc",
        RELAY_API_BASE_URL="https://project.example",
        RELAY_COUNTRY="dk",
        RELAY_TENANT="abcinsurance",
        RELAY_PRIVATE_KEY_FILE="/run/keys/key.pem",
    )
    assert settings.uses_private_key_jwt
    with pytest.raises(ConfigurationError, match=r"^RELAY_CERTIFICATE_FILE: is not set"):
        settings.require_partner()


# Secrets never show ---------------------------------------------------------------------------


def assert_hidden(settings: Settings, secret: str) -> None:
    assert secret not in repr(settings)
    assert secret not in str(settings)


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_is_held_but_never_shown(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    settings = load(monkeypatch, **{env_name(name): SECRET_VALUE})
    assert getattr(settings, name).get_secret_value() == SECRET_VALUE
    assert_hidden(settings, SECRET_VALUE)


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_file_is_read(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text(SECRET_VALUE + "\n", encoding="utf-8")  # editors and echo add a newline
    settings = load(monkeypatch, **{f"{env_name(name)}_FILE": str(path)})
    assert getattr(settings, name).get_secret_value() == SECRET_VALUE
    assert_hidden(settings, SECRET_VALUE)


@pytest.mark.parametrize("name", SECRETS)
def test_a_secret_and_its_file_together_are_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    path = tmp_path / name
    path.write_text("from-the-file", encoding="utf-8")
    text = refusal(
        monkeypatch, **{env_name(name): SECRET_VALUE, f"{env_name(name)}_FILE": str(path)}
    )
    assert text == f"{env_name(name)} and {env_name(name)}_FILE are both set"
    assert SECRET_VALUE not in text
    assert "from-the-file" not in text


@pytest.mark.parametrize("name", SECRETS)
def test_an_unreadable_secret_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, name: str
) -> None:
    missing = tmp_path / "nowhere"
    text = refusal(monkeypatch, **{f"{env_name(name)}_FILE": str(missing)})
    assert text.startswith(f"{env_name(name)}_FILE: cannot read {missing}")
    assert "\n" not in text


def test_the_database_password_is_never_shown(monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"postgresql://relay:{SECRET_VALUE}@db.internal:5432/insurer?sslmode=require"
    settings = load(monkeypatch, RELAY_DATABASE_URL=url)
    assert settings.database_url == url  # the real value is there for connecting
    assert_hidden(settings, SECRET_VALUE)
    assert "postgresql://relay:***@db.internal:5432/insurer" in repr(settings)


def test_a_bad_database_url_is_refused_without_its_password(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    text = refusal(monkeypatch, RELAY_DATABASE_URL=f"mysql://relay:{SECRET_VALUE}@db/insurer")
    assert text == "RELAY_DATABASE_URL: must be a postgresql:// URL"


def test_errors_never_echo_input(monkeypatch: pytest.MonkeyPatch) -> None:
    text = refusal(monkeypatch, RELAY_CLIENT_SECRET=SECRET_VALUE, RELAY_HTTP_PORT=SECRET_VALUE)
    assert text.startswith("RELAY_HTTP_PORT: ")
    assert SECRET_VALUE not in text


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("postgresql://relay@db/x", "postgresql://relay@db/x"),
        ("postgresql://relay:pw@db:5432/x", "postgresql://relay:***@db:5432/x"),
        ("postgresql://relay:p%40ss@[::1]/x", "postgresql://relay:***@[::1]/x"),
        ("postgresql:///x?host=/tmp&password=pw", "postgresql:///x?host=/tmp&password=***"),
        (
            "postgresql://db/x?password=pw&sslmode=require",
            "postgresql://db/x?password=***&sslmode=require",
        ),
    ],
)
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


# The database URL from a file ----------------------------------------------------------------

DATABASE_URL = f"postgresql://relay:{SECRET_VALUE}@db.internal:5432/insurer?sslmode=require"


def secret_file(directory: Path, name: str, text: str, mode: int = 0o600) -> Path:
    path = directory / name
    path.write_text(text, encoding="utf-8")
    path.chmod(mode)
    return path


def test_the_database_url_is_read_from_a_file(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, "database-url", DATABASE_URL + "\n")
    settings = load(monkeypatch, RELAY_DATABASE_URL_FILE=str(path))
    assert settings.database_url == DATABASE_URL
    assert settings.require_database_url() == DATABASE_URL
    assert_hidden(settings, SECRET_VALUE)
    assert settings.warnings() == []


def test_the_database_url_and_its_file_together_are_refused_naming_both(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = secret_file(tmp_path, "database-url", DATABASE_URL)
    text = refusal(monkeypatch, RELAY_DATABASE_URL=DATABASE_URL, RELAY_DATABASE_URL_FILE=str(path))
    assert text == "RELAY_DATABASE_URL and RELAY_DATABASE_URL_FILE are both set"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        (f"mysql://relay:{SECRET_VALUE}@db/insurer", "must be a postgresql:// URL"),
        (f"postgresql://relay:{SECRET_VALUE}@db:port/x", "has a port that is not a number"),
        ("", "must be a postgresql:// URL"),
    ],
)
def test_a_bad_database_url_in_a_file_is_named_without_its_password(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, url: str, message: str
) -> None:
    path = secret_file(tmp_path, "database-url", url)
    text = refusal(monkeypatch, RELAY_DATABASE_URL_FILE=str(path))
    assert text == f"RELAY_DATABASE_URL_FILE: {path}: {message}"
    assert SECRET_VALUE not in text


def test_an_unreadable_database_url_file_is_named(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere"
    text = refusal(monkeypatch, RELAY_DATABASE_URL_FILE=str(missing))
    assert text.startswith(f"RELAY_DATABASE_URL_FILE: cannot read {missing}")


# Warnings: suspicious, not wrong -------------------------------------------------------------


def test_no_warnings_without_a_reason() -> None:
    assert load_settings().warnings() == []


@pytest.mark.parametrize(
    ("name", "nearest"),
    [
        ("RELAY_CONCURENCY", "RELAY_CONCURRENCY"),
        ("RELAY_DB_URL", "RELAY_DATABASE_URL"),
        ("RELAY_LOGLEVEL", "RELAY_LOG_LEVEL"),
        ("RELAY_SHCEMA", "RELAY_SCHEMA"),
        ("RELAY_SECRET_FILE", "RELAY_CLIENT_SECRET_FILE"),
        ("RELAY_PORT", "RELAY_HTTP_PORT"),
        ("relay_max_atempts", "RELAY_MAX_ATTEMPTS"),
    ],
)
def test_an_unknown_variable_warns_naming_the_nearest_setting(
    monkeypatch: pytest.MonkeyPatch, name: str, nearest: str
) -> None:
    settings = load(monkeypatch, **{name: SECRET_VALUE})  # loads: not an error
    assert settings.warnings() == [
        f"{name}: not a setting of this relay (ignored); did you mean {nearest}?"
    ]


def test_an_unknown_variable_like_no_setting_warns_without_a_guess(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = load(monkeypatch, RELAY_FOO="1", RELAY_COLOUR_SCHEME="dark")
    assert settings.warnings() == [
        "RELAY_COLOUR_SCHEME: not a setting of this relay (ignored)",
        "RELAY_FOO: not a setting of this relay (ignored)",
    ]


def test_known_variables_in_any_case_do_not_warn(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch,
        relay_concurrency="7",
        RELAY_SCHEMA_NAME="events_out",  # read as well as RELAY_SCHEMA
        RELAY_TEST_DATABASE_URL="postgresql://postgres@127.0.0.1/postgres",  # the test suite's
    )
    assert (settings.concurrency, settings.schema_name) == (7, "events_out")
    assert settings.warnings() == []


def test_kubernetes_service_links_are_one_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    links = {
        "RELAY_SERVICE_HOST": "10.0.0.7",
        "RELAY_SERVICE_PORT": "8080",
        "RELAY_SERVICE_PORT_HTTP": "8080",
        "RELAY_PORT": "tcp://10.0.0.7:8080",
        "RELAY_PORT_8080_TCP": "tcp://10.0.0.7:8080",
        "RELAY_PORT_8080_TCP_PROTO": "tcp",
        "RELAY_PORT_8080_TCP_PORT": "8080",
        "RELAY_PORT_8080_TCP_ADDR": "10.0.0.7",
    }
    (warning,) = load(monkeypatch, **links).warnings()
    assert warning.startswith(", ".join(sorted(links)) + ": Kubernetes service links")
    assert "enableServiceLinks: false" in warning


# Each file that holds a secret, with what a valid one holds.
SECRET_FILE_VARIABLES = {
    "RELAY_DATABASE_URL_FILE": "postgresql://relay@db.internal/insurer",
    "RELAY_CLIENT_SECRET_FILE": SECRET_VALUE,
    "RELAY_PRIVATE_KEY_PASSWORD_FILE": SECRET_VALUE,
    "RELAY_PKCS12_PASSWORD_FILE": SECRET_VALUE,
    "RELAY_PRIVATE_KEY_FILE": "-----BEGIN PRIVATE KEY-----",  # not read when settings load
    "RELAY_PKCS12_FILE": "not read when settings load",
}


@pytest.mark.parametrize("variable", SECRET_FILE_VARIABLES)
@pytest.mark.parametrize("mode", [0o644, 0o604, 0o444])
def test_a_secret_file_others_can_read_warns(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, mode: int
) -> None:
    path = secret_file(tmp_path, "secret", SECRET_FILE_VARIABLES[variable], mode)
    # Kubernetes mounts each key of a secret volume as a symlink into ..data/.
    link = tmp_path / "link"
    link.symlink_to(path)
    (warning,) = load(monkeypatch, **{variable: str(link)}).warnings()
    assert warning.startswith(f"{variable}: {link} can be read by any user (mode 0{mode:o}); ")
    assert "defaultMode 0440" in warning
    assert SECRET_VALUE not in warning


@pytest.mark.parametrize("variable", SECRET_FILE_VARIABLES)
@pytest.mark.parametrize("mode", [0o600, 0o640, 0o440, 0o400])
def test_a_secret_file_only_owner_and_group_can_read_does_not_warn(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, variable: str, mode: int
) -> None:
    path = secret_file(tmp_path, "secret", SECRET_FILE_VARIABLES[variable], mode)
    assert load(monkeypatch, **{variable: str(path)}).warnings() == []


def test_public_files_do_not_warn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    certificate = secret_file(tmp_path, "certificate.pem", "-----BEGIN CERTIFICATE-----", 0o644)
    bundle = secret_file(tmp_path, "ca.pem", "-----BEGIN CERTIFICATE-----", 0o644)
    settings = load(
        monkeypatch, RELAY_CERTIFICATE_FILE=str(certificate), RELAY_CA_BUNDLE=str(bundle)
    )
    assert settings.warnings() == []


def test_a_missing_key_file_does_not_warn(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Loading the key reports it (KeyMaterialError); the settings themselves are fine.
    assert load(monkeypatch, RELAY_PRIVATE_KEY_FILE=str(tmp_path / "no")).warnings() == []
