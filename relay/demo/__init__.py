"""``relay demo``: the whole relay end to end on one machine. A tool: nothing in the product
imports it.

Its parts: ``run`` (the orchestration), ``database`` (the embedded PostgreSQL or the one of
RELAY_DATABASE_URL), ``events`` (a realistic mix of events to publish), ``receiving`` (the
events the emulator sends, the consumer that processes them, the inbox judged against the
emulator's streams), ``state`` (what one run knows) and ``display`` (the live progress and
the summary).
"""

from relay.demo.run import run_demo, stop

__all__ = ["run_demo", "stop"]
