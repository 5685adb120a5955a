"""What a schema holds, as comparable data: for tests that migrate, downgrade and compare."""

from __future__ import annotations

from typing import Any

import psycopg

from relay.schema import VERSION_TABLE

_SNAPSHOT_QUERIES = {
    "columns": """
        SELECT table_name, column_name, ordinal_position, data_type, is_nullable,
               column_default, is_identity, identity_generation
        FROM information_schema.columns WHERE table_schema = %(schema)s""",
    "constraints": """
        SELECT c.relname, k.conname, pg_get_constraintdef(k.oid)
        FROM pg_constraint k JOIN pg_class c ON c.oid = k.conrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = %(schema)s""",
    "indexes": """
        SELECT tablename, indexname, indexdef FROM pg_indexes WHERE schemaname = %(schema)s""",
    "triggers": """
        SELECT c.relname, t.tgname, pg_get_triggerdef(t.oid)
        FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s AND NOT t.tgisinternal""",
    "functions": """
        SELECT p.proname, pg_get_function_identity_arguments(p.oid), p.prosrc
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace
        WHERE n.nspname = %(schema)s""",
    "relations": """
        SELECT c.relname, c.relkind, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = %(schema)s""",
}


def schema_snapshot(url: str, schema: str = "public") -> dict[str, list[tuple[Any, ...]]]:
    """What a migration leaves in a schema, from the catalogue: tables and columns, constraints,
    indexes, triggers, functions, sequences, comments and relay's revision."""
    with psycopg.connect(url) as connection:
        snapshot = {
            name: sorted(connection.execute(query, {"schema": schema}).fetchall(), key=repr)
            for name, query in _SNAPSHOT_QUERIES.items()
        }
        exists = connection.execute(
            "SELECT to_regclass(%s) IS NOT NULL", (f'"{schema}".{VERSION_TABLE}',)
        ).fetchone()
        if exists and exists[0]:
            revisions = connection.execute(f'SELECT version_num FROM "{schema}".{VERSION_TABLE}')
            snapshot["revision"] = revisions.fetchall()
    return snapshot


def relations(snapshot: dict[str, list[tuple[Any, ...]]]) -> set[str]:
    return {row[0] for row in snapshot["relations"]}
