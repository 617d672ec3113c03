"""What the application holds for its lifetime: settings, database pool, validator, token
verifier, access policy, audit trail."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

from compartments.policy import Policy
from fhir_server.audit.trail import AuditTrail
from fhir_server.auth.issuer import ServerKeys
from fhir_server.auth.tokens import TokenVerifier, Verifiers
from fhir_server.clients.registry import ClientRegistry
from fhir_server.services.access.cache import FactsCache
from fhir_server.services.context import utc_now
from fhir_server.services.formats.limits import InputLimits
from fhir_server.settings import Settings
from fhir_server.storage.database import Database
from fhir_server.storage.replicas import ReplicaSet
from fhir_server.validation import ResourceValidator


@dataclass(frozen=True, slots=True)
class Runtime:
    settings: Settings
    db: Database
    validator: ResourceValidator
    verifier: TokenVerifier | Verifiers
    policy: Policy
    audit: AuditTrail
    facts: FactsCache
    registry: ClientRegistry | None = None
    # the input limits of `settings` (docs/limits.md), made once
    limits: InputLimits = field(default_factory=InputLimits)
    # the one clock of the application: every request's Context.clock, and what else asks the time
    clock: Callable[[], datetime] = utc_now
    # the signing keys of the server's own authorization server (None with `FHIR_OAUTH=off`)
    keys: ServerKeys | None = None
    # the streaming replicas reads may use (POSTGRES_REPLICA_URLS; None without)
    replicas: ReplicaSet | None = None
