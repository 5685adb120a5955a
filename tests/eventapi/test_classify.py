"""The classification table, row by row, and its agreement with docs/classification.md."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import orjson
import pytest

from relay.config import Settings
from relay.eventapi.masks import storable
from relay.eventapi.outcome import (
    CLASS_DEFAULTS,
    DEFAULT_RETRY_AFTER_CAP,
    STATUS_TABLE,
    Outcome,
    OutcomeKind,
    classify,
    parse_retry_after,
)

PUBLISHED = OutcomeKind.PUBLISHED
TRANSIENT = OutcomeKind.TRANSIENT
PERMANENT = OutcomeKind.PERMANENT
CONFIGURATION = OutcomeKind.CONFIGURATION
DOC = Path(__file__).parents[2] / "docs" / "classification.md"

SPRING_MISSING_HEADER = orjson.dumps(
    {
        "timestamp": "2017-05-05T11:32:03.535+0000",
        "status": 400,
        "error": "Bad Request",
        "exception": "org.springframework.web.bind.ServletRequestBindingException",
        "message": "Missing request header 'Event-Type' for method parameter of type String",
        "path": "/api/events/v1/dk/external/abcinsurance/send",
    }
)
INVALID_PAYLOAD = b'{"message": "Incorrect payload, missing [timestamp]", "valid": false}'
INSUFFICIENT_SCOPE = (
    b'{"error": "insufficient_scope", "error_description": '
    b'"Insufficient scope for this resource", "scope": "events"}'
)
UNAUTHORIZED = (
    b'{"error": "unauthorized", "error_description": '
    b'"Full authentication is required to access this resource"}'
)

# (status, body, kind, error_class): one line per row of the documented table.
ROWS: list[tuple[int, bytes, OutcomeKind, str]] = [
    (201, b'{"_id": 1}', PUBLISHED, "created"),
    (201, b'{"_id": "_122047"}', PUBLISHED, "created"),
    (200, b'{"_id": 7}', PUBLISHED, "http_200"),
    (202, b'{"_id": 8}', PUBLISHED, "http_202"),
    (201, b"{}", TRANSIENT, "bad_response"),
    (201, b'{"_id": null}', TRANSIENT, "bad_response"),
    (201, b'{"_id": true}', TRANSIENT, "bad_response"),
    (201, b"<html>ok</html>", TRANSIENT, "bad_response"),
    (200, b"", TRANSIENT, "bad_response"),
    (202, b'{"status": "queued"}', TRANSIENT, "bad_response"),
    (204, b"", TRANSIENT, "http_204"),
    (400, INVALID_PAYLOAD, PERMANENT, "invalid_payload"),
    (400, SPRING_MISSING_HEADER, PERMANENT, "missing_header"),
    (400, b'{"message": "nope"}', PERMANENT, "http_400"),
    (400, b"not json", PERMANENT, "http_400"),
    (401, UNAUTHORIZED, CONFIGURATION, "token_not_accepted"),
    (403, INSUFFICIENT_SCOPE, CONFIGURATION, "http_403"),
    (404, b"", CONFIGURATION, "http_404"),
    (405, b"", PERMANENT, "http_405"),
    (409, b"", PERMANENT, "http_409"),
    (410, b"", PERMANENT, "http_410"),
    (413, b"", PERMANENT, "http_413"),
    (415, b"", PERMANENT, "http_415"),
    (422, b"", PERMANENT, "http_422"),
    (408, b"", TRANSIENT, "http_408"),
    (425, b"", TRANSIENT, "http_425"),
    (429, b"", TRANSIENT, "http_429"),
    (500, b"", TRANSIENT, "http_500"),
    (502, b"<html>Bad Gateway</html>", TRANSIENT, "http_502"),
    (503, b"", TRANSIENT, "http_503"),
    (504, b"", TRANSIENT, "http_504"),
    (418, b"", PERMANENT, "http_418"),
    (451, b"", PERMANENT, "http_451"),
    (507, b"", TRANSIENT, "http_507"),
    (599, b"", TRANSIENT, "http_599"),
    (102, b"", TRANSIENT, "http_102"),
    (301, b"", CONFIGURATION, "redirect"),
    (308, b"", CONFIGURATION, "redirect"),
]


@pytest.mark.parametrize(("status", "body", "kind", "error_class"), ROWS)
def test_row(status: int, body: bytes, kind: OutcomeKind, error_class: str) -> None:
    outcome = classify(status, {}, body)
    assert (outcome.kind, outcome.error_class, outcome.http_status) == (kind, error_class, status)
    if kind is PUBLISHED:
        assert outcome.event_api_id is not None
        assert outcome.error is None
    else:
        assert outcome.event_api_id is None
        assert outcome.error is not None
        assert outcome.error.startswith(f"HTTP {status}")


@pytest.mark.parametrize(("status", "body", "kind", "error_class"), ROWS)
def test_no_answer_of_the_api_concerns_all_routes(
    status: int, body: bytes, kind: OutcomeKind, error_class: str
) -> None:
    # 401 after a fresh token, 403, 404 and redirects are the route's refusal: the route is
    # paused and probed; only the token endpoint (and TLS trust) concern every route.
    assert classify(status, {}, body).for_all_routes is False


def test_every_status_in_the_code_has_a_row() -> None:
    tested = {status for status, *_ in ROWS}
    assert set(STATUS_TABLE) <= tested
    assert {klass for klass in CLASS_DEFAULTS} <= {status // 100 for status in tested}


def test_the_doc_table_agrees_with_the_code() -> None:
    documented = re.findall(r"^\| (\d{3}) \| (\w+) \| `(\w+)` \|", DOC.read_text(), re.M)
    assert {int(status) for status, *_ in documented} >= set(STATUS_TABLE) - {400}
    for status, kind, error_class in documented:
        outcome = classify(int(status), {}, b'{"_id": 1}' if status.startswith("2") else b"")
        assert (outcome.kind.value, outcome.error_class) == (kind, error_class), status


# Error classes the publisher gives besides the status table's http_NNN.
LIVE_CLASSES = {
    "created",
    "bad_response",
    "invalid_payload",
    "missing_header",
    "token_not_accepted",
    "redirect",
    "invalid_event_type",
    "invalid_route",
    "timeout",
    "connection",
    "tls_certificate",
    "unexpected",
    "token_unavailable",
    "token_rejected",
}
SOURCE = Path(__file__).parents[2] / "relay" / "eventapi" / "publisher.py"


def test_every_error_class_in_the_code_is_documented() -> None:
    source = SOURCE.read_text()
    constructed = set(re.findall(r'Outcome\(\s*\w+,\s*"(\w+)"', source))
    returned = set(re.findall(r'^\s+return "([a-z_]+)"$', source, re.M)) - {"unknown"}
    assert constructed | returned <= LIVE_CLASSES
    doc = DOC.read_text()
    for error_class in LIVE_CLASSES:
        assert f"`{error_class}`" in doc, error_class


def test_the_doc_states_the_retry_after_cap_and_how_partner_text_is_kept() -> None:
    doc = DOC.read_text()
    assert "RELAY_RETRY_AFTER_CAP" in doc
    assert "never logged" in doc
    assert "storable()" in doc


def test_published_id_is_kept_as_text() -> None:
    assert classify(201, {}, b'{"_id": 12345678901234567890}').event_api_id == (
        "12345678901234567890"
    )
    assert classify(201, {}, b'{"_id": "_122047"}').event_api_id == "_122047"


def test_a_published_id_is_storable() -> None:
    assert classify(201, {}, b'{"_id": "_12\\u00002"}').event_api_id == "_122"
    long_id = classify(201, {}, orjson.dumps({"_id": "x" * 5000})).event_api_id
    assert long_id is not None
    assert len(long_id) == 200


@pytest.mark.parametrize("charset", ["idna", "base64", "no-such-charset", "rot13"])
def test_a_body_in_a_charset_that_cannot_decode_it_is_read_as_utf8(charset: str) -> None:
    headers = {"Content-Type": f"text/html; charset={charset}"}
    assert classify(502, headers, "<p>Bad Gateway \u00e6</p>".encode()).error == (
        "HTTP 502: <p>Bad Gateway \u00e6</p> (text/html, 21 bytes)"
    )


def test_messages_carry_the_partners_words() -> None:
    assert classify(400, {}, INVALID_PAYLOAD).error == (
        f"HTTP 400: Incorrect payload, missing [timestamp] "
        f"(no content type, {len(INVALID_PAYLOAD)} bytes)"
    )
    forbidden = classify(403, {}, INSUFFICIENT_SCOPE).error
    assert forbidden is not None
    assert "insufficient_scope" in forbidden
    assert "events" in forbidden
    moved = classify(301, {"Location": "https://example.test/api"}, b"").error
    assert moved is not None
    assert "redirected to https://example.test/api" in moved


def test_each_field_kept_is_at_most_200_characters() -> None:
    outcome = classify(400, {}, orjson.dumps({"message": "x" * 5000, "valid": False}))
    assert outcome.error is not None
    assert outcome.error.count("x") == 199  # and an ellipsis
    assert outcome.error.endswith("\u2026 (no content type, 5028 bytes)")


@pytest.mark.parametrize("status", [408, 425, 429, 500, 502, 503, 504, 599])
def test_transient_answers_honour_retry_after_seconds(status: int) -> None:
    outcome = classify(status, {"Retry-After": "120"}, b"")
    assert outcome.retry_after == timedelta(seconds=120)


@pytest.mark.parametrize("status", [400, 403, 404, 418])
def test_other_answers_ignore_retry_after(status: int) -> None:
    assert classify(status, {"Retry-After": "120"}, b"").retry_after is None


def test_retry_after_http_date_is_measured_against_the_date_header() -> None:
    headers = {
        "Retry-After": "Wed, 21 Oct 2015 07:28:30 GMT",
        "Date": "Wed, 21 Oct 2015 07:28:00 GMT",
    }
    assert classify(503, headers, b"").retry_after == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": ""}, None),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, None),
        ({"Retry-After": "0"}, timedelta(0)),
        ({"Retry-After": "299"}, timedelta(seconds=299)),
        ({"Retry-After": "99999999"}, timedelta(minutes=5)),
        ({"Retry-After": "99999999999999999999"}, timedelta(minutes=5)),
        ({"Retry-After": "9" * 5000}, timedelta(minutes=5)),  # more digits than int() takes
        ({"Retry-After": "0" * 30 + "7"}, timedelta(seconds=7)),
        ({"Retry-After": "\u00b2"}, None),  # str.isdigit() says yes, int() says no
        ({"Retry-After": "\uff11\uff12"}, None),  # full-width digits are not delta-seconds
        ({"Retry-After": "1.5"}, None),
        ({"Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT"}, timedelta(minutes=5)),
        (
            {
                "Retry-After": "Fri, 31 Dec 9999 23:59:59 GMT",
                "Date": "Mon, 01 Jan 0001 00:00:00 GMT",
            },
            timedelta(minutes=5),
        ),
        ({"Retry-After": "Mon, 01 Jan 1900 00:00:00 GMT"}, timedelta(0)),
        ({"Retry-After": "Mon, 01 Jan 99999 00:00:00 GMT"}, None),
        ({"Retry-After": "Mon, 01 Jan 2024 00:00:00 +9999"}, None),
        ({"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}, timedelta(0)),  # in the past
        (
            {
                "Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT",
                "Date": "Wed, 21 Oct 2015 07:29:00 GMT",
            },
            timedelta(0),
        ),
    ],
)
def test_parse_retry_after(headers: dict[str, str], expected: timedelta | None) -> None:
    assert parse_retry_after(headers) == expected


def test_the_default_retry_after_cap_is_the_settings_default() -> None:
    assert DEFAULT_RETRY_AFTER_CAP == Settings().retry_after_cap == timedelta(minutes=5)


@pytest.mark.parametrize(
    "value", ["99999999999999999999", "Fri, 31 Dec 9999 23:59:59 GMT", "31", "9" * 5000]
)
def test_retry_after_is_honoured_up_to_the_cap(value: str) -> None:
    cap = timedelta(seconds=30)
    outcome = classify(503, {"Retry-After": value}, b"", retry_after_cap=cap)
    assert outcome.retry_after == cap
    assert parse_retry_after({"Retry-After": value}, cap) == cap


def test_outcome_shape() -> None:
    outcome = Outcome(OutcomeKind.TRANSIENT, "timeout")
    assert (outcome.http_status, outcome.event_api_id, outcome.retry_after) == (None, None, None)
    assert outcome.latency == 0.0
    assert outcome.for_all_routes is False
    assert OutcomeKind("configuration") is CONFIGURATION
    with pytest.raises(AttributeError):
        outcome.kind = PUBLISHED  # type: ignore[misc]


# Partner text as it is stored --------------------------------------------------------------


def test_storable_removes_control_characters_but_tab_and_newline() -> None:
    assert storable("a\x00b\x01c\td\ne\rf\x1bg\x7fh") == "abc\td\nefgh"


def test_storable_replaces_what_cannot_be_encoded() -> None:
    undecodable = b"bad \xff\xfe bytes".decode("utf-8", errors="surrogateescape")
    assert storable(undecodable) == "bad \ufffd\ufffd bytes"
    assert storable("lone \ud800 surrogate") == "lone \ufffd surrogate"
    storable(undecodable).encode("utf-8")  # nothing left that UTF-8 (or PostgreSQL) refuses


def test_storable_bounds_the_length_with_a_marker() -> None:
    assert storable("x" * 5000) == "x" * 999 + "\u2026"
    assert storable("abcdef", limit=4) == "abc\u2026"
    assert storable("abcd", limit=4) == "abcd"
    assert storable("\x00" * 5000) == ""


def test_storable_is_idempotent() -> None:
    text = "\x00\u2026" + "y" * 2000 + "\udc80"
    assert storable(storable(text)) == storable(text)


def test_every_outcome_error_is_storable() -> None:
    outcome = Outcome(OutcomeKind.PERMANENT, "http_400", error="a\x00b" + "c" * 2000)
    assert outcome.error == storable("a\x00b" + "c" * 2000)
    assert Outcome(OutcomeKind.TRANSIENT, "timeout").error is None


def test_a_utf16_body_is_read_in_its_charset() -> None:
    body = "<html>Service Unavailable</html>".encode("utf-16")
    outcome = classify(503, {"Content-Type": "text/html; charset=utf-16"}, body)
    assert outcome.error == "HTTP 503: <html>Service Unavailable</html> (text/html, 66 bytes)"
    without_charset = classify(503, {"Content-Type": "text/html"}, body).error
    assert without_charset is not None
    assert "\x00" not in without_charset
    assert "Service Unavailable" in without_charset


def test_a_nul_escaped_in_json_does_not_survive() -> None:
    outcome = classify(400, {}, b'{"message": "bad\\u0000value", "valid": false}')
    assert (outcome.error_class, outcome.error) == (
        "invalid_payload",
        "HTTP 400: badvalue (no content type, 45 bytes)",
    )
