"""The route rule: one rule for the producer API, the settings, the engine and the table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

from relay import routes

MIGRATION = Path(__file__).resolve().parents[2] / "migrations" / "versions" / "0002_fencing.py"


def test_the_table_constraint_uses_the_same_patterns() -> None:
    spec = importlib.util.spec_from_file_location("migration_0002", MIGRATION)
    assert spec is not None
    assert spec.loader is not None
    migration = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(migration)
    assert migration.COUNTRY_PATTERN == routes.COUNTRY_PATTERN
    assert migration.TENANT_PATTERN == routes.TENANT_PATTERN


@pytest.mark.parametrize(
    ("country", "tenant"),
    [("dk", "abcinsurance"), ("se", "abc-insurance.budget_1"), ("no", "A" * 200)],
)
def test_good_routes_pass(country: str, tenant: str) -> None:
    assert routes.route_problem(country, tenant) is None


@pytest.mark.parametrize(
    ("country", "tenant", "named"),
    [
        ("..", "abcinsurance", "country '..'"),
        ("dk", "..", "tenant '..'"),
        ("dk", ".", "tenant '.'"),
        ("dk", "a/b", "tenant 'a/b'"),
        ("dk", "a%2F..", "tenant 'a%2F..'"),
        ("DK", "abcinsurance", "country 'DK'"),
        ("dk", "", "tenant ''"),
        ("dk", None, "tenant None"),
        ("dk", "x" * 201, "(201 characters)"),
        ("dk", "abc\x00", "tenant 'abc\\x00'"),
    ],
)
def test_bad_routes_are_named_briefly(country: object, tenant: object, named: str) -> None:
    problem = routes.route_problem(country, tenant)
    assert problem is not None
    assert named in problem
    assert len(problem) < 160
