"""Reading a request body as the EventApi (Java, Jackson) reads it.

Jackson accepts any number RFC 8259 allows, of any size or precision (``1e400``,
``0.1000000000000000000001``, a 30-digit integer), and nesting far deeper than Python's
recursion limit. orjson refuses or rounds such numbers and stops at 1024 levels, so the
emulator reads bodies with the standard library instead: floats as ``Decimal`` (exact),
integers as ``int`` (``Decimal`` past the digits ``int()`` accepts), ``NaN`` and ``Infinity``
refused as Jackson refuses them. A body nested deeper than the C decoder may recurse is read
by a small iterative parser that builds the same values without recursing at all.

``dump`` writes such values back (for the events the emulator hands out): exactly, at any
depth, and as fast as orjson when orjson can write them.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Iterator
from decimal import Decimal
from json import decoder
from typing import Any

import orjson

# int() refuses strings of more than 4300 digits (sys.int_info.default_max_str_digits).
_MAX_INT_DIGITS = 4000
_WHITESPACE = re.compile(r"[ \t\n\r]*")
# ASCII digits only: in a str pattern \d also matches other scripts' digits.
_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LITERALS: dict[str, object] = {"true": True, "false": False, "null": None}
# The C string scanner json.loads uses (it does not recurse); typeshed does not declare it.
scanstring: Callable[[str, int, bool], tuple[str, int]] = decoder.scanstring  # type: ignore[attr-defined]


def parse(raw: bytes) -> Any:
    """The JSON value ``raw`` holds (UTF-8); ValueError when it is not valid JSON."""
    text = raw.decode("utf-8")  # UnicodeDecodeError is a ValueError
    try:
        return json.loads(text, parse_float=Decimal, parse_int=_integer, parse_constant=_refuse)
    except RecursionError:
        return _parse_iteratively(text)


def _integer(digits: str) -> int | Decimal:
    return int(digits) if len(digits) <= _MAX_INT_DIGITS else Decimal(digits)


def _refuse(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _skip(text: str, pos: int) -> int:
    match = _WHITESPACE.match(text, pos)
    assert match is not None  # the pattern matches the empty string
    return match.end()


def _error(message: str, text: str, pos: int) -> json.JSONDecodeError:
    return json.JSONDecodeError(message, text, pos)


def _key(text: str, pos: int) -> tuple[str, int]:
    """An object's key and the position after its colon (``pos`` at the key's quote)."""
    if text[pos : pos + 1] != '"':
        raise _error("Expecting property name enclosed in double quotes", text, pos)
    key, pos = scanstring(text, pos + 1, True)
    pos = _skip(text, pos)
    if text[pos : pos + 1] != ":":
        raise _error("Expecting ':' delimiter", text, pos)
    return key, _skip(text, pos + 1)


def _scalar(text: str, pos: int) -> tuple[object, int]:
    """A string, number or literal starting at ``pos``, and the position after it."""
    if text[pos : pos + 1] == '"':
        return scanstring(text, pos + 1, True)
    match = _NUMBER.match(text, pos)
    if match is not None:
        number = match.group()
        exact = Decimal(number) if match.group(1) or match.group(2) else _integer(number)
        return exact, match.end()
    for word, literal in _LITERALS.items():
        if text.startswith(word, pos):
            return literal, pos + len(word)
    raise _error("Expecting value", text, pos)


_OPENED = object()  # read_value opened a container instead of reading a value
_CLOSER = {dict: "}", list: "]"}


class _Reader:
    """A JSON text read with an explicit stack of open containers instead of recursion."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = _skip(text, 0)
        self.open: list[dict[str, Any] | list[Any]] = []
        self.keys: list[str] = []  # the key each open object is reading a value for

    def read_value(self) -> object:
        """A complete value, or ``_OPENED`` after opening a container that is not empty."""
        text, pos = self.text, self.pos
        char = text[pos : pos + 1]
        if char not in ("{", "["):
            value, self.pos = _scalar(text, pos)
            return value
        pos = _skip(text, pos + 1)
        container: dict[str, Any] | list[Any] = {} if char == "{" else []
        if text[pos : pos + 1] == _CLOSER[type(container)]:
            self.pos = pos + 1
            return container
        self.open.append(container)
        if isinstance(container, dict):
            key, pos = _key(text, pos)
            self.keys.append(key)
        self.pos = pos
        return _OPENED

    def place(self, value: object) -> tuple[bool, object]:
        """Put ``value`` into the open container, closing every container that ends after it.
        (True, the whole value) at the end of the text; (False, None) when a member follows."""
        text = self.text
        while True:
            pos = _skip(text, self.pos)
            if not self.open:
                if pos != len(text):
                    raise _error("Extra data", text, pos)
                return True, value
            container = self.open[-1]
            if isinstance(container, dict):
                container[self.keys[-1]] = value
            else:
                container.append(value)
            char = text[pos : pos + 1]
            if char == ",":
                pos = _skip(text, pos + 1)
                if isinstance(container, dict):
                    self.keys[-1], pos = _key(text, pos)
                self.pos = pos
                return False, None
            if char != _CLOSER[type(container)]:
                raise _error("Expecting ',' delimiter", text, pos)
            self.pos = pos + 1
            value = self.open.pop()
            if isinstance(value, dict):
                self.keys.pop()


def _parse_iteratively(text: str) -> Any:
    """As ``json.loads`` (with the same number types), for any depth."""
    reader = _Reader(text)
    while True:
        value = reader.read_value()
        if value is _OPENED:
            continue
        done, whole = reader.place(value)
        if done:
            return whole


def dump(value: Any) -> bytes:
    """``value`` (what ``parse`` returns: dicts, lists, strings, int, Decimal, float, bool,
    None) as compact JSON: numbers exactly as they are, nesting as deep as it is."""
    try:
        return orjson.dumps(value)
    except orjson.JSONEncodeError:  # a Decimal, an int past 64 bits, deep nesting, a surrogate
        return _dump_iteratively(value).encode("ascii")


def _number(value: object) -> str:
    if isinstance(value, int):
        return str(value)
    if isinstance(value, Decimal) and value.is_finite():
        return str(value)  # exactly as read: 1E+400 is JSON too
    if isinstance(value, float) and math.isfinite(value):
        return repr(value)
    raise TypeError(f"{value!r} is not a JSON value")


def _scalar_text(value: object) -> str:
    if value is None or isinstance(value, bool):
        return {None: "null", True: "true", False: "false"}[value]
    if isinstance(value, str):
        # Everything outside ASCII escaped: a lone surrogate (parse accepts its escape) too.
        return json.encoder.encode_basestring_ascii(value)
    return _number(value)


def _dump_iteratively(value: object) -> str:
    """As ``json.dumps`` (compact, Decimal exact), for any depth."""
    out: list[str] = []
    # Each open container: its items, its closing bracket, whether an item was written.
    stack: list[tuple[Iterator[Any], str, list[bool]]] = []
    while True:
        if isinstance(value, dict):
            out.append("{")
            stack.append((iter(value.items()), "}", [False]))
        elif isinstance(value, list | tuple):
            out.append("[")
            stack.append((iter(value), "]", [False]))
        else:
            out.append(_scalar_text(value))
        while True:  # the next value to write, closing every container that ends first
            if not stack:
                return "".join(out)
            items, closer, written = stack[-1]
            item: Any = next(items, _END)
            if item is _END:
                stack.pop()
                out.append(closer)
                continue
            if written[0]:
                out.append(",")
            written[0] = True
            if closer == "}":
                key, value = item
                if not isinstance(key, str):
                    raise TypeError(f"object key {key!r} is not a string")
                out.append(json.encoder.encode_basestring_ascii(key) + ":")
            else:
                value = item
            break


_END = object()
