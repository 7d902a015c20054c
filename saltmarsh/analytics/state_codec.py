"""Arrays to and from JSON-safe text, for detector state a service persists.

float32 is what the state holds in memory too, so a round trip is exact and a restored detector
scores exactly as the one that was saved.
"""

from __future__ import annotations

import base64
import binascii
import sys
from array import array
from collections.abc import Mapping
from typing import Any


def pack(values: array[Any]) -> str:
    if sys.byteorder != "little":
        values = array(values.typecode, values)
        values.byteswap()
    return base64.b64encode(values.tobytes()).decode("ascii")


def unpack(state: Mapping[str, Any], key: str, typecode: str, length: int | None = None) -> array[Any]:
    """`state[key]` as an array of `typecode`; ValueError naming the key if missing or malformed."""
    text = state.get(key)
    if not isinstance(text, str):
        raise ValueError(f"state key {key!r}: expected base64 text, got {type(text).__name__}")
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise ValueError(f"state key {key!r}: not base64") from None
    values: array[Any] = array(typecode)
    if len(raw) % values.itemsize:
        raise ValueError(f"state key {key!r}: {len(raw)} bytes is not a whole number of items")
    values.frombytes(raw)
    if sys.byteorder != "little":
        values.byteswap()
    if length is not None and len(values) != length:
        raise ValueError(f"state key {key!r}: expected {length} items, got {len(values)}")
    return values


def number(state: Mapping[str, Any], key: str) -> float:
    found = state.get(key)
    if isinstance(found, bool) or not isinstance(found, int | float):
        raise ValueError(f"state key {key!r}: expected a number, got {found!r}")
    return float(found)


def integer(state: Mapping[str, Any], key: str) -> int:
    found = state.get(key)
    if isinstance(found, bool) or not isinstance(found, int):
        raise ValueError(f"state key {key!r}: expected an integer, got {found!r}")
    return found


def optional_number(state: Mapping[str, Any], key: str) -> float | None:
    return None if state.get(key) is None else number(state, key)


def table(state: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    found = state.get(key)
    if not isinstance(found, Mapping):
        raise ValueError(f"state key {key!r}: expected a table, got {type(found).__name__}")
    return found
