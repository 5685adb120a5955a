"""Count the SQL statements and round trips a relay process sends, by name.

``BENCH_COUNTS_FILE=out.json python -m bench.counting run --drain`` is ``relay run --drain``
with asyncpg's ``Connection`` query methods wrapped to count each call (and forward it
unchanged); the counts are written to ``BENCH_COUNTS_FILE`` when the command ends.

Every call is one round trip to the server. Besides the relay's own statements this sees the
query asyncpg's pool sends when a connection goes back to the pool (``reset``) and the
listener's heartbeat. Not counted: one Parse round trip per statement text per connection the
first time it runs (asyncpg caches prepared statements).
"""

from __future__ import annotations

import functools
import json
import os
import sys
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from asyncpg.connection import Connection

from relay.outbox.queries import Queries

METHODS = ("execute", "executemany", "fetch", "fetchrow", "fetchval")


def statement_names(schema: str) -> dict[str, str]:
    """Each statement text in ``relay.outbox.queries`` -> its name (``claim``, ``record``, ...)."""
    queries = Queries(schema)
    names = [name for name in dir(Queries) if isinstance(getattr(Queries, name), property)]
    return {getattr(queries, name): name for name in names}


class StatementCounter:
    """Counts calls by statement name while installed on asyncpg's Connection class."""

    def __init__(self, schema: str = "public") -> None:
        self.names = statement_names(schema)
        self.calls: Counter[str] = Counter()
        self._originals: dict[str, Callable[..., Awaitable[Any]]] = {}

    def name(self, connection: Connection, query: str) -> str:
        if query in self.names:
            return self.names[query]
        if query == connection.get_reset_query():
            return "pool_reset"
        if query.strip() == "SELECT 1":
            return "listener_heartbeat"
        return "other"

    def _wrap(self, original: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        counter = self

        @functools.wraps(original)
        async def counted(connection: Connection, query: str, *args: Any, **kwargs: Any) -> Any:
            counter.calls[counter.name(connection, query)] += 1
            return await original(connection, query, *args, **kwargs)

        return counted

    def install(self) -> None:
        for method in METHODS:
            original = getattr(Connection, method)
            self._originals[method] = original
            setattr(Connection, method, self._wrap(original))

    def uninstall(self) -> None:
        for method, original in self._originals.items():
            setattr(Connection, method, original)
        self._originals.clear()

    def statements(self) -> int:
        """The relay's own statements: everything but the pool's reset query."""
        return sum(n for name, n in self.calls.items() if name != "pool_reset")

    def round_trips(self) -> int:
        return sum(self.calls.values())


def main() -> None:
    from relay.cli import main as relay_main

    counter = StatementCounter(os.environ.get("RELAY_SCHEMA", "public"))
    counter.install()
    try:
        relay_main(sys.argv[1:])
    finally:
        path = os.environ.get("BENCH_COUNTS_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as output:
                json.dump(dict(counter.calls), output)


if __name__ == "__main__":
    main()
