"""The schema relay's tables live in (its rule, and where the producer and consumer APIs find it
when the caller names none: ``RELAY_SCHEMA``, as the relay itself does), and the tables
``relay migrate`` puts there.

Imports nothing of the package: the producer API loads it without the daemon's dependencies.
"""

from __future__ import annotations

import os
import re

# Every table relay's migrations create, its version table last. An application whose Alembic
# shares the schema leaves these out of its autogenerate (docs/database.md): import this.
TABLES = (
    "outbox",
    "outbox_delivery",
    "relay_pause",
    "relay_admin_log",
    "inbox",
    "inbox_checkpoint",
    "relay_alembic_version",
)

SCHEMA_VARIABLE = "RELAY_SCHEMA"
DEFAULT_SCHEMA = "public"
SCHEMA_RULE = "a lower-case SQL identifier (letters, digits, _)"
_IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]{0,62}")


def schema_problem(name: str) -> str | None:
    """Why ``name`` cannot be relay's schema, or None when it can."""
    return None if _IDENTIFIER.fullmatch(name) else f"must be {SCHEMA_RULE}"


def schema_in_use(schema: str | None = None) -> str:
    """``schema`` when given, else ``RELAY_SCHEMA``, else ``public``; ValueError naming
    ``RELAY_SCHEMA`` when it is no schema name (it is put into SQL)."""
    if schema is not None:
        name, source = schema, "schema"
    else:
        name, source = os.environ.get(SCHEMA_VARIABLE, DEFAULT_SCHEMA), SCHEMA_VARIABLE
    problem = schema_problem(name)
    if problem is not None:
        raise ValueError(f"{source}: {problem}")
    return name
