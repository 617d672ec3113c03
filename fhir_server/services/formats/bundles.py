"""Assembling Bundles around stored JSON text, without re-parsing it (orjson.Fragment)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

from fhir_server.services.formats.etags import etag
from fhir_server.storage.repository import StoredVersion

_DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(moment: datetime) -> str:
    """An HTTP date (RFC 9110 IMF-fixdate), e.g. `Mon, 23 Nov 2026 23:06:15 GMT`."""
    t = moment.astimezone(UTC)
    return (
        f"{_DAYS[t.weekday()]}, {t.day:02d} {_MONTHS[t.month - 1]} {t.year:04d} "
        f"{t.hour:02d}:{t.minute:02d}:{t.second:02d} GMT"
    )


def raw(content: str) -> orjson.Fragment:
    """Stored JSON text, embedded as it is."""
    return orjson.Fragment(content)


def history_entry(base_url: str, version: StoredVersion) -> dict[str, Any]:
    """A history Bundle's entry for `version`. Its `response.status` is what the write was
    answered: `201` for the version that created the resource (version 1, whatever its method:
    a `PUT` may create, and the first `PUT` after a deletion, which brings it back), `204` for a
    deletion, `200` for the other updates."""
    ref = f"{version.resource_type}/{version.id}"
    method = version.method or ("DELETE" if version.deleted else "PUT")
    if method == "DELETE":
        status = "204 No Content"
    elif method == "POST" or version.version_id == 1 or version.follows_deletion:
        status = "201 Created"
    else:
        status = "200 OK"
    entry: dict[str, Any] = {"fullUrl": f"{base_url}/{ref}"}
    if version.content is not None:
        entry["resource"] = raw(version.content)
    entry["request"] = {"method": method, "url": version.resource_type if method == "POST" else ref}
    entry["response"] = {
        "status": status,
        "etag": etag(version.version_id),
        "lastModified": version.last_updated.isoformat(timespec="microseconds"),
    }
    return entry


def bundle(bundle_type: str, *, entries: list[dict[str, Any]], **fields: Any) -> bytes:
    body: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": bundle_type,
        **fields,
        "entry": entries,
    }
    if not entries:
        del body["entry"]
    return orjson.dumps(body)
