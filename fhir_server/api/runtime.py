"""What the application holds for its lifetime: settings, database pool, validator."""

from __future__ import annotations

from dataclasses import dataclass

from fhir_server.settings import Settings
from fhir_server.storage.database import Database
from fhir_server.validation import ResourceValidator


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    db: Database
    validator: ResourceValidator
