"""The value every interaction returns to the API layer."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.storage.repository import NewVersion, StoredVersion


@dataclass(frozen=True, slots=True)
class Result:
    """A resource version and the status that answers the interaction (200, 201, 204)."""

    status: int
    version: StoredVersion
    # a conditional create's match: nothing was written
    existing: bool = False

    @classmethod
    def written(cls, status: int, version: NewVersion) -> Result:
        return cls(
            status,
            StoredVersion(
                version.resource_type,
                version.id,
                version.version_id,
                version.last_updated,
                version.deleted,
                version.content,
                version.compartments,
                version.method,
            ),
        )
