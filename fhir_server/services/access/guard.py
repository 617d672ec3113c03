"""The caller's access for one request (the Guard): identities and facts loaded from the
database, the engine's decisions AND the token's scopes, the grants that carry them into SQL
(DESIGN.md 5), the decisions made, for the audit, and the reload of facts whose epoch moved.

The jobs around it have their own modules: the facts statement (storage/access_facts.py), the
reading of its rows into the engine's facts (compartments/facts.py), the facts cache
(services/access/cache.py) and the checks the interactions make (services/access/enforce.py).
Storage never asks the Guard anything: the services compute the grants a statement needs
(`Guard.grants`) and hand them down as values.

Facts are loaded in one statement together with their access epoch: the keys of the nodes the
facts were read through and the sum of their counters, which every write of a fact-bearing
resource (Person, RelatedPerson, Consent, CareTeam, Patient) that touches one of those nodes
bumps in its own transaction (storage/access_facts.py). A server reuses the facts it loaded for a
user while the epoch of those keys, read at the start of each request, is unchanged: a revoked
Consent, an ended RelatedPerson or a lowered assurance level counts from the very next request,
on every server. Cached facts also expire at the first
instant one of their periods starts or ends (a Consent's `provision.period.end` an hour from
now ends the entry in an hour), and at the end of the UTC day, so a child's 18th birthday
counts the day it comes. System and Admin callers load nothing (their
policy rule is `allow`, narrowed by scopes).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from capability.definitions import resource_types
from compartments.engine import Decision, Facts, Identity, Request, Target, decide
from compartments.facts import Epoch, read_facts
from compartments.policy import Policy, Reason
from compartments.references import NO_BASES
from fhir_server.auth.scopes import Scope, granted
from fhir_server.auth.tokens import Principal, principal_from_claims
from fhir_server.errors import AccessDenied, BadRequest, Unauthorized
from fhir_server.metrics import RELATIONSHIP_CACHE_HITS
from fhir_server.search.grants import UNRESTRICTED, Grant, GrantPart
from fhir_server.search.query import parse_search
from fhir_server.services.access.cache import FactsCache
from fhir_server.services.formats import changes
from fhir_server.storage import repository
from fhir_server.storage.access_facts import fetch_access_facts
from fhir_server.storage.sql import Connection

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
    # the compartments of the data the operation touched (the resource's own, a search's
    # results): the AuditEvent names only these patients, never everyone the caller may see
    patients: frozenset[str] = frozenset()


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
    # "Patient/1" -> what this request's write of it changed (services/formats/changes.py), for the audit
    changes: dict[str, str] = field(default_factory=dict)
    # Facts taken from the cache without reading the access epoch yet (`load_guard(...,
    # optimistic=True)`): the epoch they were loaded at. The caller must `verify` them, or read
    # the epoch of its keys in the same statement as its data (services/interactions/read.py),
    # before answering.
    pending_epoch: Epoch | None = None
    # The epoch the facts were loaded at (None for System and Admin callers, who load none): a
    # read served by a replica checks it again on the primary after its data (api/routing.py).
    epoch: Epoch | None = None
    # this server's base URLs, under which the facts' absolute references were read as local
    local_bases: frozenset[str] = NO_BASES
    _reload: Callable[[Connection], Awaitable[Guard]] | None = None
    # (operation, type, purpose, reason, scopes, patient) -> the decision and the grant. Shared
    # by every request whose facts come from the same cache entry: they depend on nothing else.
    _decisions: dict[tuple[Any, ...], tuple[Decision, Grant | None]] = field(default_factory=dict)

    async def verify(self, conn: Connection, epoch: int | None = None) -> bool:
        """Make optimistic facts certain: compare the epoch they were loaded at with the
        current one (`epoch`, if the caller read it with its data) and load them again if it
        moved. True when they were current."""
        if self.pending_epoch is None:
            return True
        keys, loaded = self.pending_epoch
        current = epoch if epoch is not None else await repository.access_epoch(conn, keys)
        if current == loaded:
            self.pending_epoch = None
            return True
        assert self._reload is not None
        fresh = await self._reload(conn)
        self.identities, self.facts, self.pending_epoch = fresh.identities, fresh.facts, None
        self.epoch = fresh.epoch
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

    def grants(self, operation: str, types: Iterable[str] | None = None) -> dict[str, Grant | None]:
        """The grant of each of `types` (None: every resource type) for `operation`: the values
        a statement of storage filters with (storage/search_sql.py `search_types` names the
        types a search needs)."""
        return {
            t: self._decided(operation, t)[1]
            for t in (resource_types() if types is None else types)
        }

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
        touched = target.compartments if target is not None else frozenset()
        self.audited.append(Audited(operation, resource_type, resource, decision, touched))
        if not decision.allowed:
            raise denied(decision)
        return decision

    def record(
        self,
        operation: str,
        resource_type: str | None,
        resource: str | None,
        decision: Decision,
        patients: Iterable[str] = (),
    ) -> None:
        """A decision for the audit; `patients`: the compartments of the data it touched."""
        self.audited.append(
            Audited(operation, resource_type, resource, decision, frozenset(patients))
        )

    def touched(self, operation: str, patients: Iterable[str]) -> None:
        """The compartments a search's or history's results were in, known once it has run:
        added to the latest decision of that operation, which its AuditEvent then names."""
        for position in range(len(self.audited) - 1, -1, -1):
            audited = self.audited[position]
            if audited.operation == operation:
                self.audited[position] = replace(
                    audited, patients=audited.patients | frozenset(patients)
                )
                return

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
        named = frozenset(patients)
        decision = Decision(allowed=True, explanation=why, compartments=named)
        self.audited.append(Audited(operation, resource_type, resource, decision, named))


def _parts(decision: Decision, resource_type: str) -> tuple[GrantPart, ...]:
    """The parts of compartments a Consent opens, as the SQL filter holds them."""
    return tuple(
        sorted(
            GrantPart(
                p.compartment,
                p.selection.every,
                tuple(sorted(p.selection.ids)),
                p.where,
                parse_search((resource_type,), list(p.where)).criteria if p.where else (),
            )
            for p in decision.parts
        )
    )


def denied(decision: Decision) -> AccessDenied:
    reason = decision.reason or Reason.INVALID_ROLE
    return AccessDenied(reason.value, reason.message)


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
    local_bases: frozenset[str] = NO_BASES,
) -> Guard:
    """The guard of a verified principal: its identities and the facts its decisions need.
    `optimistic`: cached facts are used without reading the access epoch; the guard's
    `pending_epoch` says so, and the caller must verify them (Guard.verify). `local_bases`:
    this server's base URLs, under which an absolute reference in the facts is a local one
    (compartments/references.py)."""

    def guard(
        account: str,
        identities: tuple[Identity, ...],
        facts: Facts,
        pending: Epoch | None = None,
        decisions: dict[tuple[Any, ...], tuple[Decision, Grant | None]] | None = None,
        epoch: Epoch | None = None,
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
                local_bases=local_bases,
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
            epoch=epoch,
            local_bases=local_bases,
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
    cached = cache.get(user, now, local_bases) if cache is not None else None
    pending = None
    if cached is not None and optimistic:
        pending, identities, facts, decisions = cached
        epoch = pending
        RELATIONSHIP_CACHE_HITS.inc()
    elif cached is not None and cached[0].value == await repository.access_epoch(
        conn, cached[0].keys
    ):
        epoch, identities, facts, decisions = cached
        RELATIONSHIP_CACHE_HITS.inc()
    else:
        rows = await fetch_access_facts(conn, user)
        epoch, identities, facts, changes_at = read_facts(user, rows, no_facts, local_bases)
        decisions = {}
        if cache is not None:
            cache.put(user, now, (epoch, identities, facts, decisions), changes_at, local_bases)
    return guard(user, identities, facts, pending, decisions, epoch)


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
        local_bases=caller.local_bases,
    )


def _roles(claims: Mapping[str, Any]) -> list[str]:
    roles = claims.get("roles", [])
    return [r for r in roles if isinstance(r, str)] if isinstance(roles, list) else []
