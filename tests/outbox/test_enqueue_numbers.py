"""``relay enqueue --payload`` keeps JSON numbers exactly as typed, as the producer API does."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import psycopg

from tests.helpers.commands import minimal_environment as environment

RELAY = str(Path(sys.executable).with_name("relay"))


def test_enqueue_keeps_numbers_digit_for_digit(database_url: str, tmp_path: Path) -> None:
    numbers = '"amount": 12345678901234567.89, "rate": 0.1, "count": 12345678901234567890'
    typed = '{"payment": {' + numbers + "}}"
    from_file = tmp_path / "event.json"
    from_file.write_text(typed, encoding="utf-8")
    env = environment(RELAY_DATABASE_URL=database_url)
    ids = []
    for payload in (typed, f"@{from_file}"):
        run = subprocess.run(
            [RELAY, "enqueue", "payment_status_updated", "--payload", payload],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert (run.returncode, run.stderr) == (0, ""), run
        ids.append(int(run.stdout))
    with psycopg.connect(database_url) as connection:
        for row_id in ids:
            row = connection.execute(
                "SELECT payload::text, payload->'payment'->>'amount' FROM outbox WHERE id = %s",
                (row_id,),
            ).fetchone()
            assert row is not None
            text, amount = row
            assert amount == "12345678901234567.89"
            assert '"amount": 12345678901234567.89' in text
            assert '"rate": 0.1' in text
            assert '"count": 12345678901234567890' in text
            assert json.loads(text)["payment"]["count"] == 12345678901234567890
