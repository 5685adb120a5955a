"""How the emulated partner words a refusal: RFC 6749 error bodies at the token endpoint,
Spring Boot's error bodies at the EventApi, and the 401 and 403 bodies of its documentation."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from http import HTTPStatus
from typing import Any

import orjson
from aiohttp import web

UNAUTHORIZED = {
    "error": "unauthorized",
    "error_description": "Full authentication is required to access this resource",
}
INSUFFICIENT_SCOPE = {
    "error": "insufficient_scope",
    "error_description": "Insufficient scope for this resource",
    "scope": "events",
}


class Reply(Exception):
    """Stop handling and send this answer."""

    def __init__(self, status: int, body: Mapping[str, Any], **headers: str) -> None:
        super().__init__(status)
        self.code = body.get("error") if isinstance(body.get("error"), str) else None
        self.response = web.Response(
            status=status,
            body=orjson.dumps(body),
            content_type="application/json",
            headers=headers,
        )


def raw_reply(status: int, body: bytes, content_type: str) -> Reply:
    """An answer with a body that is not the partner's JSON (a gateway's page, an echo)."""
    reply = Reply(status, {})
    # Set as a header: aiohttp's content_type argument refuses a charset parameter.
    reply.response = web.Response(status=status, body=body, headers={"Content-Type": content_type})
    return reply


def oauth_error(status: int, error: str, description: str) -> Reply:
    """An RFC 6749 error from the token endpoint, never cached."""
    headers = {"WWW-Authenticate": 'Basic realm="token"'} if status == 401 else {}
    reply = Reply(status, {"error": error, "error_description": description}, **headers)
    reply.response.headers["Cache-Control"] = "no-store"
    return reply


def spring_error(status: int, path: str, exception: str, message: str) -> Reply:
    """An error as the EventApi's Spring Boot words it."""
    body = {
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "+0000",
        "status": status,
        "error": _phrase(status),
        "exception": exception,
        "message": message,
        "path": path,
    }
    return Reply(status, body)


def canned(status: int, path: str) -> Reply:
    """The EventApi's answer with ``status``: its own 401 and 403 bodies, else a Spring error."""
    if status == 401:
        return Reply(401, UNAUTHORIZED)
    if status == 403:
        return Reply(403, INSUFFICIENT_SCOPE)
    return spring_error(status, path, "emulator.InjectedFault", "injected by the emulator")


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return "Error"
