"""Building FHIR HTTP responses: content type, ETag, Last-Modified, Location, Prefer."""

from __future__ import annotations

from fastapi import Response

from fhir_server.errors import Issue
from fhir_server.services.formats.bundles import http_date
from fhir_server.services.formats.etags import etag
from fhir_server.services.formats.operation_outcome import information, operation_outcome_bytes
from fhir_server.services.interactions.versions import json_bytes
from fhir_server.services.result import Result
from fhir_server.storage.repository import StoredVersion

FHIR_JSON = "application/fhir+json; charset=utf-8"
# Set on a response that an emergency (break-glass) access made possible.
EMERGENCY_HEADER = "X-Emergency-Access"


def fhir_response(
    body: bytes | str,
    status: int = 200,
    headers: dict[str, str] | None = None,
    *,
    emergency: bool = False,
) -> Response:
    if emergency:
        headers = {**(headers or {}), EMERGENCY_HEADER: "break-glass; audited"}
    return Response(content=body, status_code=status, media_type=FHIR_JSON, headers=headers)


def json_response(
    body: object, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A plain JSON answer (the non-FHIR APIs)."""
    return Response(json_bytes(body), status, headers, media_type="application/json")


def version_headers(version: StoredVersion) -> dict[str, str]:
    return {"ETag": etag(version.version_id), "Last-Modified": http_date(version.last_updated)}


def read_response(version: StoredVersion, *, emergency: bool = False) -> Response:
    assert version.content is not None
    return fhir_response(version.content, 200, version_headers(version), emergency=emergency)


def write_response(base_url: str, result: Result, prefer: str) -> Response:
    version = result.version
    headers = version_headers(version)
    if result.status == 201 or version.method in {"PUT", "PATCH"}:
        headers["Location"] = (
            f"{base_url}/{version.resource_type}/{version.id}/_history/{version.version_id}"
        )
    if prefer == "minimal":
        return Response(status_code=result.status, headers=headers)
    if prefer == "OperationOutcome":
        verb = "created" if result.status == 201 else "updated"
        text = f"`{version.resource_type}/{version.id}` {verb} at version {version.version_id}"
        if result.existing:
            text = f"`{version.resource_type}/{version.id}` already exists and matches the criteria"
        return fhir_response(information(text), result.status, headers)
    assert version.content is not None
    return fhir_response(version.content, result.status, headers)


def outcome_response(
    status: int, issues: list[Issue], headers: dict[str, str] | None = None
) -> Response:
    return fhir_response(operation_outcome_bytes(issues), status, headers)
