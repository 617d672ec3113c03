"""What the application holds for its lifetime: settings, database engine, validator."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from fhir_server.settings import Settings
from fhir_server.validation import ResourceValidator


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    database_url: str
    engine: AsyncEngine
    validator: ResourceValidator
