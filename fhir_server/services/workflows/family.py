"""The family workflow: `$add-dependent`, `$remove-dependent` and `$family` on a primary Patient
(docs/family.md).

A family link is a RelatedPerson that stands for the primary in relation to the dependent
(`RelatedPerson.patient` is the dependent, its relationship is the primary's role: a parent for a
CHILD), and a link from the primary's Person to it: with that, the primary's token (fhirUser
`Patient/primary`) acts as that RelatedPerson, and the compartment engine decides the rest
(a minor's record fully, an adult's demographics, more by Consent). A spouse is linked both ways.
Everything one request writes is in one transaction, written by the server itself (these are
the fields that grant access: DESIGN.md 5.2) and audited in the caller's name, once the caller is
the primary and its token's scopes grant those writes (policy AND scope). What the workflow shows
(`$family`) and the Coverage it ends (`$remove-dependent`) are read and written as the caller,
through the engine's SQL filter and checks, like any FHIR read, search or update.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import orjson

from compartments.engine import Decision, Request, Target, decide, first_foreign
from compartments.facts import earliest_date
from compartments.periods import format_instant, window
from compartments.policy import Reason
from compartments.references import reference_of
from fhir_server.clients.registry import ClientRegistry
from fhir_server.errors import AccessDenied, BadRequest, Conflict, NotFound, Unprocessable
from fhir_server.search.query import parse_search
from fhir_server.services.access.enforce import (
    patients_among,
    require_workflow_scope,
    workflow_scope,
)
from fhir_server.services.access.guard import Guard, denied
from fhir_server.services.context import Context
from fhir_server.services.formats.parameters import parameter_values
from fhir_server.services.interactions import conditional, create
from fhir_server.services.interactions.versions import new_version, parse_json
from fhir_server.services.interactions.writing import lock_stored, write_next
from fhir_server.storage import family as family_storage
from fhir_server.storage import repository
from fhir_server.storage.repository import NewVersion
from fhir_server.storage.search_sql import search_statement, search_types
from fhir_server.storage.sql import Connection, fetch_all

V3 = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"
# Person.link assurance levels that count as verified (DESIGN.md 5.2).
VERIFIED = frozenset({"level3", "level4"})
# The most Coverage resources of one member that `$family` shows (and `$remove-dependent` ends).
MAX_COVERAGE = 100
V2_0131 = "http://terminology.hl7.org/CodeSystem/v2-0131"
# The relationship as the primary asked for it ("CHILD": the dependent is my child), kept on the
# RelatedPerson next to the standard code of the primary's own role.
FAMILY_SYSTEM = "urn:fhir-server:family-relationship"
# The primary Patient a family RelatedPerson stands for.
PRIMARY_EXTENSION = "urn:fhir-server:StructureDefinition/family-primary"
# relationship asked for -> the primary's role towards the dependent (system, code, display)
ROLES: dict[str, tuple[str, str, str]] = {
    "SPOUSE": (V3, "SPS", "spouse"),
    "CHILD": (V3, "PRN", "parent"),
    "PARENT": (V3, "CHILD", "child"),
    "SIBLING": (V3, "SIB", "sibling"),
    "GUARDIAN": (V3, "GUARD", "guardian"),  # the primary is the dependent's legal guardian
    "OTHER": (V2_0131, "O", "Other"),
}


@dataclass(frozen=True, slots=True)
class FamilyLink:
    """A family RelatedPerson: `primary` stands in `relationship` to `dependent`."""

    related_person: str
    primary: str
    dependent: str
    relationship: str  # as asked: SPOUSE, CHILD, ...
    active: bool


def require_primary(guard: Guard, primary: str) -> None:
    """Only the primary patient (verified) or a System/Admin caller runs the family workflow."""
    if guard.privileged:
        return
    if any(i.reference == primary and i.verified for i in guard.identities):
        return
    decision = Decision(
        allowed=False,
        explanation=f"only {primary} (or a system caller) manages {primary}'s family",
    )
    guard.record("update", "Patient", primary, decision)
    raise AccessDenied("invalid_role", "Invalid role")


def require_manager(guard: Guard, primary: str) -> None:
    """`$add-dependent`: the primary (or a system caller) whose token may create the family's
    RelatedPersons for the primary (a `patient/` scope only in the primary's own launch
    context); checked before anything is looked up or written."""
    require_primary(guard, primary)
    require_workflow_scope(guard, "create", "RelatedPerson", primary, "$add-dependent")


def require_viewer(guard: Guard, primary: str) -> None:
    """`$family`, GraphQL `me`: the primary (or a system caller) whose token may read Patient
    and RelatedPerson resources for the primary; what is shown of each member is then read
    through the caller's own grants."""
    require_primary(guard, primary)
    for resource_type in ("Patient", "RelatedPerson"):
        require_workflow_scope(guard, "read", resource_type, primary, "$family")


def check_new_dependent(guard: Guard, version: NewVersion) -> None:
    """The new dependent is written by the server, but its content comes from the caller (or
    the Client Registry on its behalf): like any write of a non-privileged caller, it may not
    land in anyone else's record (`Patient.link` would put it in the Patient or RelatedPerson
    compartment of whomever it names, the primary included)."""
    if guard.privileged:
        return
    dependent = f"Patient/{version.id}"
    stranger = first_foreign(version.compartments, {dependent}, {})
    if stranger is None:
        return
    decision = Decision(
        allowed=False,
        reason=Reason.FOREIGN_COMPARTMENT,
        explanation=f"the new dependent would be in the compartment of `{stranger}`",
    )
    guard.record("create", "Patient", dependent, decision)
    raise denied(decision)


def _age(born: date | None, today: date) -> int | None:
    if born is None:
        return None
    return today.year - born.year - ((today.month, today.day) < (born.month, born.day))


async def patient_content(conn: Connection, reference: str) -> dict[str, Any]:
    type_, _, id = reference.partition("/")
    found = await repository.read_current(conn, type_, id)
    if found is None or found.content is None:
        raise NotFound(f"`{reference}` is not known")
    content: dict[str, Any] = parse_json(found.content)
    return content


async def family_links(conn: Connection, now: datetime) -> list[FamilyLink]:
    """Every RelatedPerson the family workflow made (the parent-child graph is checked whole);
    a link is active until its `period` ends (as an instant, at `now`)."""
    rows = await family_storage.related_persons_coded(conn, FAMILY_SYSTEM)
    links = []
    for id, text in rows:
        content = orjson.loads(text)
        link = _link(id, content, now)
        if link is not None:
            links.append(link)
    return links


def _link(id: str, content: dict[str, Any], now: datetime) -> FamilyLink | None:
    primary = next(
        (
            reference_of(e.get("valueReference"))
            for e in content.get("extension", ())
            if e.get("url") == PRIMARY_EXTENSION
        ),
        None,
    )
    relationship = next(
        (
            c["code"]
            for concept in content.get("relationship", ())
            for c in concept.get("coding", ())
            if c.get("system") == FAMILY_SYSTEM
        ),
        None,
    )
    dependent = reference_of(content.get("patient"))
    if primary is None or relationship is None or dependent is None:
        return None
    # not yet ended counts (a link that starts later still binds the family rules)
    end = window(content.get("period")).end
    return FamilyLink(
        related_person=f"RelatedPerson/{id}",
        primary=primary,
        dependent=dependent,
        relationship=relationship,
        active=content.get("active") is not False and (end is None or now < end),
    )


def parent_edges(links: Iterable[FamilyLink]) -> set[tuple[str, str]]:
    """(parent, child) pairs the active family links state."""
    edges = set()
    for link in links:
        if not link.active:
            continue
        if link.relationship == "CHILD":
            edges.add((link.primary, link.dependent))
        elif link.relationship == "PARENT":
            edges.add((link.dependent, link.primary))
    return edges


def makes_cycle(edges: set[tuple[str, str]], parent: str, child: str) -> bool:
    """Whether adding parent -> child closes a loop of parent-child links of any length."""
    children: dict[str, set[str]] = {}
    for p, c in edges:
        children.setdefault(p, set()).add(c)
    seen, frontier = {child}, [child]
    while frontier:
        node = frontier.pop()
        if node == parent:
            return True
        for nxt in children.get(node, ()):
            if nxt not in seen:
                seen.add(nxt)
                frontier.append(nxt)
    return False


def check_rules(
    relationship: str,
    primary: str,
    dependent: str,
    primary_age: int | None,
    dependent_age: int | None,
    links: list[FamilyLink],
    *,
    majority_age: int,
) -> None:
    """The rules of adding a dependent; each refusal names its rule (422). Spouses are both of
    age: `majority_age` (the `MAJORITY_AGE` setting, as for the engine's minors) or older."""

    def refuse(rule: str, message: str) -> Unprocessable:
        return Unprocessable(f"{rule}: {message}", code="business-rule")

    if primary == dependent:
        raise refuse("no-self", "a patient cannot add themselves as a dependent")
    if any(
        link.active and link.primary == primary and link.dependent == dependent for link in links
    ):
        raise refuse("already-a-dependent", f"`{dependent}` is already a dependent of `{primary}`")
    if relationship == "SPOUSE" and (
        primary_age is None
        or dependent_age is None
        or min(primary_age, dependent_age) < majority_age
    ):
        raise refuse(
            "spouse-age",
            f"both spouses must be {majority_age} or older (with a known birth date)",
        )
    if relationship in {"CHILD", "PARENT"}:
        if primary_age is None or dependent_age is None:
            raise refuse("birth-dates", "a parent and child both need a birth date")
        if relationship == "CHILD" and dependent_age >= primary_age:
            raise refuse("child-younger", "a child must be younger than the parent")
        if relationship == "PARENT" and dependent_age <= primary_age:
            raise refuse("parent-older", "a parent must be older than the child")
        parent, child = (primary, dependent) if relationship == "CHILD" else (dependent, primary)
        if makes_cycle(parent_edges(links), parent, child):
            raise refuse("no-cycle", "this would make a circular chain of parents and children")


def _related_person(
    primary: str, primary_content: dict[str, Any], dependent: str, relationship: str, today: date
) -> dict[str, Any]:
    system, code, display = ROLES[relationship]
    resource: dict[str, Any] = {
        "resourceType": "RelatedPerson",
        "extension": [{"url": PRIMARY_EXTENSION, "valueReference": {"reference": primary}}],
        "active": True,
        "patient": {"reference": dependent},
        "relationship": [
            {"coding": [{"system": system, "code": code, "display": display}]},
            {"coding": [{"system": FAMILY_SYSTEM, "code": relationship}]},
        ],
        "period": {"start": today.isoformat()},
    }
    for name in ("name", "telecom", "gender", "birthDate", "address"):
        if name in primary_content:
            resource[name] = primary_content[name]
    return resource


async def _link_person(
    ctx: Context,
    conn: Connection,
    primary: str,
    patient: str,
    related_person: str,
    assurance: str,
) -> str:
    """Add `related_person` to the Person of `patient` (made now if there is none), as the
    server, once the caller's scopes for `primary`'s family grant that write."""
    server = ctx.as_server()
    found = await family_storage.person_of(conn, patient.split("/", 1)[1])
    link = {"target": {"reference": related_person}, "assurance": assurance}
    operation = "create" if found is None else "update"
    require_workflow_scope(ctx.guard, operation, "Person", primary, "$add-dependent")
    if found is None:
        person = {
            "resourceType": "Person",
            "active": True,
            "link": [{"target": {"reference": patient}, "assurance": "level4"}, link],
        }
        version = create.creation(server, person, create.new_id(), method="POST")
        await repository.insert_new(conn, version)
        return f"Person/{version.id}"
    id, text = found
    person = orjson.loads(text)
    person["link"] = [*person.get("link", []), link]
    await rewrite(server, conn, "Person", id, person)
    return f"Person/{id}"


@dataclass(frozen=True, slots=True)
class AddRequest:
    relationship: str
    national_id: str | None
    demographics: dict[str, Any] | None


def add_request(body: Any) -> AddRequest:
    """The parameters of `$add-dependent`, or 400."""
    values = parameter_values(body, "this operation")
    relationship = values.get("relationship")
    if relationship not in ROLES:
        raise BadRequest(
            f"`relationship` must be one of {', '.join(ROLES)}", expression=["relationship"]
        )
    national_id = values.get("nationalId")
    demographics = values.get("dependent")
    if national_id is not None and not isinstance(national_id, str):
        raise BadRequest("`nationalId` must be a string", expression=["nationalId"])
    if demographics is not None and not (
        isinstance(demographics, dict) and demographics.get("resourceType") == "Patient"
    ):
        raise BadRequest("`dependent` must be a Patient resource", expression=["dependent"])
    if national_id is None and demographics is None:
        raise BadRequest("give the dependent's `nationalId` or its demographics (`dependent`)")
    return AddRequest(relationship, national_id, demographics)


async def local_dependent(ctx: Context, conn: Connection, national_id: str | None) -> str | None:
    """The Patient here with this national id (`Patient/id`), or None."""
    if national_id is None:
        return None
    ids = await conditional.matching_ids(
        ctx.as_server(),
        conn,
        "Patient",
        f"identifier={ctx.settings.national_id_system}|{national_id}",
        limit=2,
    )
    if len(ids) > 1:
        raise Conflict(f"{len(ids)} Patients here have national id `{national_id}`")
    return f"Patient/{ids[0]}" if ids else None


async def registered_dependent(
    ctx: Context, conn: Connection, request: AddRequest, registry: ClientRegistry | None
) -> dict[str, Any] | None:
    """The Client Registry's Patient with the national id, when nobody here has it: looked up
    before the transaction opens, so that no database transaction waits on the network."""
    if request.national_id is None or registry is None:
        return None
    if await local_dependent(ctx, conn, request.national_id) is not None:
        return None
    return await registry.find_patient(ctx.settings.national_id_system, request.national_id)


async def add_dependent(
    ctx: Context,
    conn: Connection,
    primary_id: str,
    request: AddRequest,
    *,
    registered: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """`POST Patient/{primary}/$add-dependent`; the caller's transaction holds every write."""
    primary = f"Patient/{primary_id}"
    guard = ctx.guard
    require_manager(guard, primary)
    server = ctx.as_server()
    now = ctx.clock()
    today = now.date()
    primary_content = await patient_content(conn, primary)
    relationship = request.relationship

    dependent = await local_dependent(ctx, conn, request.national_id)
    created_patient = False
    if dependent is None:
        source = registered if registered is not None else request.demographics
        if source is None:
            raise Unprocessable(
                "dependent-unknown: nobody has this national id here or in the Client Registry; "
                "give the dependent's demographics as a Patient in `dependent`",
                code="not-found",
            )
        patient = {k: v for k, v in source.items() if k not in {"id", "meta"}}
        if request.national_id is not None:
            identifiers = list(patient.get("identifier", []))
            system = ctx.settings.national_id_system
            if not any(
                i.get("system") == system and i.get("value") == request.national_id
                for i in identifiers
            ):
                identifiers.append({"system": system, "value": request.national_id})
            patient["identifier"] = identifiers
        ctx.validator.validate(patient, expected_type="Patient")
        require_workflow_scope(guard, "create", "Patient", primary, "$add-dependent")
        version = create.creation(server, patient, create.new_id(), method="POST")
        check_new_dependent(guard, version)
        await repository.insert_new(conn, version)
        dependent = f"Patient/{version.id}"
        created_patient = True
        guard.record_workflow(
            "create", dependent, f"family workflow: {primary} added a new dependent"
        )
    dependent_content = await patient_content(conn, dependent)

    links = await family_links(conn, now)
    check_rules(
        relationship,
        primary,
        dependent,
        _age(earliest_date(primary_content.get("birthDate")), today),
        _age(earliest_date(dependent_content.get("birthDate")), today),
        links,
        majority_age=ctx.settings.majority_age,
    )
    # a person already on record is someone else's data: the link waits for verification
    assurance = "level3" if created_patient else ctx.settings.family_existing_link_assurance
    pairs = [(primary, primary_content, dependent, relationship)]
    # The reverse link of a spouse goes on the dependent's own Person: only for a person the
    # primary has just provided, or one linked verified. A stranger found by national id gets
    # nothing written into their account (they would act for the primary, and see the primary
    # as family, on the primary's word alone); the link waits for verification.
    if relationship == "SPOUSE" and (created_patient or assurance in VERIFIED):
        pairs.append((dependent, dependent_content, primary, "SPOUSE"))
    made: list[dict[str, Any]] = []
    for who, who_content, whom, as_ in pairs:
        resource = _related_person(who, who_content, whom, as_, today)
        version = create.creation(server, resource, create.new_id(), method="POST")
        await repository.insert_new(conn, version)
        related = f"RelatedPerson/{version.id}"
        person = await _link_person(ctx, conn, primary, who, related, assurance)
        guard.record_workflow(
            "create", related, f"family workflow: {who} is the {ROLES[as_][2]} of {whom}"
        )
        made.append(
            {
                "name": "link",
                "part": [
                    {"name": "relatedPerson", "valueReference": {"reference": related}},
                    {"name": "person", "valueReference": {"reference": person}},
                    {"name": "patient", "valueReference": {"reference": who}},
                    {"name": "dependent", "valueReference": {"reference": whom}},
                    {"name": "assurance", "valueCode": assurance},
                ],
            }
        )
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "dependent", "valueReference": {"reference": dependent}},
            {"name": "createdPatient", "valueBoolean": created_patient},
            {"name": "relationship", "valueCode": relationship},
            *made,
        ],
    }


@dataclass(frozen=True, slots=True)
class Insurance:
    """An active Coverage of a member that the caller may read."""

    id: str
    content: dict[str, Any]
    compartments: frozenset[str]  # as stored: whose records it is in

    @property
    def scheme(self) -> dict[str, Any]:
        return _scheme(self.content)


async def coverage_of(
    ctx: Context, conn: Connection, patient: str, now: datetime
) -> list[Insurance]:
    """The active Coverage resources whose beneficiary is `patient` (status active and a
    `period`, if any, covering `now` as instants: compartments/periods.py) among those the
    caller may read: a search through the caller's own grants, as `Coverage?beneficiary=`
    would be, so nothing of a Coverage the caller may not read is ever named. Each one shown
    is recorded for the audit."""
    guard = ctx.guard
    query = parse_search(
        ("Coverage",),
        [("beneficiary", patient), ("_count", str(MAX_COVERAGE))],
        max_count=MAX_COVERAGE,
    )
    grants = guard.grants("read", search_types(query))
    if grants.get("Coverage") is None:
        return []
    statement, _ = search_statement(query, grants, local_bases=ctx.local_bases, now=now)
    found = []
    for _, id, text, compartments, *_ in await fetch_all(conn, statement):
        content = orjson.loads(text)
        if content.get("status") == "active" and window(content.get("period")).covers(now):
            found.append(Insurance(id, content, frozenset(compartments)))
            guard.record(
                "read",
                "Coverage",
                f"Coverage/{id}",
                guard.type_decision("read", "Coverage"),
                patients_among(compartments),
            )
    return found


def primary_schemes(
    coverage: Iterable[Insurance], primary: str, links: Iterable[FamilyLink]
) -> list[Insurance]:
    """The Coverages that are the primary's schemes covering the dependent (what the
    specification's removal ends): those in the primary's own record (the primary is their
    policy holder, subscriber or payor) or in the record of the primary's family link to the
    dependent. A Coverage of the dependent through someone else (the other parent's scheme,
    the dependent's own) is not the primary's to end."""
    owners = {primary, *(link.related_person for link in links if link.primary == primary)}
    return [c for c in coverage if c.compartments & owners]


def _scheme(coverage: dict[str, Any]) -> dict[str, Any]:
    payor: dict[str, Any] = next(iter(coverage.get("payor", [])), {})
    return {
        "scheme": payor.get("display") or payor.get("reference") or "",
        "memberNumber": coverage.get("subscriberId") or coverage.get("dependent") or "",
        "status": coverage.get("status", ""),
    }


async def remove_dependent(
    ctx: Context, conn: Connection, primary_id: str, body: Any
) -> dict[str, Any]:
    """`POST Patient/{primary}/$remove-dependent`: soft; 409 while the dependent is covered by
    one of the primary's schemes (that the caller may read), unless `confirm` is true, which
    ends that coverage too, as an update by the caller (the engine decides each one, and a
    refusal rolls everything back). Other Coverages of the dependent are neither named nor
    touched."""
    values = parameter_values(body, "this operation")
    given = values.get("dependent")
    dependent = reference_of(given) if isinstance(given, dict) else given
    if not isinstance(dependent, str) or not dependent.startswith("Patient/"):
        raise BadRequest("`dependent` must reference a Patient", expression=["dependent"])
    confirm = values.get("confirm") is True
    primary = f"Patient/{primary_id}"
    guard = ctx.guard
    require_primary(guard, primary)
    require_workflow_scope(guard, "update", "RelatedPerson", primary, "$remove-dependent")
    server = ctx.as_server()
    now = ctx.clock()
    # ended now, to the second: an end date would last until midnight (periods.py)
    ended_at = format_instant(now)
    links = [
        link
        for link in await family_links(conn, now)
        if link.active
        and (
            (link.primary == primary and link.dependent == dependent)
            or (
                link.relationship == "SPOUSE"
                and link.primary == dependent
                and link.dependent == primary
            )
        )
    ]
    if not any(link.primary == primary for link in links):
        raise NotFound(f"`{dependent}` is not a dependent of `{primary}`")
    coverage = primary_schemes(await coverage_of(ctx, conn, dependent, now), primary, links)
    if coverage and not confirm:
        schemes = ", ".join(c.scheme["scheme"] or "(unnamed)" for c in coverage)
        raise Conflict(
            f"coverage: `{dependent}` is a beneficiary of {len(coverage)} active coverage(s) "
            f"of `{primary}` ({schemes}); send `confirm` = true to end them with the "
            "relationship",
            code="conflict",
        )
    ended: list[str] = []
    for insurance in coverage:
        # an update by the caller: the stored version and the result pass the engine and the
        # token's scopes (a Coverage it may read but not change refuses the whole removal)
        locked = await lock_stored(ctx, conn, "update", "Coverage", insurance.id)
        stored = parse_json(locked.content) if locked.content is not None else {}
        content = {
            **stored,
            "status": "cancelled",
            "period": {**stored.get("period", {}), "end": ended_at},
        }
        await write_next(
            ctx, conn, "update", "Coverage", insurance.id, locked, content, stored, method="PUT"
        )
        ended.append(f"Coverage/{insurance.id}")
    for link in links:
        type_, id = link.related_person.split("/", 1)
        found = await repository.read_current(conn, type_, id)
        assert found is not None and found.content is not None
        content = parse_json(found.content)
        content["active"] = False
        content["period"] = {**content.get("period", {}), "end": ended_at}
        await rewrite(server, conn, type_, id, content)
        guard.record_workflow(
            "update", link.related_person, f"family workflow: {primary} removed {dependent}"
        )
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "dependent", "valueReference": {"reference": dependent}},
            *(
                {"name": "ended", "valueReference": {"reference": link.related_person}}
                for link in links
            ),
            *({"name": "endedCoverage", "valueReference": {"reference": c}} for c in ended),
        ],
    }


async def rewrite(
    server: Context,
    conn: Connection,
    resource_type: str,
    id: str,
    content: dict[str, Any],
    *,
    after: int | None = None,
) -> NewVersion:
    """A new version of a stored resource, written by the server (`Context.as_server`). `after`:
    the version it follows, when the caller already holds the row's lock."""
    if after is None:
        locked = await repository.lock_current(conn, resource_type, id)
        assert locked is not None
        after = locked.version_id
    version = new_version(
        server, content, id=id, version_id=after + 1, last_updated=server.clock(), method="PUT"
    )
    await repository.write_version(conn, version)
    return version


@dataclass(frozen=True, slots=True)
class Member:
    """One member of a primary's family, as `$family` and GraphQL show it: what the family
    links say (the reference, the relationship) and, of the member's records, only what the
    caller may read through the engine."""

    patient: str
    content: dict[str, Any]  # the member's Patient resource; {} when the caller may not read it
    relationship: str
    related_person: str | None  # the caller's own link to the member, if any
    added: str | None  # the link's period.start, when the caller may read the link
    is_minor: bool | None  # None when the caller may not read the member's birth date
    access: Decision  # reading the member's clinical data, as that link
    coverage: list[tuple[str, dict[str, Any]]]  # (Coverage id, scheme, member number, status)
    # the Coverage ids among `coverage` that `$remove-dependent` would end (the primary's)
    ending: tuple[str, ...] = ()

    @property
    def readable(self) -> bool:
        return bool(self.content)


async def readable_patient(ctx: Context, conn: Connection, reference: str) -> dict[str, Any] | None:
    """A Patient as the caller may read it (the read's own SQL filter), recorded for the
    audit; None when it is outside what the caller may see."""
    guard = ctx.guard
    id = reference.split("/", 1)[1]
    stored = await repository.read_current(conn, "Patient", id, guard.grants("read", ("Patient",)))
    if stored is None or stored.deleted or stored.content is None:
        return None
    guard.record(
        "read",
        "Patient",
        reference,
        guard.type_decision("read", "Patient"),
        patients_among(stored.compartments),
    )
    content: dict[str, Any] = parse_json(stored.content)
    return content


async def family_members(ctx: Context, conn: Connection, primary_id: str) -> list[Member]:
    """The primary's family: its own links, and its spouse's children and wards (seen through
    the spouse's links, when the caller may read the spouse's record). Of each member, only
    what the caller may read through the engine: its Patient, its own link, the Coverage."""
    primary = f"Patient/{primary_id}"
    guard = ctx.guard
    require_viewer(guard, primary)
    now = ctx.clock()
    today = now.date()
    links = await family_links(conn, now)
    mine = [link for link in links if link.active and link.primary == primary]
    found: dict[str, tuple[str, str | None]] = {
        link.dependent: (link.relationship, link.related_person) for link in mine
    }
    contents: dict[str, dict[str, Any] | None] = {}
    for member in sorted(found):
        contents[member] = await readable_patient(ctx, conn, member)
    # a spouse's children are family only through a spouse the caller may read (a verified
    # link): an unverified link learns nothing of the other person's family
    spouses = {
        link.dependent
        for link in mine
        if link.relationship == "SPOUSE" and contents.get(link.dependent) is not None
    }
    for link in links:
        if (
            link.active
            and link.primary in spouses
            and link.relationship in {"CHILD", "GUARDIAN"}
            and link.dependent not in found
            and link.dependent != primary
        ):
            found[link.dependent] = (link.relationship, None)
            contents[link.dependent] = await readable_patient(ctx, conn, link.dependent)
    members = []
    related_grants = guard.grants("read", ("RelatedPerson",))
    for member, (relationship, related_person) in sorted(found.items()):
        content = contents[member]
        is_minor = None
        if content is not None:
            age = _age(earliest_date(content.get("birthDate")), today)
            is_minor = age is not None and age < guard.facts.majority_age
        added = None
        if related_person is not None:
            stored = await repository.read_current(
                conn, "RelatedPerson", related_person.split("/")[1], related_grants
            )
            if stored is not None and stored.content is not None:
                added = (parse_json(stored.content).get("period") or {}).get("start")
        coverage = await coverage_of(ctx, conn, member, now)
        ending = primary_schemes(coverage, primary, mine) if related_person else []
        members.append(
            Member(
                patient=member,
                content=content or {},
                relationship=relationship,
                related_person=related_person,
                added=added,
                is_minor=is_minor,
                access=_clinical_access(guard, member, related_person),
                coverage=[(c.id, c.scheme) for c in coverage],
                ending=tuple(c.id for c in ending),
            )
        )
    return members


async def family(ctx: Context, conn: Connection, primary_id: str) -> dict[str, Any]:
    """`GET Patient/{primary}/$family`: each member, the relationship, whether a minor, whether
    the caller can see clinical data and why, and the member's insurance coverage: of the
    member's data, only what the caller may read."""
    parameters = []
    for m in await family_members(ctx, conn, primary_id):
        parts: list[dict[str, Any]] = [
            {"name": "patient", "valueReference": _display(m.patient, m.content)},
            {"name": "relationship", "valueCode": m.relationship},
        ]
        if m.related_person:
            parts.append(
                {"name": "relatedPerson", "valueReference": {"reference": m.related_person}}
            )
        if m.is_minor is not None:
            parts.append({"name": "isMinor", "valueBoolean": m.is_minor})
        parts += [
            {"name": "canViewClinicalData", "valueBoolean": m.access.allowed},
            {"name": "why", "valueString": m.access.explanation or m.access.message},
        ]
        for id, scheme in m.coverage:
            parts.append(
                {
                    "name": "insuranceCoverage",
                    "part": [
                        {"name": "coverage", "valueReference": {"reference": f"Coverage/{id}"}},
                        *({"name": k, "valueString": v} for k, v in scheme.items()),
                    ],
                }
            )
        parameters.append({"name": "member", "part": parts})
    return {"resourceType": "Parameters", "parameter": parameters}


def display_name(patient: dict[str, Any]) -> str:
    names = patient.get("name") or []
    first = names[0] if names else {}
    text: str = first.get("text") or " ".join([*first.get("given", []), first.get("family", "")])
    return text.strip()


def _display(reference: str, patient: dict[str, Any]) -> dict[str, Any]:
    text = display_name(patient)
    return {"reference": reference, **({"display": text} if text else {})}


def _clinical_access(guard: Guard, member: str, related_person: str | None) -> Decision:
    """What the engine says of the caller, as the related person of its link to the member,
    reading the member's clinical data (an Observation in the member's compartment)."""
    identity = next((i for i in guard.identities if i.reference == related_person), None)
    if identity is None:
        return Decision(
            allowed=False, explanation="family through a spouse's link, not a link of your own"
        )
    request = Request(
        (identity,),
        "read",
        "Observation",
        target=Target(frozenset({member, identity.reference})),
        account=guard.account,
    )
    decision = decide(request, guard.policy, guard.facts)
    if decision.allowed and not workflow_scope(guard, "read", "Observation", member):
        # policy AND scope: the token (a `patient/` scope for someone else, no read scope)
        # does not reach the member's clinical data
        return Decision(
            allowed=False,
            rule=decision.rule,
            reason=Reason.INSUFFICIENT_SCOPE,
            explanation="the token's scopes do not reach this member's clinical data",
        )
    return decision


EMERGENCY_CONTACT = ("http://terminology.hl7.org/CodeSystem/v2-0131", "C")

MAX_CONTACTS = 100


async def emergency_contacts(ctx: Context, conn: Connection, patient_id: str) -> dict[str, Any]:
    """`GET Patient/{id}/$emergency-contacts`: the patient's active RelatedPersons whose
    relationship is emergency contact (v2-0131 `C`), each with its preferred telecom. A caller
    who may not read the patient's RelatedPersons gets 403; the search itself carries the
    caller's access filter, like any other."""
    patient = f"Patient/{patient_id}"
    guard = ctx.guard
    guard.require("read", "RelatedPerson", target=Target(frozenset({patient})), resource=patient)
    query = parse_search(
        ("RelatedPerson",),
        [
            ("patient", patient),
            ("relationship", "|".join(EMERGENCY_CONTACT)),
            ("_count", str(MAX_CONTACTS)),
        ],
        max_count=MAX_CONTACTS,
    )
    now = ctx.clock()
    grants = guard.grants("read", search_types(query))
    statement, _ = search_statement(query, grants, local_bases=ctx.local_bases, now=now)
    contacts = []
    for _, id, text, *_ in await fetch_all(conn, statement):
        content = orjson.loads(text)
        if content.get("active") is False or not window(content.get("period")).covers(now):
            continue
        telecom = preferred_telecom(content.get("telecom", []), now)
        contacts.append(
            {
                "name": "contact",
                "part": [
                    {
                        "name": "relatedPerson",
                        "valueReference": _display(f"RelatedPerson/{id}", content),
                    },
                    *([{"name": "telecom", "valueContactPoint": telecom}] if telecom else []),
                ],
            }
        )
    return {"resourceType": "Parameters", "parameter": contacts}


def preferred_telecom(telecom: list[dict[str, Any]], now: datetime) -> dict[str, Any] | None:
    """The contact point to use first: the lowest `rank` (1 is preferred), phones before
    others, only those whose `period` covers `now` (as instants)."""
    usable = [t for t in telecom if window(t.get("period")).covers(now)]
    if not usable:
        return None
    return min(
        usable,
        key=lambda t: (t.get("rank", 1_000_000), t.get("system") != "phone"),
    )
