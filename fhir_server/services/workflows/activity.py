"""Who looked at my record (issue 14, item 4): the AuditEvents about the records a signed-in
person may see the activity of, in plain words, filtered and paged, and exported.

Whose activity: the person's own record, and the records of the minors the engine gives them
as a parent or guardian, whole (`subjects`, read off `launch_choices.choices`, itself the
engine's `reach`). An adult's record is not among them, whatever that adult shares: the
activity of an adult's record is theirs.

The events are found by the FHIR search of AuditEvent, run as the signed-in person
(`entity=` those records, `agent=`, `date=`, `_sort=-date`, a keyset `_page`): the guard's grant
for AuditEvent is in the statement's WHERE beside the `entity=` filter, so a row the person may
not see is never fetched, and paging stays right. The names of the people who acted are read the
same way (one search per type), so a name the person may not read is shown as a role only.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Final
from urllib.parse import parse_qs, urlsplit

import orjson

from compartments.engine import PARENT_OR_GUARDIAN
from fhir_server.errors import BadRequest
from fhir_server.services.context import Context
from fhir_server.services.formats.bundles import bundle
from fhir_server.services.interactions.search import search
from fhir_server.services.workflows.launch_choices import Choice, choices, display_name
from fhir_server.services.workflows.relationships import ROLE_NAMES
from fhir_server.storage.sql import Connection

PAGE_SIZE: Final = 50
# Rows in one export at most (newest first): an export is a page of this size.
EXPORT_SIZE: Final = 1000
BREAK_GLASS: Final = "BTG"
# The resource types people ask about, in words; any other is shown by its FHIR name.
TYPE_WORDS: Final = {
    "Patient": "contact details",
    "Observation": "observations and lab results",
    "Condition": "conditions",
    "AllergyIntolerance": "allergies",
    "MedicationRequest": "prescriptions",
    "MedicationStatement": "medications",
    "Immunization": "immunizations",
    "Encounter": "visits",
    "Appointment": "appointments",
    "Procedure": "procedures",
    "DiagnosticReport": "test reports",
    "DocumentReference": "documents",
    "CarePlan": "care plans",
    "CareTeam": "care team",
    "Consent": "sharing (consents)",
    "RelatedPerson": "family links",
    "Person": "account links",
    "AuditEvent": "activity log",
    "Coverage": "insurance",
}
ACTIONS: Final = {
    "read": "read",
    "vread": "read",
    "search-type": "searched",
    "search": "searched",
    "history-instance": "read the history of",
    "history": "read the history of",
    "create": "added",
    "update": "changed",
    "patch": "changed",
    "delete": "deleted",
}
# A cell a spreadsheet would run as a formula (CSV injection): it is written with a quote first.
_FORMULA_STARTS: Final = ("=", "+", "-", "@", "\t", "\r")
CSV_COLUMNS: Final = (
    "recorded",
    "record of",
    "who",
    "role",
    "action",
    "data",
    "grant",
    "outcome",
    "break-glass reason",
    "event",
)


@dataclass(frozen=True, slots=True)
class Subject:
    """A record whose activity the person sees: their own, or a minor child's."""

    patient: str
    name: str
    own: bool
    until: datetime | None = None  # when a parent's view of a minor's record ends


@dataclass(frozen=True, slots=True)
class Filters:
    """The page's filters, checked (`parse_filters`)."""

    patient: str | None = None  # whose record: one of the subjects
    agent: str | None = None  # who acted: a reference
    since: date | None = None
    until: date | None = None
    page: str | None = None  # the keyset cursor of the search


@dataclass(frozen=True, slots=True)
class Entry:
    """One AuditEvent in plain words."""

    id: str
    recorded: str
    patients: tuple[str, ...]  # the names of the records it concerns
    who: str
    role: str
    agent: str | None  # the reference the "who accessed" filter takes
    action: str
    data: str
    grant: str
    allowed: bool
    emergency: bool
    reason: str | None
    event: dict[str, Any] = field(compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class Activity:
    entries: list[Entry]
    next_page: str | None


async def subjects(ctx: Context, conn: Connection, fhir_user: str) -> list[Subject]:
    """The person's own record and the minors' records the engine gives them whole as a parent
    or guardian, self first."""
    found = []
    for choice in await choices(ctx, conn, fhir_user):
        if choice.is_self:
            found.append(Subject(choice.patient, choice.name, True))
        elif _parent_of_minor(choice):
            found.append(Subject(choice.patient, choice.name, False, choice.until))
    return found


def _parent_of_minor(choice: Choice) -> bool:
    return choice.minor and choice.whole_record and bool(choice.relationships & PARENT_OR_GUARDIAN)


def parse_filters(values: dict[str, str], allowed: Sequence[Subject]) -> Filters:
    """The filters of a query string; BadRequest naming the value that is not one."""
    patient = values.get("patient") or None
    if patient is not None and patient not in {s.patient for s in allowed}:
        raise BadRequest(f"`{patient}` is not a record whose activity you can see")
    agent = values.get("agent") or None
    if agent is not None:
        kind, slash, id = agent.partition("/")
        if not slash or not kind.isalpha() or not id or len(agent) > 130 or "," in agent:
            raise BadRequest(f"`{agent}` is not a reference to a person (Type/id)")
    since, until = _date(values, "from"), _date(values, "to")
    if since is not None and until is not None and since > until:
        raise BadRequest(f"the date `from` ({since}) is after the date `to` ({until})")
    return Filters(patient, agent, since, until, values.get("page") or None)


def _date(values: dict[str, str], name: str) -> date | None:
    text = values.get(name) or None
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise BadRequest(f"`{text}` is not a date (YYYY-MM-DD) for `{name}`") from None


async def activity(
    ctx: Context,
    conn: Connection,
    allowed: Sequence[Subject],
    filters: Filters,
    *,
    count: int = PAGE_SIZE,
) -> Activity:
    """The events of one page, newest first, as the signed-in person's search finds them."""
    records = [filters.patient] if filters.patient else [s.patient for s in allowed]
    if not records:
        return Activity([], None)
    # `entity=`, not `patient=`: `patient=` also finds what the person did that touched no
    # record (the page's own lookups of names that found nothing), which is not a look at one
    params = [("entity", ",".join(records)), ("_sort", "-date"), ("_count", str(count))]
    if filters.agent:
        params.append(("agent", filters.agent))
    if filters.since:
        params.append(("date", f"ge{filters.since.isoformat()}"))
    if filters.until:
        params.append(("date", f"le{filters.until.isoformat()}"))
    if filters.page:
        params.append(("_page", filters.page))
    found = orjson.loads(await search(ctx, conn, "AuditEvent", params))
    events = [e["resource"] for e in found.get("entry", ())]
    names = await _names(ctx, conn, events, allowed)
    subjects_of = {s.patient: s for s in allowed}
    entries = [_entry(event, names, subjects_of) for event in events]
    return Activity(entries, _next_page(found))


def _next_page(found: dict[str, Any]) -> str | None:
    for link in found.get("link", ()):
        if link.get("relation") == "next":
            cursor = parse_qs(urlsplit(link["url"]).query).get("_page")
            return cursor[0] if cursor else None
    return None


async def _names(
    ctx: Context, conn: Connection, events: Iterable[dict[str, Any]], allowed: Sequence[Subject]
) -> dict[str, dict[str, Any]]:
    """The resources of the agents (and the patients behind them) that the person may read:
    one search per type, as the person, so nothing is shown that the engine would not show."""
    wanted: dict[str, set[str]] = {}
    for event in events:
        agent = event["agent"][0]
        for reference in (agent.get("who", {}).get("reference"), agent.get("altId")):
            if isinstance(reference, str) and "/" in reference:
                kind, _, id = reference.partition("/")
                if kind in {"Patient", "RelatedPerson", "Practitioner", "Organization"}:
                    wanted.setdefault(kind, set()).add(id)
    known: dict[str, dict[str, Any]] = {}
    for kind, ids in sorted(wanted.items()):
        if not ctx.guard.type_decision("search", kind).allowed:
            continue  # not a type the person may read at all (asking would be a refusal)
        params = [("_id", ",".join(sorted(ids))), ("_count", str(len(ids)))]
        found = orjson.loads(await search(ctx, conn, kind, params))
        for entry in found.get("entry", ()):
            resource = entry["resource"]
            known[f"{resource['resourceType']}/{resource['id']}"] = resource
    for subject in allowed:
        known.setdefault(subject.patient, {"resourceType": "Patient", "_name": subject.name})
    return known


def _name(resource: dict[str, Any] | None) -> str | None:
    if resource is None:
        return None
    if "_name" in resource:
        return str(resource["_name"])
    if resource.get("resourceType") == "Organization":
        return str(resource.get("name") or "") or None
    name = display_name(resource)
    return None if name == "(no name)" else name


def _relationship(related: dict[str, Any] | None) -> str:
    if related is None:
        return "family member"
    for concept in related.get("relationship", ()):
        for coding in concept.get("coding", ()):
            word = ROLE_NAMES.get(coding.get("code", ""))
            if word:
                return word
    return "family member"


def _who(event: dict[str, Any], names: dict[str, dict[str, Any]]) -> tuple[str, str, str | None]:
    """(who, role, the reference to filter by) of an event's agent."""
    agent = event["agent"][0]
    who = agent.get("who", {})
    reference = who.get("reference")
    behalf = agent.get("altId")
    if reference is None:
        system = who.get("identifier", {}).get("system", "")
        value = who.get("identifier", {}).get("value", "")
        if system.endswith(":system"):
            return value.removeprefix("System/"), "system or app", None
        if system.endswith(":admin"):
            return value.removeprefix("Admin/"), "administrator", None
        person = _name(names.get(value)) or value
        return person, "account", None
    kind = reference.split("/", 1)[0]
    if kind == "RelatedPerson":
        related = names.get(reference)
        person = _name(related) or (_name(names.get(behalf)) if behalf else None)
        return person or "a family member", _relationship(related), reference
    if kind == "Patient":
        return _name(names.get(reference)) or "a patient", "patient", reference
    if kind == "Practitioner":
        role = "practitioner"
        return _name(names.get(reference)) or f"a practitioner ({reference})", role, reference
    return _name(names.get(reference)) or reference, kind.lower(), reference


def _entry(
    event: dict[str, Any], names: dict[str, dict[str, Any]], subjects: dict[str, Subject]
) -> Entry:
    who, role, agent = _who(event, names)
    subtype = event["subtype"][0]
    security = subtype.get("system", "").endswith("oauth-event")
    code = subtype.get("code", "")
    action = f"signed in or app: {code}" if security else ACTIONS.get(code, code)
    entities = [e["what"].get("reference", "") for e in event.get("entity", ())]
    patients = tuple(
        dict.fromkeys(
            subjects[r].name if r in subjects else r for r in entities if r.startswith("Patient/")
        )
    )
    resource = next((r for r in entities if r and "role" not in _entity(event, r)), None)
    kind = resource.split("/", 1)[0] if resource else None
    data = TYPE_WORDS.get(kind, kind) if kind else ("account" if security else "")
    purpose = event.get("purposeOfEvent", [{}])[0]
    codes = [c.get("code") for c in purpose.get("coding", ())]
    emergency = BREAK_GLASS in codes
    return Entry(
        id=str(event.get("id", "")),
        recorded=str(event.get("recorded", "")),
        patients=patients,
        who=who,
        role=role,
        agent=agent,
        action=action,
        data=data or "",
        grant=_grant(event, emergency),
        allowed=event.get("outcome") == "0",
        emergency=emergency,
        reason=purpose.get("text") if emergency else None,
        event=event,
    )


def _entity(event: dict[str, Any], reference: str) -> dict[str, Any]:
    return next(e for e in event.get("entity", ()) if e["what"].get("reference") == reference)


def _grant(event: dict[str, Any], emergency: bool) -> str:
    """Under which grant, in words, from the rule and the evidence the event recorded."""
    if emergency:
        return "emergency access (break-glass)"
    description = str(event.get("outcomeDesc", ""))
    policy = event["agent"][0].get("policy", ())
    consents = [p for p in policy if p.startswith("Consent/")]
    if consents:
        return "by consent " + ", ".join(consents)
    if "relatedperson_compartment" in description:
        return "family relationship"
    if "practitioner_relationship" in description:
        return "care relationship (care team)"
    if "patient_compartment" in description:
        return "own record"
    if " allow)" in description:
        return "system access"
    if event.get("outcome") != "0":
        return "refused"
    return description.split(":", 1)[0] if description else ""


def csv_text(entries: Iterable[Entry]) -> str:
    """The entries as CSV: a header row, every cell quoted as needed, and a cell that a
    spreadsheet would run as a formula prefixed with a quote."""
    out = io.StringIO()
    writer = csv.writer(out, quoting=csv.QUOTE_MINIMAL, lineterminator="\r\n")
    writer.writerow(CSV_COLUMNS)
    for e in entries:
        row = (
            e.recorded,
            "; ".join(e.patients),
            e.who,
            e.role,
            e.action,
            e.data,
            e.grant,
            "allowed" if e.allowed else "refused",
            e.reason or "",
            f"AuditEvent/{e.id}",
        )
        writer.writerow([_safe_cell(c) for c in row])
    return out.getvalue()


def _safe_cell(value: str) -> str:
    return f"'{value}" if value.startswith(_FORMULA_STARTS) else value


def fhir_bundle(entries: Iterable[Entry], base_url: str) -> bytes:
    """The AuditEvents shown, as a FHIR R4 Bundle of type `collection`."""
    return bundle(
        "collection",
        entries=[
            {"fullUrl": f"{base_url}/AuditEvent/{e.id}", "resource": e.event} for e in entries
        ],
    )
