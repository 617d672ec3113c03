"""read and vread."""

from __future__ import annotations

from fhir_server.errors import Gone, NotFound
from fhir_server.storage import repository
from fhir_server.storage.repository import StoredVersion
from fhir_server.storage.sql import Connection


async def read(conn: Connection, resource_type: str, id: str) -> StoredVersion:
    found = await repository.read_current(conn, resource_type, id)
    if found is None:
        raise NotFound(f"`{resource_type}/{id}` is not known")
    if found.deleted:
        raise Gone(f"`{resource_type}/{id}` was deleted")
    return found


async def vread(conn: Connection, resource_type: str, id: str, version: str) -> StoredVersion:
    if not version.isdigit() or len(version) > 9:
        raise NotFound(f"`{resource_type}/{id}` has no version `{version}`")
    found = await repository.read_version(conn, resource_type, id, int(version))
    if found is None:
        raise NotFound(f"`{resource_type}/{id}` has no version `{version}`")
    if found.deleted:
        raise Gone(f"version `{version}` of `{resource_type}/{id}` is a deletion")
    return found
