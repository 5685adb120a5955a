"""The naive baseline: what an application developer writes by hand in an afternoon.

``python -m bench.naive --database-url URL --base-url URL`` fetches a token once, then loops:
select a page of pending rows, POST each with ``requests`` and UPDATE each row, one commit per
row, until no pending row is left. It keeps one ``requests.Session`` (keep-alive), which is
more than many hand-written relays do, so the comparison flatters the baseline. It writes no
delivery log and handles no failure: any non-2xx answer marks the row dead.
"""

from __future__ import annotations

import argparse
import json
import time

import psycopg
import requests

from bench.partner import CLIENT_ID, CLIENT_SECRET, COUNTRY, TENANT

SELECT_PAGE = """
    SELECT id, event_type, payload::text FROM outbox
    WHERE status = 'pending' ORDER BY id LIMIT %s"""
MARK_PUBLISHED = """
    UPDATE outbox SET status = 'published', attempts = attempts + 1, published_at = now(),
                      event_api_id = %s, last_http_status = %s
    WHERE id = %s"""
MARK_DEAD = """
    UPDATE outbox SET status = 'dead', attempts = attempts + 1, last_http_status = %s,
                      last_error = %s
    WHERE id = %s"""


def fetch_token(base_url: str) -> str:
    response = requests.post(
        f"{base_url}/connect/token",
        data={
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
            "scope": "events",
        },
        timeout=10,
    )
    response.raise_for_status()
    return str(response.json()["access_token"])


def relay_everything(database_url: str, base_url: str, page: int) -> int:
    token = fetch_token(base_url)
    url = f"{base_url}/api/events/v1/{COUNTRY}/external/{TENANT}/send"
    sent = 0
    with psycopg.connect(database_url, autocommit=True) as db, requests.Session() as http:
        while rows := db.execute(SELECT_PAGE, (page,)).fetchall():
            for row_id, event_type, payload in rows:
                response = http.post(
                    url,
                    data=str(payload).encode(),
                    headers={
                        "Authorization": f"Bearer {token}",
                        "Content-Type": "application/json;charset=utf-8",
                        "Event-Type": str(event_type),
                    },
                    timeout=10,
                )
                if response.ok:
                    db.execute(
                        MARK_PUBLISHED, (str(response.json()["_id"]), response.status_code, row_id)
                    )
                else:
                    db.execute(MARK_DEAD, (response.status_code, response.text[:1000], row_id))
                sent += 1
    return sent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--base-url", required=True)
    parser.add_argument("--page", type=int, default=100)
    options = parser.parse_args()
    started = time.monotonic()
    sent = relay_everything(options.database_url, options.base_url, options.page)
    print(json.dumps({"sent": sent, "seconds": time.monotonic() - started}))


if __name__ == "__main__":
    main()
