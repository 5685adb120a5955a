"""The one rule for a route: the country and tenant that name a publish URL.

A row's ``country`` and ``tenant`` (or ``RELAY_COUNTRY`` / ``RELAY_TENANT`` for rows that leave
them ``NULL``) become path segments of ``/api/events/v1/{country}/external/{tenant}/send``. The
producer API refuses a bad value, the settings refuse a bad default, the engine dead-letters a
row that carries one, and migration 0002 puts the same patterns in a ``CHECK`` constraint (a test
keeps the copies equal). No value that passes can be ``.`` or ``..`` or hold a ``/``, so no row
can steer a request, with the bearer token, to another path.

This module imports nothing from the rest of the package.
"""

from __future__ import annotations

import re

# PostgreSQL's regular expressions read these patterns the same way Python's do.
COUNTRY_PATTERN = r"^[a-z]{2}$"
TENANT_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,199}$"
COUNTRY_RULE = "a lower-case two-letter code such as dk"
TENANT_RULE = "1-200 letters, digits, '.', '_' or '-', starting with a letter or digit"

_COUNTRY = re.compile(COUNTRY_PATTERN)
_TENANT = re.compile(TENANT_PATTERN)
# How much of a refused value a message quotes: a tenant can be any length in a table.
_QUOTED = 40


def _quote(value: object) -> str:
    text = repr(value)
    return text if len(text) <= _QUOTED else f"{text[:_QUOTED]}... ({len(str(value))} characters)"


def country_problem(country: object) -> str | None:
    """Why ``country`` cannot name a route, or None when it can."""
    if isinstance(country, str) and _COUNTRY.fullmatch(country):
        return None
    return f"country {_quote(country)} is not {COUNTRY_RULE}"


def tenant_problem(tenant: object) -> str | None:
    """Why ``tenant`` cannot name a route, or None when it can."""
    if isinstance(tenant, str) and _TENANT.fullmatch(tenant):
        return None
    return f"tenant {_quote(tenant)} is not {TENANT_RULE}"


def route_problem(country: object, tenant: object) -> str | None:
    """Why (country, tenant) cannot name a publish URL, or None when it can."""
    return country_problem(country) or tenant_problem(tenant)


def route_name(country: str, tenant: str) -> str:
    """``dk/abcinsurance``: how pauses, metrics and logs name a route."""
    return f"{country}/{tenant}"
