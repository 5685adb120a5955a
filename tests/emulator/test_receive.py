"""The emulator's receive side: per-route streams served by long polling, and its faults.

Every poll goes over a real socket on 127.0.0.1 with an aiohttp client, as the relay's would.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import aiohttp
import orjson
import pytest

from relay.emulator import Emulator
from relay.emulator import jsontext as emulator_json
from relay.emulator.receive import EVENT_TYPES, MALFORMED_ITEMS
from relay.emulator.replies import INSUFFICIENT_SCOPE, UNAUTHORIZED
from tests.helpers.partner import (
    CLIENT_ID,
    CLIENT_SECRET,
    FakeClock,
    running,
    secret_config,
    wait_for,
)
from tests.helpers.process import RELAY

DK, TENANT = "dk", "abcinsurance"
ROUTE = f"{DK}/{TENANT}"
PATH = f"/api/events/v1/{DK}/external/{TENANT}/receive"
LONG_HOLD = 30.0  # longer than any test may take: an answer before it was not the hold's end


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as session:
        yield session


async def get_token(http: aiohttp.ClientSession, emulator: Emulator, scope: str = "events") -> str:
    form = {
        "grant_type": "client_credentials",
        "scope": scope,
        "client_id": CLIENT_ID,
        "client_secret": CLIENT_SECRET,
    }
    async with http.post(emulator.token_url, data=form) as response:
        assert response.status == 200
        return str((await response.json())["access_token"])


def at(emulator: Emulator, last: str | None = None, path: str = PATH) -> str:
    """The receive URL of a position (after ``last``; the beginning for None)."""
    url = emulator.base_url + path
    return url if last is None else f"{url}?lastEventId={last}"


async def poll(
    http: aiohttp.ClientSession, url: str, token: str | None
) -> tuple[int, Any, aiohttp.ClientResponse]:
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    async with http.get(url, headers=headers) as response:
        return response.status, orjson.loads(await response.read()), response


def ids(page: dict[str, Any]) -> list[str]:
    return [item["id"] for item in page["data"]]


def last_event_id(link: str) -> str | None:
    values = parse_qs(urlsplit(link).query).get("lastEventId")
    return values[0] if values else None


async def control(
    http: aiohttp.ClientSession, emulator: Emulator, method: str, path: str, body: Any = None
) -> tuple[int, Any]:
    async with http.request(method, emulator.base_url + path, json=body) as response:
        return response.status, await response.json()


# Paging and holding ---------------------------------------------------------------------------


async def test_pages_through_250_events_in_order_by_links_next(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        fed = emulator.generate(DK, TENANT, 250)
        emulator.set_faults(receive_hold_seconds=0.05)
        token = await get_token(http, emulator)
        url, seen, sizes = at(emulator), [], []
        while True:
            status, page, response = await poll(http, url, token)
            assert status == 200
            assert response.content_type == "application/json"
            assert set(page) == {"links", "meta", "data"}
            assert page["meta"] == {}
            if not page["data"]:
                break
            sizes.append(len(page["data"]))
            seen.extend(ids(page))
            assert last_event_id(page["links"]["next"]) == page["data"][-1]["id"]
            url = page["links"]["next"]
        stats = emulator.stats()["receive"][ROUTE]
    assert sizes == [100, 100, 50]
    assert seen == [event.id for event in fed] == [f"_{n}" for n in range(1, 251)]
    assert page["links"]["next"] == at(emulator, "_250")  # the empty page repeats the position
    assert stats["fed"] == stats["handed_out"] == 250
    assert (stats["polls_answered"], stats["empty_pages"]) == (4, 1)


async def test_page_items_carry_id_type_timestamp_and_the_event(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, len(EVENT_TYPES))
        token = await get_token(http, emulator)
        _, page, _ = await poll(http, at(emulator), token)
    assert [item["type"] for item in page["data"]] == list(EVENT_TYPES)
    for item in page["data"]:
        assert set(item) == {"id", "type", "timestamp", "attributes"}
        assert item["timestamp"].endswith("Z")
        attributes = item["attributes"]
        assert attributes["eventType"] == item["type"]
        assert attributes["payloadVersion"] == "1.0.0"
        assert set(attributes["case"]) >= {"uuid", "number", "caseType"}
    changed = {item["type"] for item in page["data"] if "changedBy" in item["attributes"]}
    assert changed == {"claim_updated", "claimline_changed", "attachments_updated"}
    assert page["data"][1]["attributes"]["changes"][0] in ("CaseClosed", "CaseReopened")


async def test_a_feed_during_the_hold_answers_the_poll_at_once(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=LONG_HOLD)
        token = await get_token(http, emulator)
        held = asyncio.create_task(poll(http, at(emulator), token))
        await wait_for(lambda: emulator.stream(DK, TENANT).stats()["concurrent_polls"] == 1)
        assert not held.done()
        fed_at = time.monotonic()
        emulator.feed(DK, TENANT, [{"type": "case_created", "attributes": {"n": 1}}])
        status, page, _ = await held
        answered_after = time.monotonic() - fed_at
    assert status == 200
    assert [(item["id"], item["attributes"]) for item in page["data"]] == [("_1", {"n": 1})]
    assert answered_after < 2.0  # the feed, not the 30 s hold, ended it


async def test_a_poll_with_nothing_new_holds_then_answers_an_empty_page(
    http: aiohttp.ClientSession,
) -> None:
    hold = 0.3
    async with running() as emulator:
        emulator.generate(DK, TENANT, 3)
        emulator.set_faults(receive_hold_seconds=hold)
        token = await get_token(http, emulator)
        started = time.monotonic()
        status, page, _ = await poll(http, at(emulator, "_3"), token)
        took = time.monotonic() - started
        _, empty_stream, _ = await poll(
            http, at(emulator, path=PATH.replace(TENANT, "quiet")), token
        )
    assert (status, page["data"], page["links"]["next"]) == (200, [], at(emulator, "_3"))
    assert hold <= took < hold + 5
    assert empty_stream["data"] == []
    assert empty_stream["links"]["next"] == at(emulator, path=PATH.replace(TENANT, "quiet"))


async def test_pages_hold_at_most_the_page_size(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 10)
        emulator.set_faults(receive_page_size=7)
        token = await get_token(http, emulator)
        _, first, _ = await poll(http, at(emulator), token)
        _, second, _ = await poll(http, first["links"]["next"], token)
    assert (ids(first), ids(second)) == ([f"_{n}" for n in range(1, 8)], ["_8", "_9", "_10"])


async def test_fed_ids_need_be_neither_numbers_nor_dense(http: aiohttp.ClientSession) -> None:
    odd = ["zeta", "a/b c?&=#", "_7", "Ωmega"]
    async with running() as emulator:
        emulator.feed(DK, TENANT, [{"id": i, "type": "t", "attributes": {}} for i in odd])
        emulator.feed(DK, TENANT, [{"type": "t", "attributes": {}} for _ in range(7)])
        emulator.set_faults(receive_page_size=2)
        token = await get_token(http, emulator)
        url, seen = at(emulator), []
        for _ in range(6):
            _, page, _ = await poll(http, url, token)
            seen.extend(ids(page))
            url = page["links"]["next"]
    # Assigned ids skip one that was fed: ids stay unique.
    assert seen == [*odd, "_1", "_2", "_3", "_4", "_5", "_6", "_8"]


# Refusals ------------------------------------------------------------------------------------


@pytest.mark.parametrize("token", [None, "unknown-token"])
async def test_poll_without_a_valid_token_is_401(
    http: aiohttp.ClientSession, token: str | None
) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 1)
        status, body, response = await poll(http, at(emulator), token)
    assert (status, body) == (401, UNAUTHORIZED)
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert emulator.polls[0].outcome == "refused"


async def test_poll_with_an_expired_or_revoked_token_is_401(http: aiohttp.ClientSession) -> None:
    clock = FakeClock()
    async with running(clock=clock) as emulator:
        emulator.generate(DK, TENANT, 1)
        emulator.set_faults(token_lifetime=5)
        token = await get_token(http, emulator)
        assert (await poll(http, at(emulator), token))[0] == 200
        clock.advance(5)
        assert (await poll(http, at(emulator), token))[0] == 401
        token = await get_token(http, emulator)
        emulator.revoke_tokens()
        assert (await poll(http, at(emulator), token))[:2] == (401, UNAUTHORIZED)


async def test_poll_with_a_token_lacking_the_events_scope_is_403(
    http: aiohttp.ClientSession,
) -> None:
    config = secret_config(scopes={CLIENT_ID: frozenset({"events", "claims"})})
    async with running(config) as emulator:
        token = await get_token(http, emulator, scope="claims")
        status, body, _ = await poll(http, at(emulator), token)
    assert (status, body) == (403, INSUFFICIENT_SCOPE)


async def test_reject_tokens_refuses_polls_too(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        token = await get_token(http, emulator)
        await control(http, emulator, "POST", "/_emulator/faults", {"reject_tokens": True})
        assert (await poll(http, at(emulator), token))[:2] == (401, UNAUTHORIZED)
        emulator.set_faults(reject_tokens=False, receive_hold_seconds=0)
        assert (await poll(http, at(emulator), token))[0] == 200


async def test_an_unknown_last_event_id_is_a_spring_400(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 2)
        token = await get_token(http, emulator)
        status, body, _ = await poll(http, at(emulator, "_3"), token)
        assert (await poll(http, at(emulator, ""), token))[0] == 400
    assert status == 400
    assert set(body) == {"timestamp", "status", "error", "exception", "message", "path"}
    assert (body["status"], body["error"], body["path"]) == (400, "Bad Request", PATH)
    assert "_3" in body["message"]


async def test_a_route_outside_the_allow_list_is_404(http: aiohttp.ClientSession) -> None:
    async with running(secret_config(routes=frozenset({(DK, TENANT)}))) as emulator:
        token = await get_token(http, emulator)
        status, body, _ = await poll(http, at(emulator, path=PATH.replace(DK, "se")), token)
    assert (status, body["status"]) == (404, 404)


# Faults --------------------------------------------------------------------------------------


async def test_receive_status_for_the_next_polls_with_retry_after(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 1)
        token = await get_token(http, emulator)
        faults = {"receive_status": 503, "receive_status_next": 2, "retry_after": "2"}
        assert (await control(http, emulator, "POST", "/_emulator/faults", faults))[0] == 200
        answers = [await poll(http, at(emulator), token) for _ in range(3)]
        await control(http, emulator, "POST", "/_emulator/faults", {"receive_status": 404})
        persistent = [(await poll(http, at(emulator), token))[0] for _ in range(2)]
    assert [status for status, _, _ in answers] == [503, 503, 200]
    assert answers[0][1]["status"] == 503
    assert answers[0][2].headers["Retry-After"] == "2"
    assert persistent == [404, 404]
    assert emulator.stats()["receive"][ROUTE]["polls_refused"] == 4


async def test_receive_status_403_is_the_partners_own_body(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        token = await get_token(http, emulator)
        emulator.set_faults(receive_status=403)
        assert (await poll(http, at(emulator), token))[:2] == (403, INSUFFICIENT_SCOPE)


async def test_receive_route_status_answers_one_route_only(http: aiohttp.ClientSession) -> None:
    other = PATH.replace(TENANT, "budget")
    async with running() as emulator:
        emulator.generate(DK, TENANT, 1)
        emulator.generate(DK, "budget", 1)
        token = await get_token(http, emulator)
        faults = {"receive_route_status": {f"{DK}/budget": 404}}
        assert (await control(http, emulator, "POST", "/_emulator/faults", faults))[0] == 200
        assert (await poll(http, at(emulator, path=other), token))[0] == 404
        assert (await poll(http, at(emulator), token))[0] == 200


async def test_receive_latency_slows_the_answer(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 1)
        token = await get_token(http, emulator)
        emulator.set_faults(receive_latency_ms=150)
        started = time.monotonic()
        status, page, _ = await poll(http, at(emulator), token)
    assert (status, ids(page)) == (200, ["_1"])
    assert time.monotonic() - started >= 0.15


async def raw_get(emulator: Emulator, url: str, token: str) -> tuple[bytes, bytes]:
    """The whole of what the server sent on a fresh connection, up to its close: the head and
    the body bytes that came."""
    target = url.removeprefix(emulator.base_url)
    host = urlsplit(emulator.base_url).netloc
    reader, writer = await asyncio.open_connection(*host.split(":"))
    try:
        request = f"GET {target} HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {token}\r\n\r\n"
        writer.write(request.encode())
        async with asyncio.timeout(10):
            received = await reader.read(-1)  # until the server closes
    finally:
        writer.close()
    head, _, body = received.partition(b"\r\n\r\n")
    return head, body


async def test_receive_drop_next_cuts_the_page_mid_body(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 5)
        token = await get_token(http, emulator)
        emulator.set_faults(receive_drop_next=2)
        head, body = await raw_get(emulator, at(emulator), token)
        with pytest.raises(aiohttp.ClientPayloadError):
            await poll(http, at(emulator), token)
        status, page, _ = await poll(http, at(emulator), token)
        stats = emulator.stats()["receive"][ROUTE]
    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    headers = dict(line.split(b": ", 1) for line in head.split(b"\r\n")[1:])
    assert 0 < len(body) < int(headers[b"Content-Length"])
    assert body.startswith(b'{"links":')
    assert (status, ids(page)) == (200, ["_1", "_2", "_3", "_4", "_5"])
    assert (stats["polls_dropped"], stats["handed_out"]) == (2, 5)
    assert [poll.outcome for poll in emulator.polls] == ["dropped", "dropped", "page"]


async def test_receive_malformed_next_adds_bad_items_to_one_page(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 4)
        emulator.set_faults(receive_page_size=2)
        token = await get_token(http, emulator)
        await control(http, emulator, "POST", "/_emulator/faults", {"receive_malformed_next": 1})
        _, bad, _ = await poll(http, at(emulator), token)
        _, good, _ = await poll(http, bad["links"]["next"], token)
        stats = emulator.stats()["receive"][ROUTE]
    assert [orjson.dumps(item) for item in bad["data"][2:]] == list(MALFORMED_ITEMS)
    assert bad["data"][2] == 42
    assert "id" not in bad["data"][3]
    assert [item["id"] for item in bad["data"][:2]] == ["_1", "_2"]
    assert last_event_id(bad["links"]["next"]) == "_2"
    assert ids(good) == ["_3", "_4"]
    assert stats["handed_out"] == 4


async def test_receive_foreign_next_points_one_link_elsewhere(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 2)
        emulator.set_faults(receive_page_size=1)
        token = await get_token(http, emulator)
        emulator.set_faults(receive_foreign_next=1)
        _, first, _ = await poll(http, at(emulator), token)
        _, second, _ = await poll(http, at(emulator, "_1"), token)
        emulator.set_faults(
            receive_foreign_next=1, receive_foreign_origin="https://evil.example:8443"
        )
        _, third, _ = await poll(http, at(emulator, "_1"), token)
    assert first["links"]["next"] == f"http://elsewhere.example{PATH}?lastEventId=_1"
    assert second["links"]["next"] == at(emulator, "_2")
    assert third["links"]["next"] == f"https://evil.example:8443{PATH}?lastEventId=_2"


@pytest.mark.parametrize(
    ("form", "link"),
    [
        ("path", f"{PATH}?lastEventId=_2"),
        ("relative", "receive?lastEventId=_2"),
        ("query", "?lastEventId=_2"),
    ],
)
async def test_relative_links_resolve_against_the_url_asked(
    http: aiohttp.ClientSession, form: str, link: str
) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 3)
        emulator.set_faults(receive_page_size=2, receive_link_form=form)
        token = await get_token(http, emulator)
        asked = at(emulator)
        _, first, _ = await poll(http, asked, token)
        resolved = urljoin(asked, first["links"]["next"])
        _, second, _ = await poll(http, resolved, token)
    assert first["links"]["next"] == link
    assert resolved == at(emulator, "_2")
    assert ids(second) == ["_3"]


async def test_relative_link_of_an_empty_page_at_the_beginning(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=0, receive_link_form="query")
        token = await get_token(http, emulator)
        _, page, _ = await poll(http, at(emulator), token)
    assert page["links"]["next"] == "receive"
    assert urljoin(at(emulator), page["links"]["next"]) == at(emulator)


@pytest.mark.parametrize(
    ("faults", "named"),
    [
        ({"receive_link_form": "sideways"}, "receive_link_form"),
        ({"receive_page_size": 0}, "receive_page_size"),
        ({"receive_hold_seconds": -1}, "receive_hold_seconds"),
        ({"receive_drop_next": True}, "receive_drop_next"),
        ({"receive_status": 1000}, "receive_status"),
        ({"receive_status_next": 0}, "receive_status_next"),
        ({"receive_foreign_origin": "elsewhere.example"}, "receive_foreign_origin"),
        ({"receive_route_status": {"dk/x": "404"}}, "receive_route_status"),
    ],
)
async def test_bad_receive_faults_are_refused(
    http: aiohttp.ClientSession, faults: dict[str, Any], named: str
) -> None:
    async with running() as emulator:
        status, body = await control(http, emulator, "POST", "/_emulator/faults", faults)
    assert status == 400
    assert named in body["error"]


# Concurrency, abandoned polls, reset and stop --------------------------------------------------


async def test_two_clients_polling_one_route_at_once_are_counted(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator, aiohttp.ClientSession() as other:
        emulator.set_faults(receive_hold_seconds=LONG_HOLD)
        token = await get_token(http, emulator)
        stream = emulator.stream(DK, TENANT)
        polls = [
            asyncio.create_task(poll(session, at(emulator), token)) for session in (http, other)
        ]
        await wait_for(lambda: stream.stats()["concurrent_polls"] == 2)
        _, during = await control(http, emulator, "GET", "/_emulator/receive")
        emulator.generate(DK, TENANT, 3)
        pages = [page for _, page, _ in await asyncio.gather(*polls)]
        _, after = await control(http, emulator, "GET", "/_emulator/receive")
    assert (during[ROUTE]["concurrent_polls"], during[ROUTE]["max_concurrent_polls"]) == (2, 2)
    assert [ids(page) for page in pages] == [["_1", "_2", "_3"]] * 2
    assert after[ROUTE]["concurrent_polls"] == 0
    assert after[ROUTE]["handed_out"] == 6


async def test_polls_one_after_another_are_never_concurrent(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 3)
        emulator.set_faults(receive_page_size=1, receive_hold_seconds=0)
        token = await get_token(http, emulator)
        url = at(emulator)
        for _ in range(4):
            url = (await poll(http, url, token))[1]["links"]["next"]
    assert emulator.stats()["receive"][ROUTE]["max_concurrent_polls"] == 1


async def test_a_poll_whose_client_left_is_neither_concurrent_nor_handed_events(
    http: aiohttp.ClientSession,
) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=LONG_HOLD)
        token = await get_token(http, emulator)
        stream = emulator.stream(DK, TENANT)
        async with aiohttp.ClientSession() as leaving:
            abandoned = asyncio.create_task(poll(leaving, at(emulator), token))
            await wait_for(lambda: stream.stats()["concurrent_polls"] == 1)
            abandoned.cancel()
        await wait_for(lambda: stream.stats()["concurrent_polls"] == 0)
        successor = asyncio.create_task(poll(http, at(emulator), token))
        await wait_for(lambda: stream.stats()["concurrent_polls"] == 1)
        emulator.generate(DK, TENANT, 2)
        _, page, _ = await successor
        await wait_for(lambda: stream.stats()["polls_abandoned"] == 1)
        stats = stream.stats()
    assert ids(page) == ["_1", "_2"]
    assert (stats["max_concurrent_polls"], stats["handed_out"]) == (1, 2)


async def test_reset_clears_the_streams_and_ends_their_holds(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 2)
        emulator.set_faults(receive_hold_seconds=LONG_HOLD)
        token = await get_token(http, emulator)
        held = asyncio.create_task(poll(http, at(emulator, "_2"), token))
        await wait_for(lambda: emulator.stream(DK, TENANT).stats()["concurrent_polls"] == 1)
        status, stats = await control(http, emulator, "POST", "/_emulator/reset")
        _, page, _ = await held
        token = await get_token(http, emulator)  # reset forgot the tokens too
        unknown, _, _ = await poll(http, at(emulator, "_1"), token)
    assert (status, stats["receive"]) == (200, {})
    assert (page["data"], page["links"]["next"]) == ([], at(emulator, "_2"))
    assert unknown == 400
    assert emulator.polls[-1].last_event_id == "_1"


async def test_stopping_ends_a_held_poll_at_once(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.set_faults(receive_hold_seconds=LONG_HOLD)
        token = await get_token(http, emulator)
        held = asyncio.create_task(poll(http, at(emulator), token))
        await wait_for(lambda: emulator.stream(DK, TENANT).stats()["concurrent_polls"] == 1)
        started = time.monotonic()
    status, page, _ = await held
    assert (status, page["data"]) == (200, [])
    assert time.monotonic() - started < 2.0


# Feeding over HTTP -----------------------------------------------------------------------------


async def test_feeding_over_http_keeps_numbers_and_nesting_exact(
    http: aiohttp.ClientSession,
) -> None:
    deep = b"[" * 5000 + b"]" * 5000
    document = (
        b'[{"type": "payment_status_updated", "id": "p-1", "timestamp": "2017-07-25T10:31:28Z",'
        b' "attributes": {"amount": 0.1000000000000000000001, "big": 1e400,'
        b' "count": 123456789012345678901234567890, "deep": ' + deep + b"}}]"
    )
    async with running() as emulator:
        async with http.post(
            emulator.base_url + f"/_emulator/receive/{ROUTE}", data=document
        ) as response:
            assert response.status == 200
            fed = await response.json()
        token = await get_token(http, emulator)
        async with http.get(at(emulator), headers={"Authorization": f"Bearer {token}"}) as response:
            page = emulator_json.parse(await response.read())
        async with http.get(emulator.base_url + f"/_emulator/receive/{ROUTE}") as response:
            items = emulator_json.parse(await response.read())
    assert (fed["first_id"], fed["last_event_id"], fed["fed"]) == ("p-1", "p-1", 1)
    item = page["data"][0]
    assert (item["id"], item["timestamp"]) == ("p-1", "2017-07-25T10:31:28Z")
    assert item["attributes"]["amount"] == Decimal("0.1000000000000000000001")
    assert item["attributes"]["big"] == Decimal("1e400")
    assert item["attributes"]["count"] == 123456789012345678901234567890
    assert emulator_json.dump(item["attributes"]["deep"]) == deep
    assert items[0]["id"] == "p-1"


async def test_generating_over_http(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        body = {"generate": 5, "type": "claim_updated"}
        status, answer = await control(http, emulator, "POST", f"/_emulator/receive/{ROUTE}", body)
        events = emulator.streams[ROUTE].events
    assert (status, answer["first_id"], answer["last_event_id"]) == (200, "_1", "_5")
    assert {event.type for event in events} == {"claim_updated"}
    assert all("changedBy" in event.attributes for event in events)
    assert len({event.attributes["case"]["uuid"] for event in events}) == 5


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"generate": -1}, "generate"),
        ({"generate": "5"}, "generate"),
        ({"generate": 1, "colour": "red"}, "expected a list"),
        ([{"type": "t"}], "event 0: attributes"),
        ([{"type": "t", "attributes": {}}, {"attributes": {}}], "event 1: type"),
        ([{"type": "t", "attributes": {}, "extra": 1}], "extra"),
        ([{"type": "t", "attributes": {}, "id": "x"}] * 2, "already"),
        ([42], "event 0"),
    ],
)
async def test_a_bad_feed_is_refused_whole(
    http: aiohttp.ClientSession, body: Any, message: str
) -> None:
    async with running() as emulator:
        status, answer = await control(http, emulator, "POST", f"/_emulator/receive/{ROUTE}", body)
        fed = len(emulator.stream(DK, TENANT).events)
    assert status == 400
    assert message in answer["error"]
    assert fed == 0


async def test_in_process_feed_refuses_a_taken_id() -> None:
    async with running() as emulator:
        emulator.feed(DK, TENANT, [{"id": "x", "type": "t", "attributes": {}}])
        with pytest.raises(ValueError, match="already"):
            emulator.feed(DK, TENANT, [{"id": "x", "type": "t", "attributes": {}}])


async def test_attributes_given_as_bytes_go_into_the_page_verbatim(
    http: aiohttp.ClientSession,
) -> None:
    raw = b'{"amount":1.10,"note":"\\u00e6"}'
    async with running() as emulator:
        emulator.feed(DK, TENANT, [{"type": "t", "attributes": raw}])
        token = await get_token(http, emulator)
        async with http.get(at(emulator), headers={"Authorization": f"Bearer {token}"}) as response:
            body = await response.read()
    assert b'"attributes":' + raw + b"}" in body


async def test_the_send_side_is_untouched_by_receiving(http: aiohttp.ClientSession) -> None:
    async with running() as emulator:
        emulator.generate(DK, TENANT, 3)
        _, stats = await control(http, emulator, "GET", "/_emulator/stats")
    assert (stats["events"], stats["statuses"], stats["sends_by_route"]) == (0, {}, {})
    assert stats["receive"][ROUTE]["fed"] == 3


# relay emulator ------------------------------------------------------------------------------


async def test_relay_emulator_pre_feeds_routes_and_sets_the_hold(
    http: aiohttp.ClientSession,
) -> None:
    process = await asyncio.create_subprocess_exec(
        RELAY,
        "emulator",
        "--port",
        "0",
        "--client",
        f"{CLIENT_ID}:{CLIENT_SECRET}",
        "--receive-route",
        ROUTE,
        "--receive-route",
        "se/other",
        "--receive-events",
        "120",
        "--receive-type",
        "case_created",
        "--receive-hold",
        "0.2",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    try:
        async with asyncio.timeout(30):
            lines = [(await process.stdout.readline()).decode() for _ in range(4)]
        base_url = lines[1].split()[-1]
        receive_url = lines[2].split()[-1]
        form = {
            "grant_type": "client_credentials",
            "client_id": CLIENT_ID,
            "client_secret": CLIENT_SECRET,
        }
        async with http.post(base_url + "/connect/token", data=form) as response:
            token = (await response.json())["access_token"]
        _, first, _ = await poll(http, receive_url, token)
        _, second, _ = await poll(http, first["links"]["next"], token)
        started = time.monotonic()
        _, empty, _ = await poll(http, second["links"]["next"], token)
        took = time.monotonic() - started
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            assert await process.wait() == 0
    assert f"receive stream {ROUTE}: 120 events at {base_url}{PATH}" in lines[2]
    assert "receive stream se/other: 120 events" in lines[3]
    assert (len(first["data"]), len(second["data"]), empty["data"]) == (100, 20, [])
    assert {item["type"] for item in first["data"]} == {"case_created"}
    assert 0.2 <= took < 5


async def test_relay_emulator_help_documents_receiving() -> None:
    process = await asyncio.create_subprocess_exec(
        RELAY, "emulator", "--help", stdout=asyncio.subprocess.PIPE
    )
    out, _ = await process.communicate()
    text = out.decode()
    for option in ("--receive-route", "--receive-events", "--receive-hold", "/_emulator/receive"):
        assert option in text
