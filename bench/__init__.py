"""The benchmark suite: ``python -m bench.suite`` (see docs/benchmarks.md).

Every benchmark runs the relay, the emulated partner and the load generators as separate
processes, so each one's CPU time and peak memory can be measured and no two share an event
loop. PostgreSQL is the server named by ``BENCH_DATABASE_URL`` (default: 127.0.0.1:5432).
"""
