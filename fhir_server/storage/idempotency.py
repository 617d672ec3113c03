"""Idempotency keys (`Idempotency-Key` on POST): the same key and body replay the first response;
the same key with another body is a conflict; keys expire.

The key is claimed inside the request's own transaction, by inserting its row: a concurrent
request with the same key waits on that insert until the first one commits (then it replays its
response) or rolls back (then it goes ahead itself). So concurrent requests with one key create
one resource, and a failed request leaves no key behind.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import orjson

from fhir_server.errors import BadRequest, Conflict
from fhir_server.storage.sql import Connection, Statement, execute, fetch_one

# Longer keys would not fit a btree index entry; clients use UUIDs (36 characters).
MAX_KEY_LENGTH = 255

_CLAIM = Statement(
    "INSERT INTO idempotency_keys (scope, key, fingerprint, status, headers, body, expires_at)"
    " VALUES (%(scope)s, %(key)s, %(fingerprint)s, 0, '{}', '', %(expires)s)"
    " ON CONFLICT (scope, key) DO NOTHING RETURNING key"
)
_FOUND = Statement(
    "SELECT fingerprint, status, headers::text, body, expires_at FROM idempotency_keys"
    " WHERE scope = %(scope)s AND key = %(key)s FOR UPDATE"
)
_DROP = Statement("DELETE FROM idempotency_keys WHERE scope = %(scope)s AND key = %(key)s")
_STORE = Statement(
    "UPDATE idempotency_keys SET status = %(status)s, headers = %(headers)s::jsonb,"
    " body = %(body)s WHERE scope = %(scope)s AND key = %(key)s"
)
_PURGE = Statement("DELETE FROM idempotency_keys WHERE expires_at < %(now)s")


@dataclass(frozen=True, slots=True)
class Replay:
    status: int
    headers: dict[str, str]
    body: bytes


def fingerprint(body: bytes) -> str:
    return hashlib.sha256(body).hexdigest()


async def claim(
    conn: Connection, scope: str, key: str, body: bytes, now: datetime, ttl: timedelta
) -> Replay | None:
    """Claim the key for this request (None: go ahead, then `store` the response), or the
    response to replay. Another body with the key is a Conflict (`idempotency_key_reused`). Run
    inside the request's transaction. A key longer than MAX_KEY_LENGTH is a BadRequest
    (`invalid_idempotency_key`)."""
    if len(key) > MAX_KEY_LENGTH:
        raise BadRequest(
            f"`Idempotency-Key` has at most {MAX_KEY_LENGTH} characters",
            code="value",
            error_code="invalid_idempotency_key",
        )
    params: dict[str, Any] = {
        "scope": scope,
        "key": key,
        "fingerprint": fingerprint(body),
        "expires": now + ttl,
    }
    for _ in range(2):
        if await fetch_one(conn, _CLAIM, params) is not None:
            return None
        row = await fetch_one(conn, _FOUND, params)
        if row is None:
            continue  # it expired and was purged meanwhile: claim again
        stored_fingerprint, status, headers, stored_body, expires = row
        if expires < now:
            await execute(conn, _DROP, params)
            continue
        if stored_fingerprint != params["fingerprint"]:
            raise _reused(key)
        return Replay(status, orjson.loads(headers), bytes(stored_body))
    raise _reused(key)


def _reused(key: str) -> Conflict:
    return Conflict(
        f"the Idempotency-Key `{key}` was used with another request body",
        error_code="idempotency_key_reused",
    )


async def store(
    conn: Connection, scope: str, key: str, status: int, headers: dict[str, str], body: bytes
) -> None:
    await execute(
        conn,
        _STORE,
        {
            "scope": scope,
            "key": key,
            "status": status,
            "headers": orjson.dumps(headers).decode(),
            "body": body,
        },
    )


async def purge(conn: Connection, now: datetime) -> int:
    """Forget expired keys; the number forgotten."""
    return await execute(conn, _PURGE, {"now": now})
