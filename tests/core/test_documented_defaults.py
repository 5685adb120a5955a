"""Every default the documentation states is the code's: docs/configuration.md, the README's
table of the main settings, and the commented lines of deploy/systemd/relay.env.example (which
say they show the default). A default changed in relay/config.py and not in the docs fails here.
"""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from relay.config import Settings, env_name, parse_duration, parse_retention

ROOT = Path(__file__).resolve().parents[2]
TABLES = [ROOT / "docs" / "configuration.md", ROOT / "README.md"]
ENV_EXAMPLE = ROOT / "deploy" / "systemd" / "relay.env.example"
# A table row whose default cell is one literal: | `RELAY_X` | `value` | ...
ROW = re.compile(r"^\| `(RELAY_[A-Z0-9_]+)` \| `([^`]*)` \|", re.MULTILINE)
# A commented setting of the example: #RELAY_X=value
COMMENTED = re.compile(r"^#(RELAY_[A-Z0-9_]+)=(.+)$", re.MULTILINE)


def fields_by_variable() -> dict[str, str]:
    variables = {}
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias
        variables[alias if isinstance(alias, str) else env_name(name)] = name
    return variables


def parsed(field: str, text: str) -> object:
    """The documented text as the setting reads it."""
    default = Settings.model_fields[field].default
    if field == "retention":
        return parse_retention(text)
    if isinstance(default, timedelta):
        return parse_duration(text)
    if isinstance(default, bool):
        return {"true": True, "false": False}[text]
    if isinstance(default, int):
        return int(text)
    return text


def documented() -> list[tuple[str, str, str]]:
    """(where, variable, documented default) for every literal default the docs state."""
    found = []
    for path in TABLES:
        for variable, value in ROW.findall(path.read_text(encoding="utf-8")):
            found.append((path.name, variable, value))
    for variable, value in COMMENTED.findall(ENV_EXAMPLE.read_text(encoding="utf-8")):
        field = fields_by_variable().get(variable)
        # A commented example value of a setting that has no default (a path, a URL) is an
        # example, not a default.
        if field is not None and Settings.model_fields[field].default is not None:
            found.append((ENV_EXAMPLE.name, variable, value))
    return found


CASES = documented()


def test_the_docs_state_the_defaults_of_the_settings_that_tune_delivery() -> None:
    stated = {variable for where, variable, _ in CASES if where == "configuration.md"}
    for variable in ("RELAY_LEASE", "RELAY_CIRCUIT_PAUSE", "RELAY_RETENTION", "RELAY_SCHEMA"):
        assert variable in stated


@pytest.mark.parametrize(
    ("where", "variable", "value"), CASES, ids=[f"{c[0]}:{c[1]}" for c in CASES]
)
def test_a_documented_default_is_the_codes(where: str, variable: str, value: str) -> None:
    field = fields_by_variable().get(variable)
    assert field is not None, f"{where}: {variable} is no setting"
    if Settings.model_fields[field].default_factory is not None:
        return  # computed at start (RELAY_WORKER_ID: hostname:pid); described, not a value
    default = Settings.model_fields[field].default
    assert parsed(field, value) == default, f"{where} says {variable} defaults to {value!r}"
