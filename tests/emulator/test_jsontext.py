"""The emulator writes back exactly what it reads: any number, any depth."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import pytest

from relay.emulator import jsontext as emulator_json


@pytest.mark.parametrize(
    "text",
    [
        b'{"a":[1,2.5,null,true,false,"\\u00e6",{}],"b":[]}',
        b'{"big":1E+400,"fine":0.1000000000000000000001,"n":123456789012345678901234567890}',
        b'"\\ud800"',  # a lone surrogate, as an escape
    ],
)
def test_dump_writes_back_what_parse_read(text: bytes) -> None:
    value = emulator_json.parse(text)
    assert emulator_json.parse(emulator_json.dump(value)) == value


@pytest.mark.parametrize(
    "text",
    [b"[" * 3000 + b"]" * 3000, b'{"x":' * 3000 + b"[1E+400]" + b"}" * 3000],
)
def test_dump_writes_nesting_deeper_than_python_recurses(text: bytes) -> None:
    # Compared as text: comparing the values themselves would recurse.
    assert emulator_json.dump(emulator_json.parse(text)) == text


def test_dump_is_compact_json_that_json_reads() -> None:
    value = {"name": "Åse", "amounts": [Decimal("1.10"), 2, -0.5], "none": None}
    assert json.loads(emulator_json.dump(value), parse_float=Decimal) == value
    assert b" " not in emulator_json.dump(value)


@pytest.mark.parametrize(
    "value",
    [
        {1: "key is no string"},
        [Decimal("NaN")],
        [Decimal("Infinity")],
        [object()],
    ],
)
def test_dump_refuses_what_json_cannot_hold(value: Any) -> None:
    with pytest.raises(TypeError):
        emulator_json.dump(value)
