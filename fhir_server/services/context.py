"""What every interaction needs besides its arguments: settings, validator, clock, caller."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

from fhir_server.settings import Settings
from fhir_server.storage.search_sql import AccessFilter, Everything
from fhir_server.validation import ResourceValidator


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Context:
    settings: Settings
    validator: ResourceValidator
    # The FHIR base URL as the client sees it, e.g. "http://127.0.0.1:8080/fhir".
    base_url: str
    clock: Callable[[], datetime] = field(default=utc_now)
    # The acting identity recorded as creator ("RelatedPerson/9"); None while unauthenticated.
    actor: str | None = None
    # What the caller may see; every search and read statement carries it in its WHERE.
    access: AccessFilter = field(default_factory=Everything)

    @property
    def local_bases(self) -> tuple[str, ...]:
        """Base URLs under which an absolute reference points at this server."""
        return (self.base_url, *self.settings.local_bases)
