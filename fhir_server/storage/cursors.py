"""Opaque paging cursors: the sort keys of a page's last row, for the `_page` of a next link.

Keys may be str, int, float, None, datetime or Decimal; they come back with their types, so a
keyset condition compares like with like. A cursor the server did not give out is a 400.
"""

from __future__ import annotations

import base64
import binascii
from datetime import datetime
from decimal import Decimal
from typing import Any

import orjson

from fhir_server.errors import BadRequest


def encode_cursor(keys: tuple[Any, ...]) -> str:
    text = orjson.dumps([_json_key(k) for k in keys])
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def decode_cursor(cursor: str, expected: int) -> tuple[Any, ...]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        keys = orjson.loads(raw)
    except (binascii.Error, ValueError, orjson.JSONDecodeError):
        raise BadRequest("`_page` is not a cursor this server gave out", code="value") from None
    if not isinstance(keys, list) or len(keys) != expected:
        raise BadRequest("`_page` does not belong to this search", code="value")
    return tuple(_from_json_key(k) for k in keys)


def _json_key(value: Any) -> Any:
    if isinstance(value, datetime):
        return {"t": value.isoformat()}
    if isinstance(value, Decimal):
        return {"n": str(value)}
    return value


def _from_json_key(value: Any) -> Any:
    if isinstance(value, dict):
        try:
            if "t" in value:
                return datetime.fromisoformat(value["t"])
            if "n" in value:
                return Decimal(value["n"])
        except (ValueError, ArithmeticError):
            pass
        raise BadRequest("`_page` is not a cursor this server gave out", code="value")
    if value is None or isinstance(value, str | int | float):
        return value
    raise BadRequest("`_page` is not a cursor this server gave out", code="value")
