"""The caller's access for one request: identities and facts loaded from the database, the
engine's decisions, the token's scopes, and the SQL filter that carries them (DESIGN.md 5).

Facts are loaded in one statement together with the access epoch, a number that every write of a
fact-bearing resource (Person, RelatedPerson, Consent, CareTeam, Patient) bumps in its own
transaction. A server reuses the facts it loaded for a user while the epoch it reads at the start
of each request is unchanged: a revoked Consent, an ended RelatedPerson or a lowered assurance
level counts from the very next request, on every server. Cached facts also expire at the first
instant one of their periods starts or ends (a Consent's `provision.period.end` an hour from
now ends the entry in an hour), and at the end of the UTC day, so a child's 18th birthday
counts the day it comes. System and Admin callers load nothing (their
policy rule is `allow`, narrowed by scopes).
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

import orjson

from compartments.consent import ConsentFact, read_consent, reference_of
from compartments.engine import (
    Decision,
    Facts,
    Identity,
    RelatedPersonFact,
    Request,
    Target,
    decide,
)
from compartments.periods import Window, next_change, window
from compartments.policy import Policy, Reason
from fhir_server.auth.scopes import Scope, granted
from fhir_server.auth.tokens import Principal, principal_from_claims
from fhir_server.errors import AccessDenied, BadRequest, Unauthorized
from fhir_server.metrics import RELATIONSHIP_CACHE_HITS
from fhir_server.search.query import parse_search
from fhir_server.services.formats import changes
from fhir_server.storage import repository
from fhir_server.storage.search_sql import UNRESTRICTED, Grant, GrantPart
from fhir_server.storage.sql import Connection, Statement, fetch_all

VERIFIED_ASSURANCE = frozenset({"level3", "level4"})
# The SMART permission each engine operation needs (v2 letters; v1 read = "rs", write = "cud").
PERMISSION = {
    "read": "r",
    "history": "r",
    "search": "s",
    "create": "c",
    "update": "u",
    "patch": "u",
    "delete": "d",
}
PRIVILEGED_ROLES = frozenset({"System", "Admin"})
# Decisions remembered per cached set of facts (see Guard._decisions).
MAX_DECISIONS = 1024
_SERVER_SCOPE = Scope("system", "*", frozenset("cruds"))


@dataclass(frozen=True, slots=True)
class Audited:
    """One decision, for the audit trail."""

    operation: str
    resource_type: str | None
    resource: str | None  # "Observation/1", when one resource was concerned
    decision: Decision


@dataclass(slots=True)
class Guard:
    """Everything access control knows about the caller of one request."""

    principal: Principal | None
    account: str  # who acts: the fhirUser, "System/<client>" or "Admin/<subject>"
    identities: tuple[Identity, ...]
    facts: Facts
    policy: Policy
    purpose_of_use: str | None = None
    reason: str | None = None
    audited: list[Audited] = field(default_factory=list)
    # "Patient/1" -> what this request's write of it changed (services/changes.py), for the audit
    changes: dict[str, str] = field(default_factory=dict)
    # Facts taken from the cache without reading the access epoch yet (`load_guard(...,
    # optimistic=True)`): the epoch they were loaded at. The caller must `verify` them, or read
    # the epoch in the same statement as its data (services/read.py), before answering.
    pending_epoch: int | None = None
    _reload: Callable[[Connection], Awaitable[Guard]] | None = None
    _filters: dict[str, AccessFilterForOperation] = field(default_factory=dict)
    # (operation, type, purpose, reason, scopes, patient) -> the decision and the grant. Shared
    # by every request whose facts come from the same cache entry: they depend on nothing else.
    _decisions: dict[tuple[Any, ...], tuple[Decision, Grant | None]] = field(default_factory=dict)

    async def verify(self, conn: Connection, epoch: int | None = None) -> bool:
        """Make optimistic facts certain: compare the epoch they were loaded at with the
        current one (`epoch`, if the caller read it with its data) and load them again if it
        moved. True when they were current."""
        if self.pending_epoch is None:
            return True
        current = epoch if epoch is not None else await repository.access_epoch(conn)
        if current == self.pending_epoch:
            self.pending_epoch = None
            return True
        assert self._reload is not None
        fresh = await self._reload(conn)
        self.identities, self.facts, self.pending_epoch = fresh.identities, fresh.facts, None
        self._decisions = fresh._decisions
        return False

    @property
    def emergency(self) -> bool:
        """Whether a break-glass decision let this request through."""
        return any(a.decision.emergency for a in self.audited)

    @property
    def privileged(self) -> bool:
        return any(i.role in PRIVILEGED_ROLES for i in self.identities)

    def decide(self, operation: str, resource_type: str, target: Target | None = None) -> Decision:
        """The policy decision AND the token's scopes."""
        decision = decide(
            Request(
                self.identities,
                operation,
                resource_type,
                target=target,
                account=self.account,
                purpose_of_use=self.purpose_of_use,
                reason=self.reason,
            ),
            self.policy,
            self.facts,
        )
        if decision.allowed and not self._scopes(resource_type, operation):
            return Decision(
                allowed=False,
                rule=decision.rule,
                reason=Reason.INSUFFICIENT_SCOPE,
                explanation=f"no scope grants `{PERMISSION[operation]}` on {resource_type}",
            )
        return decision

    def _scopes(self, resource_type: str, operation: str) -> list[Scope]:
        if self.principal is None:
            return [_SERVER_SCOPE]  # the server's own work
        return granted(self.principal.scopes, resource_type, PERMISSION[operation])

    def type_decision(self, operation: str, resource_type: str) -> Decision:
        """The decision for a whole type (a search, or the filter of a read)."""
        return self._decided(operation, resource_type)[0]

    def grant(self, operation: str, resource_type: str) -> Grant | None:
        """Which rows of a type this caller may see for `operation`, as the SQL filter."""
        return self._decided(operation, resource_type)[1]

    def _decided(self, operation: str, resource_type: str) -> tuple[Decision, Grant | None]:
        principal = self.principal
        key = (
            operation,
            resource_type,
            self.purpose_of_use,
            self.reason,
            principal.scopes if principal else None,
            principal.patient if principal else None,
        )
        found = self._decisions.get(key)
        if found is None:
            decision = self.decide(operation, resource_type)
            grant = None
            if decision.allowed:
                policy = (
                    UNRESTRICTED
                    if decision.everything
                    else Grant(
                        compartments=decision.compartments,
                        creators=decision.creators,
                        parts=_parts(decision, resource_type),
                    )
                )
                grant = self._narrow(policy, resource_type, self._scopes(resource_type, operation))
            if len(self._decisions) >= MAX_DECISIONS:
                # the key holds what the caller sends (purpose of use, break-glass reason,
                # scopes): a caller varying them must not grow the shared cache without bound
                self._decisions.clear()
            found = self._decisions[key] = (decision, grant)
        return found

    def _narrow(self, grant: Grant, resource_type: str, scopes: list[Scope]) -> Grant:
        """Scopes narrow the policy's grant: `patient/` scopes to the launch context's
        compartment, granular scopes to the resources that match their query. Mixed scopes are
        narrowed conservatively: an unconditional `user/` or `system/` scope lifts both."""
        unconditional = [s for s in scopes if s.context != "patient" and not s.query]
        if unconditional:
            return grant
        within = None
        if any(s.context == "patient" for s in scopes):
            assert self.principal is not None and self.principal.patient
            within = f"Patient/{self.principal.patient}"
        criteria: tuple[Any, ...] = ()
        if all(s.query for s in scopes):
            criteria = tuple(_scope_criteria(resource_type, s) for s in scopes)
        return Grant(
            everything=grant.everything,
            compartments=grant.compartments,
            creators=grant.creators,
            parts=grant.parts,
            within=within,
            criteria=criteria,
        )

    def access(self, operation: str) -> AccessFilterForOperation:
        """The AccessFilter of searches, history and reads for this operation."""
        found = self._filters.get(operation)
        if found is None:
            found = self._filters[operation] = AccessFilterForOperation(self, operation)
        return found

    def require(
        self,
        operation: str,
        resource_type: str,
        *,
        target: Target | None = None,
        resource: str | None = None,
    ) -> Decision:
        """The decision, recorded for audit; AccessDenied when it is a no."""
        decision = self.decide(operation, resource_type, target)
        self.audited.append(Audited(operation, resource_type, resource, decision))
        if not decision.allowed:
            raise denied(decision)
        return decision

    def record(
        self, operation: str, resource_type: str | None, resource: str | None, decision: Decision
    ) -> None:
        self.audited.append(Audited(operation, resource_type, resource, decision))

    def changed(
        self, resource: str, before: Mapping[str, Any] | None, after: Mapping[str, Any] | None
    ) -> None:
        """Note what a write of `resource` changed (paths, no values) for its AuditEvent."""
        self.changes[resource] = changes.encode(changes.diff(before, after))

    def record_workflow(
        self, operation: str, resource: str | None, why: str, patients: Iterable[str] = ()
    ) -> None:
        """A write or read a workflow made as the server, after deciding it may: audited in the
        caller's name (the patients named make it readable in their compartments)."""
        resource_type = resource.split("/", 1)[0] if resource else None
        decision = Decision(allowed=True, explanation=why, compartments=frozenset(patients))
        self.audited.append(Audited(operation, resource_type, resource, decision))


def _parts(decision: Decision, resource_type: str) -> tuple[GrantPart, ...]:
    """The parts of compartments a Consent opens, as the SQL filter holds them."""
    return tuple(
        sorted(
            GrantPart(p.compartment, p.selection.every, tuple(sorted(p.selection.ids)))
            for p in decision.parts
        )
    )


def denied(decision: Decision) -> AccessDenied:
    reason = decision.reason or Reason.INVALID_ROLE
    return AccessDenied(reason.value, reason.message)


class AccessFilterForOperation:
    """`AccessFilter` (storage/search_sql.py) for one operation: the guard's grant of each type."""

    __slots__ = ("guard", "operation")

    def __init__(self, guard: Guard, operation: str) -> None:
        self.guard = guard
        self.operation = operation

    def grant(self, resource_type: str) -> Grant | None:
        return self.guard.grant(self.operation, resource_type)


def _scope_criteria(resource_type: str, scope: Scope) -> tuple[Any, ...]:
    try:
        return parse_search((resource_type,), list(scope.query)).criteria
    except BadRequest:
        # a granular scope this server cannot evaluate grants nothing
        raise Unauthorized(
            f"the scope filter `{scope.query}` is not a search this server supports",
            code="login",
        ) from None


# --- building the guard ---------------------------------------------------------------------

_FACTS = Statement(
    """
WITH persons AS (
    SELECT r.id, r.content FROM resources r
    WHERE r.resource_type = 'Person' AND NOT r.deleted AND (
        r.id = %(person)s OR r.id IN (
            SELECT x.id FROM search_reference x
            WHERE x.resource_type = 'Person' AND x.code = 'link'
              AND x.target_type = %(user_type)s AND x.target_id = %(user_id)s))
),
targets AS (
    SELECT x.target_type AS type, x.target_id AS id FROM search_reference x
    WHERE x.resource_type = 'Person' AND x.code = 'link' AND x.target_type IS NOT NULL
      AND x.id IN (SELECT id FROM persons)
    UNION SELECT %(user_type)s, %(user_id)s
),
related AS (
    SELECT r.id, r.content FROM resources r
    WHERE r.resource_type = 'RelatedPerson' AND NOT r.deleted
      AND r.id IN (SELECT id FROM targets WHERE type = 'RelatedPerson')
)
SELECT 'Person', id, NULL, content::text FROM persons
UNION ALL
SELECT 'RelatedPerson', id, NULL, content::text FROM related
UNION ALL
SELECT 'Patient', p.id, NULL, jsonb_build_object('birthDate', p.content -> 'birthDate')::text
FROM resources p
WHERE p.resource_type = 'Patient' AND NOT p.deleted AND p.id IN (
    SELECT x.target_id FROM search_reference x
    WHERE x.resource_type = 'RelatedPerson' AND x.code = 'patient' AND x.target_type = 'Patient'
      AND x.id IN (SELECT id FROM related))
UNION ALL
SELECT 'Consent', c.id, NULL, c.content::text FROM resources c
WHERE c.resource_type = 'Consent' AND NOT c.deleted AND c.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'Consent' AND x.code = 'patient' AND x.target_type = 'Patient'
      AND x.target_id IN (
        SELECT y.target_id FROM search_reference y
        WHERE y.resource_type = 'RelatedPerson' AND y.code = 'patient'
          AND y.target_type = 'Patient' AND y.id IN (SELECT id FROM related)))
UNION ALL
SELECT 'general-practitioner', x.id, x.target_id, NULL FROM search_reference x
JOIN resources p ON p.resource_type = 'Patient' AND p.id = x.id AND NOT p.deleted
WHERE x.resource_type = 'Patient' AND x.code = 'general-practitioner'
  AND x.target_type = 'Practitioner'
  AND x.target_id IN (SELECT id FROM targets WHERE type = 'Practitioner')
UNION ALL
SELECT 'relative', x.id, x.target_id, NULL FROM search_reference x
JOIN resources r ON r.resource_type = 'RelatedPerson' AND r.id = x.id AND NOT r.deleted
WHERE x.resource_type = 'RelatedPerson' AND x.code = 'patient' AND x.target_type = 'Patient'
  AND x.target_id IN (
    SELECT id FROM targets WHERE type = 'Patient'
    UNION
    SELECT y.target_id FROM search_reference y
    WHERE y.resource_type = 'RelatedPerson' AND y.code = 'patient' AND y.target_type = 'Patient'
      AND y.id IN (SELECT id FROM related))
UNION ALL
SELECT 'epoch', NULL, value::text, NULL FROM access_epoch WHERE id = 1
UNION ALL
SELECT 'CareTeam', c.id, NULL, c.content::text FROM resources c
WHERE c.resource_type = 'CareTeam' AND NOT c.deleted AND c.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'CareTeam' AND x.code = 'participant'
      AND x.target_type = 'Practitioner'
      AND x.target_id IN (SELECT id FROM targets WHERE type = 'Practitioner'))
"""
)


async def load_guard(
    conn: Connection,
    principal: Principal,
    policy: Policy,
    *,
    now: datetime,
    majority_age: int,
    emergency_bypass: bool,
    admin_role: str,
    purpose_of_use: str | None = None,
    reason: str | None = None,
    cache: FactsCache | None = None,
    optimistic: bool = False,
) -> Guard:
    """The guard of a verified principal: its identities and the facts its decisions need.
    `optimistic`: cached facts are used without reading the access epoch; the guard's
    `pending_epoch` says so, and the caller must verify them (Guard.verify)."""

    def guard(
        account: str,
        identities: tuple[Identity, ...],
        facts: Facts,
        pending: int | None = None,
        decisions: dict[tuple[Any, ...], tuple[Decision, Grant | None]] | None = None,
    ) -> Guard:
        def reload(conn: Connection) -> Awaitable[Guard]:
            return load_guard(
                conn,
                principal,
                policy,
                now=now,
                majority_age=majority_age,
                emergency_bypass=emergency_bypass,
                admin_role=admin_role,
                cache=cache,
            )

        return Guard(
            principal=principal,
            account=account,
            identities=identities,
            facts=facts,
            policy=policy,
            purpose_of_use=purpose_of_use,
            reason=reason,
            pending_epoch=pending,
            _reload=reload,
            _decisions={} if decisions is None else decisions,
        )

    no_facts = Facts(now=now, majority_age=majority_age, emergency_bypass=emergency_bypass)
    if admin_role and admin_role in _roles(principal.claims):
        account = f"Admin/{principal.subject}"
        return guard(account, (Identity(account),), no_facts)
    if principal.is_system:
        account = f"System/{principal.client_id or principal.subject}"
        return guard(account, (Identity(account),), no_facts)
    if principal.fhir_user is None:
        raise Unauthorized("the token names no user (`fhirUser`) and has no `system/` scope")
    user = principal.fhir_user
    # cached facts hold until one of their periods starts or ends (FactsCache.get)
    cached = cache.get(user, now) if cache is not None else None
    pending = None
    if cached is not None and optimistic:
        pending, identities, facts, decisions = cached
        RELATIONSHIP_CACHE_HITS.inc()
    elif cached is not None and cached[0] == await repository.access_epoch(conn):
        _, identities, facts, decisions = cached
        RELATIONSHIP_CACHE_HITS.inc()
    else:
        user_type, user_id = user.split("/", 1)
        rows = await fetch_all(
            conn,
            _FACTS,
            {
                "person": user_id if user_type == "Person" else None,
                "user_type": user_type,
                "user_id": user_id,
            },
        )
        epoch, identities, facts, changes_at = _facts(user, rows, no_facts)
        decisions = {}
        if cache is not None:
            cache.put(user, now, (epoch, identities, facts, decisions), changes_at)
    return guard(user, identities, facts, pending, decisions)


# (epoch, identities, facts, the decisions made from them)
CacheEntry = tuple[
    int, tuple[Identity, ...], Facts, dict[tuple[Any, ...], tuple[Decision, Grant | None]]
]


async def as_user(
    conn: Connection,
    caller: Guard,
    user: str,
    scope: str,
    *,
    now: datetime,
    purpose_of_use: str | None = None,
    reason: str | None = None,
) -> Guard:
    """The guard `user` would have with a token of its own carrying `scope` at `now`: for
    answering what it may do ($explain-access, relationship verification). Its facts are
    loaded fresh (the caller's cached facts may have been loaded earlier: never their `now`)."""
    principal = principal_from_claims({"sub": user, "fhirUser": user, "scope": scope})
    facts = caller.facts
    return await load_guard(
        conn,
        principal,
        caller.policy,
        now=now,
        majority_age=facts.majority_age,
        emergency_bypass=facts.emergency_bypass,
        admin_role="",
        purpose_of_use=purpose_of_use,
        reason=reason,
    )


class FactsCache:
    """Facts by user and UTC day, with the access epoch they were loaded at (see the module's
    docstring). An entry expires at the first instant after its load at which one of its
    periods (RelatedPerson, Consent provisions, CareTeam and participants) starts or ends, so
    the decisions made from it, which depend on nothing else, stay right while it lives; and
    after `ttl_seconds` (`RELATIONSHIP_TTL`) whatever the epoch says."""

    def __init__(self, size: int = 10_000, ttl_seconds: float = 2_592_000) -> None:
        self.size = size
        self.ttl_seconds = ttl_seconds
        self._entries: dict[tuple[str, date], tuple[float, datetime | None, CacheEntry]] = {}

    def get(self, user: str, now: datetime) -> CacheEntry | None:
        key = (user, now.date())
        found = self._entries.get(key)
        if found is None:
            return None
        loaded, changes_at, entry = found
        if time.monotonic() - loaded > self.ttl_seconds or (
            changes_at is not None and now >= changes_at
        ):
            del self._entries[key]
            return None
        return entry

    def put(
        self, user: str, now: datetime, entry: CacheEntry, changes_at: datetime | None = None
    ) -> None:
        if len(self._entries) >= self.size:
            self._entries.clear()
        self._entries[(user, now.date())] = (time.monotonic(), changes_at, entry)


def _roles(claims: Mapping[str, Any]) -> list[str]:
    roles = claims.get("roles", [])
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []


def _facts(
    fhir_user: str, rows: Iterable[tuple[Any, ...]], base: Facts
) -> tuple[int, tuple[Identity, ...], Facts, datetime | None]:
    """The epoch, identities and facts of the rows, and the first instant after `base.now` at
    which one of their periods starts or ends (the facts' decisions hold until then)."""
    # the token's own user is verified by the identity provider; Person links carry a level
    assurance: dict[str, bool] = {}
    if not fhir_user.startswith("Person/"):
        assurance[fhir_user] = True
    related: dict[str, RelatedPersonFact] = {}
    births: dict[str, date | None] = {}
    consents: list[ConsentFact] = []
    care: dict[str, set[str]] = {}
    care_teams: list[dict[str, Any]] = []
    relatives: dict[str, str] = {}
    windows: list[Window] = []
    epoch = 0
    for kind, id, extra, text in rows:
        content = orjson.loads(text) if text is not None else {}
        if kind == "epoch":
            epoch = int(extra)
        elif kind == "Person":
            if content.get("active") is False:
                continue
            for link in content.get("link", ()):
                target = reference_of(link.get("target"))
                if target is None or target.split("/")[0] == "Person":
                    continue
                verified = link.get("assurance") in VERIFIED_ASSURANCE
                assurance[target] = assurance.get(target, False) or verified
        elif kind == "RelatedPerson":
            link = related[f"RelatedPerson/{id}"] = _related_person(id, content)
            windows.append(link.period)
        elif kind == "Patient":
            births[f"Patient/{id}"] = earliest_date(content.get("birthDate"))
        elif kind == "Consent":
            consent = read_consent(id, content)
            consents.append(consent)
            windows.extend(consent.windows)
        elif kind == "general-practitioner":
            care.setdefault(f"Practitioner/{extra}", set()).add(f"Patient/{id}")
        elif kind == "CareTeam":
            care_teams.append(content)
        elif kind == "relative":
            relatives[f"RelatedPerson/{id}"] = f"Patient/{extra}"
    for team in care_teams:
        _add_care_team(team, base.now, care, windows)
    identities = tuple(
        Identity(reference, verified=verified)
        for reference, verified in sorted(assurance.items())
        if reference.split("/")[0] in {"Patient", "RelatedPerson", "Practitioner"}
    )
    facts = Facts(
        now=base.now,
        related_persons=related,
        birth_dates=births,
        consents=tuple(consents),
        care={k: frozenset(v) for k, v in care.items()},
        relatives=relatives,
        majority_age=base.majority_age,
        emergency_bypass=base.emergency_bypass,
    )
    return epoch, identities, facts, next_change(windows, base.now)


def earliest_date(value: Any) -> date | None:
    """The earliest day a FHIR date can mean (`2010` is 2010-01-01): the oldest the person can
    be, so a partial birth date never makes anyone a minor for longer than they are."""
    if not isinstance(value, str) or len(value) < 4:
        return None
    parts = [int(p) for p in value[:10].split("-")]
    year, month, day = [*parts, 1, 1][:3]
    return date(year, month, day)


def _codes(concepts: Any) -> frozenset[str]:
    codes: set[str] = set()
    for concept in concepts if isinstance(concepts, list) else [concepts]:
        if isinstance(concept, dict):
            for coding in concept.get("coding", ()):
                if isinstance(coding, dict) and isinstance(coding.get("code"), str):
                    codes.add(coding["code"])
    return frozenset(codes)


def _related_person(id: str, content: dict[str, Any]) -> RelatedPersonFact:
    return RelatedPersonFact(
        reference=f"RelatedPerson/{id}",
        patient=reference_of(content.get("patient")) or "",
        relationships=_codes(content.get("relationship", [])),
        active=content.get("active") is not False,
        period=window(content.get("period")),
    )


def _add_care_team(
    team: dict[str, Any], now: datetime, care: dict[str, set[str]], windows: list[Window]
) -> None:
    """The practitioners a CareTeam gives its patient to now: an active team (its own
    `period` covering now), participants whose `period` covers now."""
    if team.get("status") not in (None, "active"):
        return
    patient = reference_of(team.get("subject"))
    if patient is None or not patient.startswith("Patient/"):
        return
    period = window(team.get("period"))
    windows.append(period)
    if not period.covers(now):
        return
    for participant in team.get("participant", ()):
        member = reference_of(participant.get("member"))
        if member is None or not member.startswith("Practitioner/"):
            continue
        joined = window(participant.get("period"))
        windows.append(joined)
        if joined.covers(now):
            care.setdefault(member, set()).add(patient)


# --- checks the interactions make --------------------------------------------------------------


def unrestricted(guard: Guard, operation: str, resource_type: str) -> bool:
    """Whether the caller sees every resource of the type (System, Admin): it alone may learn
    that a resource does not exist."""
    grant = guard.access(operation).grant(resource_type)
    return grant is not None and grant.unrestricted


def hidden(guard: Guard, operation: str, resource_type: str, id: str) -> AccessDenied:
    """The answer about a resource outside what the caller may see: the same 403 whether or not
    it exists (DESIGN.md 5.5)."""
    decision = guard.type_decision(operation, resource_type)
    if decision.allowed:
        decision = outside(decision)
    guard.record(operation, resource_type, f"{resource_type}/{id}", decision)
    return denied(decision)


def outside(allowed: Decision) -> Decision:
    """The denial for a resource outside an allowed decision's filter."""
    if allowed.creators and not allowed.compartments and not allowed.everything:
        return Decision(
            allowed=False,
            rule=allowed.rule,
            reason=Reason.UNVERIFIED_LINK,
            explanation="an unverified link sees only what it created",
        )
    return Decision(
        allowed=False,
        rule=allowed.rule,
        reason=Reason.INVALID_COMPARTMENT,
        explanation="the resource is outside the permitted compartments",
    )


def check_type(guard: Guard, operation: str, resource_type: str) -> None:
    """A search or type history: 403 when the caller may see nothing of the type."""
    decision = guard.type_decision(operation, resource_type)
    guard.record(operation, resource_type, None, decision)
    if not decision.allowed:
        raise denied(decision)


def check_stored(
    guard: Guard,
    operation: str,
    resource_type: str,
    id: str,
    compartments: Iterable[str],
    created_by: str | None,
) -> Decision:
    """An update, patch or delete of the stored version: it must be permitted as it is."""
    return guard.require(
        operation,
        resource_type,
        target=Target(frozenset(compartments), created_by, id=id),
        resource=f"{resource_type}/{id}",
    )


def check_result(
    guard: Guard,
    operation: str,
    version: Any,
    created_by: str | None,
) -> Decision:
    """The version a create, update or patch would write (a `NewVersion`): it must be permitted
    too, so nobody moves a resource into or out of a compartment; scopes narrow as for reads."""
    resource_type: str = version.resource_type
    decision = guard.require(
        operation,
        resource_type,
        target=Target(
            frozenset(version.compartments), created_by, _grants_to(version), id=version.id
        ),
        resource=f"{resource_type}/{version.id}",
    )
    grant = guard.grant(operation, resource_type)
    outside_scope = grant is None or (
        (grant.within is not None and grant.within not in version.compartments)
        or (bool(grant.criteria) and not _index_matches(version.index, grant.criteria))
    )
    if outside_scope:
        refused = Decision(
            allowed=False,
            rule=decision.rule,
            reason=Reason.INSUFFICIENT_SCOPE,
            explanation="the token's scopes do not cover this resource",
        )
        guard.record(operation, resource_type, f"{resource_type}/{version.id}", refused)
        raise denied(refused)
    return decision


def _grants_to(version: Any) -> frozenset[str]:
    """Whom a Consent may grant access to: the `actor` references of every provision, nested
    ones included (a relative may not name itself anywhere in a Consent it writes)."""
    if version.resource_type != "Consent" or version.content is None:
        return frozenset()
    return consent_actors(orjson.loads(version.content).get("provision"))


def consent_actors(provision: Any) -> frozenset[str]:
    """The actor references of a Consent provision and all its nested provisions."""
    found: set[str] = set()
    pending = [provision]
    while pending:
        item = pending.pop()
        if not isinstance(item, dict):
            continue
        for actor in item.get("actor", ()) if isinstance(item.get("actor"), list) else ():
            if isinstance(actor, dict) and (ref := reference_of(actor.get("reference"))):
                found.add(ref)
        nested = item.get("provision")
        if isinstance(nested, list):
            pending.extend(nested)
    return frozenset(found)


def _index_matches(index: Any, alternatives: tuple[tuple[Any, ...], ...]) -> bool:
    """Whether a resource's token search values satisfy one of a granular scope's conjunctions
    (`category=laboratory`); other kinds of criteria are not evaluated on writes and refuse."""
    tokens = index.token if index is not None else []

    def one(criterion: Any) -> bool:
        if criterion.param.type != "token" or criterion.modifier or criterion.chain:
            return False
        for value in criterion.values:
            system, bar, code = value.rpartition("|")
            for row_code, row_system, row_value, _ in tokens:
                if row_code != criterion.param.code or row_value != code:
                    continue
                if not bar or row_system in (system or None, None):
                    return True
        return False

    return any(all(one(c) for c in alternative) for alternative in alternatives)


def protect_meta(guard: Guard, resource: dict[str, Any], stored: dict[str, Any] | None) -> None:
    """`meta.security` and `meta.tag` are labels that other systems act on: from a
    non-privileged caller they are ignored, the stored labels kept (none on a create).
    `meta.versionId` and `meta.lastUpdated` are always the server's."""
    if guard.privileged:
        return
    meta = resource.get("meta")
    if not isinstance(meta, dict):
        meta = {}
    kept = stored.get("meta", {}) if stored else {}
    for name in ("security", "tag"):
        meta.pop(name, None)
        if name in kept:
            meta[name] = kept[name]
    resource["meta"] = meta
    if not meta:
        resource.pop("meta")


# Fields that grant access (DESIGN.md 5.2) that a non-privileged caller may not change on a
# resource it may otherwise write.
_GRANTING_FIELDS = {"Patient": ("link",)}


def protect_links(guard: Guard, resource: dict[str, Any], stored: dict[str, Any] | None) -> None:
    if guard.privileged:
        return
    for name in _GRANTING_FIELDS.get(resource.get("resourceType", ""), ()):
        before = stored.get(name) if stored else None
        if resource.get(name) != before:
            refused = Decision(
                allowed=False,
                reason=Reason.INVALID_ROLE,
                explanation=f"`{resource['resourceType']}.{name}` is written by the family workflow",
            )
            guard.record("update", resource["resourceType"], None, refused)
            raise denied(refused)
