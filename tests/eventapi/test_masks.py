"""Nothing a request sent survives in what the relay keeps of the answer.

A partner may echo the request: its body (an event: personal data), its bearer token, the
client secret and assertion of a token request. Whatever form the echo takes (the body as
text, inside a JSON string, with \\u escapes, HTML-escaped, URL-encoded, cut short), no run of
eight characters of it is kept (``relay.eventapi.masks``).
"""

from __future__ import annotations

import html
import json
import re
from urllib.parse import quote_plus

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from relay.eventapi.masks import MASK, MIN_RUN, Masks, describe, json_values, storable
from relay.eventapi.outcome import classify

PERSONAL = "Jens Peter Hansen, CPR 010190-1234"
PAYLOAD = orjson.dumps(
    {
        "eventType": "case_created",
        "payloadVersion": "1.0.0",
        "correlationId": "70c6d351-016f-4c9e-b1a9-d581fc3a596b",
        "timestamp": "2026-11-28T10:31:28.251Z",
        "claimant": {"name": PERSONAL, "email": "jens.hansen@example.dk"},
    }
)
TOKEN = "eyJhbGciOiJSUzI1NiJ9.TOKENCANARY.c2lnbmF0dXJl"


def runs_of(text: str) -> set[str]:
    return {text[i : i + MIN_RUN] for i in range(len(text) - MIN_RUN + 1)}


def leaks(kept: str, *secrets: str) -> set[str]:
    """The runs of ``secrets`` that survive in ``kept``."""
    return {run for secret in secrets for run in runs_of(secret) if run in kept}


ECHOES = {
    "text body": (b"Incorrect payload: " + PAYLOAD, "text/plain"),
    "JSON field": (
        orjson.dumps({"error": "invalid_request", "message": f"bad event {PAYLOAD.decode()}"}),
        "application/json",
    ),
    "JSON field with \\u escapes": (
        json.dumps({"message": PAYLOAD.decode()}, ensure_ascii=True).encode(),
        "application/json",
    ),
    "JSON string inside text": (json.dumps(PAYLOAD.decode()).encode(), "text/plain"),
    "HTML page": (
        f"<html><body><pre>{html.escape(PAYLOAD.decode())}</pre></body></html>".encode(),
        "text/html",
    ),
    "URL-encoded": (quote_plus(PAYLOAD.decode()).encode(), "text/plain"),
    "UTF-16": (("echo: " + PAYLOAD.decode()).encode("utf-16"), "text/plain; charset=utf-16"),
    "token in error_description": (
        orjson.dumps({"error": "invalid_token", "error_description": f"token Bearer {TOKEN}"}),
        "application/json",
    ),
    "token cut short": (f"revoked: Bearer {TOKEN[:20]}".encode(), "text/plain"),
}


@pytest.mark.parametrize("name", list(ECHOES))
@pytest.mark.parametrize("status", [400, 401, 503])
def test_an_echo_of_the_request_is_masked_in_every_form(name: str, status: int) -> None:
    body, content_type = ECHOES[name]
    masks = Masks([*json_values(PAYLOAD), TOKEN])
    outcome = classify(status, {"Content-Type": content_type}, body, masks=masks)
    assert outcome.error is not None
    assert leaks(outcome.error, *json_values(PAYLOAD), TOKEN) == set()
    assert MASK in outcome.error  # it says something was there
    assert outcome.error.startswith(f"HTTP {status}: ")
    assert f"{content_type.split(';')[0]}, {len(body)} bytes" in outcome.error


def test_words_of_the_partner_that_repeat_nothing_stay_whole() -> None:
    body = orjson.dumps({"message": "Incorrect payload, missing [timestamp]", "valid": False})
    outcome = classify(400, {}, body, masks=Masks([*json_values(PAYLOAD), TOKEN]))
    assert outcome.error == (
        f"HTTP 400: Incorrect payload, missing [timestamp] (no content type, {len(body)} bytes)"
    )


def test_the_events_values_are_what_is_looked_for_whatever_its_depth() -> None:
    deep = "[" * 5000 + '{"name": "Ole Olsen Hansen", "n": 12345678901234567.89}' + "]" * 5000
    assert json_values(deep) == ["Ole Olsen Hansen", "12345678901234567.89"]
    assert json_values(PAYLOAD) == [
        "case_created",
        "70c6d351-016f-4c9e-b1a9-d581fc3a596b",
        "2026-11-28T10:31:28.251Z",
        PERSONAL,
        "jens.hansen@example.dk",
    ]


def test_a_credential_too_short_to_tell_from_words_is_not_looked_for() -> None:
    """RELAY_CLIENT_SECRET=wrong once made "unknown client or wrong secret" read
    "unknown client or *** secret"."""
    masks = Masks(["wrong"])
    assert masks.clean("unknown client or wrong secret") == "unknown client or wrong secret"


def test_a_request_too_large_to_search_has_the_answers_text_withheld() -> None:
    huge = b'{"blob": "' + b"x" * 100_000 + b'"}'
    text = describe(400, {"Content-Type": "text/plain"}, b"echo", None, Masks([huge]))
    assert text == (
        "HTTP 400: [masked] (text/plain, 4 bytes, its text withheld: the request was too large "
        "to check it against)"
    )
    assert "unusual" in describe(400, {"Content-Type": PERSONAL}, b"", None, Masks())


def test_a_kept_reason_is_one_line() -> None:
    assert Masks().clean("first line\nsecond\tline") == "first line second line"


@given(
    secret=st.text(min_size=MIN_RUN, max_size=60),
    before=st.text(max_size=40),
    after=st.text(max_size=40),
    cut=st.integers(min_value=0, max_value=30),
    form=st.sampled_from(["raw", "json", "ascii", "html", "url"]),
)
def test_no_run_of_a_secret_survives_any_echo(
    secret: str, before: str, after: str, cut: int, form: str
) -> None:
    echoed = {
        "raw": secret,
        "json": orjson.dumps(secret).decode()[1:-1],
        "ascii": json.dumps(secret)[1:-1],
        "html": html.escape(secret),
        "url": quote_plus(secret),
    }[form][cut:]
    kept = Masks([secret]).clean(before + echoed + after, limit=10_000)
    assert leaks(kept, secret, echoed) <= leaks(before + after, secret, echoed) | leaks(
        MASK, secret, echoed
    )


@given(st.text(), st.integers(min_value=0, max_value=50))
def test_storable_takes_out_exactly_what_a_column_and_a_terminal_refuse(
    text: str, limit: int
) -> None:
    """The quick path for printable text gives what the full cleaning gives."""
    clean = re.sub("[\ud800-\udfff]", "\ufffd", re.sub("[\x00-\x08\x0b-\x1f\x7f]", "", text))
    expected = clean if len(clean) <= limit else (clean[: limit - 1] + "\u2026" if limit else "")
    assert storable(text, limit) == expected
