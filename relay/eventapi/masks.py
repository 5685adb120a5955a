"""What the relay keeps of a partner's answer, and what never survives in it.

A partner may echo what it was sent: the event's payload (insurance data, personal data), the
bearer token, the client secret, the client assertion. Whatever the relay keeps or shows of an
answer (``outbox.last_error``, ``outbox_delivery.error``, ``relay_pause.reason``, the inbox's
pause reason, ``relay check``'s findings, a token error) is made here, by ``describe`` (an
EventApi answer) and ``Masks.clean`` (any text of an answer):

* what is kept: the status, the content type and size, and the fields that say why (``error``,
  ``error_description``, ``message``, ``scope``: OAuth 2.0's and the EventApi's), each clamped;
  of a body that is not JSON, its first words; of a redirect, where it leads. A Spring error's
  other fields (``status``, ``path``, ``exception``) repeat the status and the URL, or name a
  Java class: left out;
* what is masked first: any run of ``MIN_RUN`` characters or more of what was sent (the
  values of the event the request carried, and its credentials), in each form an echo takes:
  as sent, inside a JSON string (escaped, or with ``\\u`` escapes), HTML-escaped, or
  URL-encoded. A run becomes ``[masked]``, so the line still says that the partner echoed
  something, and where. The event's field names are not masked: they are its schema, not its
  data, and what an error names ("missing [timestamp]").

A credential shorter than ``MIN_RUN`` characters is not looked for: it cannot be told from the
words around it (masking it by value once turned "unknown client or wrong secret" into
"... or *** secret"). A request body larger than ``MAX_SENT`` is not searched: the answer's
text is withheld instead, and the line says so.
"""

from __future__ import annotations

import codecs
import html
import json
import re
from collections.abc import Iterable, Mapping
from urllib.parse import quote, quote_plus

import orjson

MIN_RUN = 8
MASK = "[masked]"
MAX_SENT = 64 * 1024  # characters of what was sent that an answer is searched for
MAX_FIELD = 200  # characters kept of each field, and of a body that is not JSON
MAX_SEARCHED = 4 * MAX_FIELD  # characters of one text searched (then clamped to MAX_FIELD)
# The fields of an error body worth keeping: OAuth 2.0's, and the EventApi's (Spring's).
KNOWN_FIELDS = ("error", "error_description", "message", "scope")
ELLIPSIS = "\u2026"
WITHHELD = "its text withheld: the request was too large to check it against"
# C0 controls but tab and newline (and DEL): PostgreSQL refuses NUL in a text column, and the
# others garble the terminals and log viewers that show last_error.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f]")
# Lone surrogates (undecodable bytes kept by surrogateescape) cannot be encoded as UTF-8.
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHARSET = re.compile(r"charset=\"?([\w.:-]+)", re.IGNORECASE)
_WHITESPACE = re.compile(r"[\t\n\r]+")


# A JSON string or number of a document, and whether a colon follows it (then it is a key).
_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?')
_KEY_FOLLOWS = re.compile(r"\s*:")
_MIME = re.compile(r"[\w.+-]+/[\w.+-]+")


def json_values(document: str | bytes) -> list[str]:
    """The string values (decoded) and numbers (as written) of a JSON document, its keys
    left out; read token by token, so no depth of nesting matters."""
    text = document.decode("utf-8", "replace") if isinstance(document, bytes) else document
    values = []
    for token in _TOKEN.finditer(text):
        literal = token.group()
        if _KEY_FOLLOWS.match(text, token.end()):
            continue
        if literal.startswith('"'):
            try:
                literal = json.loads(literal)
            except ValueError:
                literal = literal[1:-1]
        if len(literal) >= MIN_RUN:
            values.append(literal)
    return values


def storable(text: str, limit: int = 1000) -> str:
    """``text`` made safe for a PostgreSQL ``text`` column and a terminal: no control characters
    but tab and newline, nothing UTF-8 cannot encode, at most ``limit`` characters (a cut ends
    in an ellipsis). Applying it twice changes nothing more."""
    if len(text) <= limit and text.isprintable():
        return text  # the common case (an _id, a short reason): nothing to take out
    clean = _SURROGATE.sub("\ufffd", _CONTROL.sub("", text))
    if len(clean) <= limit:
        return clean
    return clean[: limit - 1] + ELLIPSIS if limit > 0 else ""


def _normal(text: str) -> str:
    """``text`` as ``Masks.clean`` reads an answer: storable, its whitespace one space."""
    return _WHITESPACE.sub(" ", storable(text, len(text)))


def _forms(text: str) -> Iterable[str]:
    """``text`` as an echo may carry it, each read as ``clean`` reads an answer."""
    for form in (
        text,
        orjson.dumps(text).decode()[1:-1],  # inside a JSON string
        json.dumps(text)[1:-1],  # the same with \\u escapes
        html.escape(text),
        quote_plus(text),
        quote(text, safe=""),
    ):
        yield _normal(form)


class Masks:
    """The texts one request sent that no answer to it may give back (see the module)."""

    def __init__(self, sent: Iterable[str | bytes | None] = ()) -> None:
        texts = [
            item.decode("utf-8", "replace") if isinstance(item, bytes) else item
            for item in sent
            if item
        ]
        self.texts = [text for text in texts if len(text) >= MIN_RUN]
        self.withheld = sum(len(text) for text in self.texts) > MAX_SENT
        self._runs: frozenset[str] | None = None

    @property
    def runs(self) -> frozenset[str]:
        """Every run of MIN_RUN characters of what was sent, in every form (made when first
        needed: only an answer that is not a success is searched)."""
        if self._runs is None:
            runs: set[str] = set()
            for text in self.texts:
                for form in _forms(text):
                    runs.update(form[i : i + MIN_RUN] for i in range(len(form) - MIN_RUN + 1))
            self._runs = frozenset(runs)
        return self._runs

    def clean(self, text: str, limit: int = MAX_FIELD) -> str:
        """``text`` of an answer as it may be kept: storable, on one line (its line breaks and
        tabs are spaces: a reason is one line wherever it is shown), every run of what was
        sent masked, at most ``limit`` characters."""
        text = _normal(text[: MAX_SEARCHED * 2])[:MAX_SEARCHED]
        if not text or not self.texts:
            return storable(text, limit)
        if self.withheld:
            return MASK
        runs = self.runs
        hidden = [False] * len(text)
        for start in range(len(text) - MIN_RUN + 1):
            if text[start : start + MIN_RUN] in runs:
                hidden[start : start + MIN_RUN] = [True] * MIN_RUN
        kept = []
        for char, masked in zip(text, hidden, strict=True):
            if not masked:
                kept.append(char)
            elif not kept or kept[-1] is not MASK:
                kept.append(MASK)
        return storable("".join(kept), limit)


NOTHING = Masks()


def describe(
    status: int, headers: Mapping[str, str], body: bytes, document: object, masks: Masks
) -> str:
    """One line for an EventApi answer that is not a success: ``HTTP 400: <what it says>
    (<content type>, <size> bytes)``, what it says being its known fields (``document`` is the
    body as JSON, if it is), where it redirects, or its first words; all masked."""
    said = _said(headers, body, document, masks)
    kind = headers.get("Content-Type", "").split(";", 1)[0].strip()
    if kind and not _MIME.fullmatch(kind):
        kind = "an unusual content type"  # a media type holds nothing else
    about = f"{kind[:100] or 'no content type'}, {len(body)} bytes"
    if masks.withheld and said:
        about += f", {WITHHELD}"
    return f"HTTP {status}: {said or '(nothing kept)'} ({about})"


def _said(headers: Mapping[str, str], body: bytes, document: object, masks: Masks) -> str:
    if isinstance(document, dict):
        parts = [
            masks.clean(str(value))
            for key in KNOWN_FIELDS
            if isinstance(value := document.get(key), str | int) and not isinstance(value, bool)
        ]
        if parts:
            return "; ".join(part for part in parts if part)
    location = headers.get("Location")
    if location:
        return f"redirected to {masks.clean(location)} (check RELAY_API_BASE_URL)"
    return masks.clean(body_text(body, headers)).strip()


def body_text(body: bytes, headers: Mapping[str, str]) -> str:
    """An answer's body as text, in the charset its Content-Type or byte order mark names,
    else UTF-8; undecodable bytes become U+FFFD. Not yet cleaned."""
    named = _CHARSET.search(headers.get("Content-Type", ""))
    charset = named.group(1) if named else None
    if charset is None and body.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        charset = "utf-16"
    prefix = body[: MAX_SEARCHED * 4]  # enough bytes for the characters searched
    try:
        return prefix.decode(charset or "utf-8", errors="replace")
    except (LookupError, UnicodeError):  # unknown, not a text encoding, or strict-only (idna)
        return prefix.decode("utf-8", errors="replace")
