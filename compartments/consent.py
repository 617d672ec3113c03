"""A Consent in standard R4 terms, read into what it grants (docs/security.md, "Consent").

`read_consent(id, content)` turns a stored Consent into a `ConsentFact`: a tree of provisions
whose conditions this engine understands. `ConsentFact.evaluate(query)` answers, for one actor,
operation, resource type and moment, which resources of the patient's compartment the Consent
permits and which (for a Consent whose root is a deny) it denies, as a `Selection`: all of them
but some ids, or only some ids (a `provision.data` reference).

The rules, R4 `Consent`:
- only `status` active and `scope` patient-privacy count; the root provision's `type` (or, when
  it has none, `policyRule` OPTIN/OPTINR: permit, OPTOUT/OPTOUTE: deny) is the base;
- a nested provision applies within its parent and overrides it there (a deny inside a permit
  narrows it, a permit inside a deny re-opens part of it); among siblings deny wins;
- conditions (all must hold; any listed value of one element): `period` (instants, periods.py),
  `actor` (a permit counts only for an actor named with a grantee role: v3 ParticipationType
  IRCP/PRCP, v3 RoleCode GRANTEE/DELEGATEE; a deny applies to an actor named with any role),
  `action` (consentaction: access, use, disclose -> read, search, history; collect -> create;
  correct -> update, patch), `class` (resource types, system http://hl7.org/fhir/resource-types),
  `code` (the server's scopes, urn:fhir-server:consent-scope), `purpose` (v3 ActReason, matched
  against the request's purpose of use), `data` (meaning `instance`, a relative `Type/id`);
- whatever is not understood (another code system, `securityLabel`, `dataPeriod`, data meanings
  other than instance, a `modifierExtension`, an unreadable period, ...) fails closed: a
  provision holding it counts as a deny of everything its understood conditions cover (a root
  permit then grants nothing), and an unknown `policyRule` makes the Consent grant nothing.

Pure: no clock (the query carries `now`), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

from compartments.periods import ALWAYS, Window, window
from compartments.references import NO_BASES, reference_of

# Consent scopes of the family specification, and the resource types each opens.
CONSENT_SCOPES: Mapping[str, frozenset[str]] = {
    "DEMOGRAPHICS": frozenset({"Patient"}),
    "CLINICAL_SUMMARY": frozenset(
        {
            "Condition",
            "AllergyIntolerance",
            "Procedure",
            "CarePlan",
            "Immunization",
            "FamilyMemberHistory",
            "ClinicalImpression",
        }
    ),
    "ENCOUNTERS": frozenset({"Encounter", "EpisodeOfCare"}),
    "PRESCRIPTIONS": frozenset(
        {
            "MedicationRequest",
            "MedicationStatement",
            "MedicationDispense",
            "MedicationAdministration",
        }
    ),
    "LAB_RESULTS": frozenset({"Observation", "DiagnosticReport", "Specimen"}),
    "APPOINTMENTS": frozenset({"Appointment", "AppointmentResponse"}),
}
# A Consent scope that opens only one category of a type: (scope, type) -> the search
# parameter and token value the resources must match. The grant carries it into SQL for every
# caller (compartments/engine.py `Part.where`), and SMART narrowing names it in the token.
CONSENT_CATEGORIES: Mapping[tuple[str, str], tuple[str, str]] = {
    ("LAB_RESULTS", "Observation"): (
        "category",
        "http://terminology.hl7.org/CodeSystem/observation-category|laboratory",
    ),
}
CONSENT_SCOPE_SYSTEM: Final = "urn:fhir-server:consent-scope"
RESOURCE_TYPES_SYSTEM: Final = "http://hl7.org/fhir/resource-types"
ACTION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentaction"
SCOPE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/consentscope"
ACT_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
ACT_REASON_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ActReason"
PARTICIPATION_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-ParticipationType"
ROLE_CODE_SYSTEM: Final = "http://terminology.hl7.org/CodeSystem/v3-RoleCode"

_READS: Final = frozenset({"read", "search", "history"})
ACTIONS: Mapping[str, frozenset[str]] = {
    "access": _READS,
    "use": _READS,
    "disclose": _READS,
    "collect": frozenset({"create"}),
    "correct": frozenset({"update", "patch"}),
}
GRANTEE_ROLES: Final = frozenset(
    {
        (PARTICIPATION_SYSTEM, "IRCP"),
        (PARTICIPATION_SYSTEM, "PRCP"),
        (ROLE_CODE_SYSTEM, "GRANTEE"),
        (ROLE_CODE_SYSTEM, "DELEGATEE"),
    }
)
_OPT_IN: Final = frozenset({"OPTIN", "OPTINR"})
_OPT_OUT: Final = frozenset({"OPTOUT", "OPTOUTE"})
# Provision elements this engine cannot evaluate in SQL: their presence fails closed.
_NOT_EVALUATED: Final = ("securityLabel", "dataPeriod", "modifierExtension")
PERMIT: Final = "permit"
DENY: Final = "deny"


@dataclass(frozen=True, slots=True)
class Selection:
    """Resources of one type in one patient's compartment: every one but `ids` (`every`), or
    only `ids`. `NOTHING` and `EVERYTHING` are the ends."""

    every: bool
    ids: frozenset[str] = frozenset()

    @property
    def empty(self) -> bool:
        return not self.every and not self.ids

    @property
    def whole(self) -> bool:
        return self.every and not self.ids

    def admits(self, id: str | None) -> bool:
        if self.every:
            return id not in self.ids
        return id is not None and id in self.ids

    def __or__(self, other: Selection) -> Selection:
        if self.every and other.every:
            return Selection(True, self.ids & other.ids)
        if self.every:
            return Selection(True, self.ids - other.ids)
        if other.every:
            return Selection(True, other.ids - self.ids)
        return Selection(False, self.ids | other.ids)

    def __and__(self, other: Selection) -> Selection:
        if self.every and other.every:
            return Selection(True, self.ids | other.ids)
        if self.every:
            return Selection(False, other.ids - self.ids)
        if other.every:
            return Selection(False, self.ids - other.ids)
        return Selection(False, self.ids & other.ids)

    def __sub__(self, other: Selection) -> Selection:
        return self & Selection(not other.every, other.ids)

    def describe(self) -> str:
        if self.whole:
            return "all"
        if self.empty:
            return "none"
        ids = ", ".join(sorted(self.ids))
        return f"all but {ids}" if self.every else f"only {ids}"


NOTHING: Final = Selection(False)
EVERYTHING: Final = Selection(True)


@dataclass(frozen=True, slots=True)
class Query:
    """Whom and what a Consent is asked about."""

    actor: str  # "RelatedPerson/9"
    operation: str
    resource_type: str
    now: datetime
    purpose: str | None = None
    # Asked about the resources of one category only (`CONSENT_CATEGORIES`'s value): then a
    # permit narrowed to that category counts too. None: resources of any category.
    category: tuple[str, str] | None = None


@dataclass(frozen=True, slots=True)
class Provision:
    """One rule of a Consent, as understood. None for a condition: the element is absent (or
    not understood, which `problems` then names), so it does not narrow the rule."""

    type: str  # PERMIT or DENY as written
    period: Window = ALWAYS
    grantees: frozenset[str] | None = None  # actors named with a grantee role
    others: frozenset[str] = frozenset()  # actors named with any other role
    operations: frozenset[str] | None = None
    types: frozenset[str] | None = None
    data: frozenset[str] | None = None  # "Type/id"
    purposes: frozenset[str] | None = None
    problems: tuple[str, ...] = ()
    provisions: tuple[Provision, ...] = ()
    # (type, parameter, value): a permit of these types holds only for resources of that
    # category (a scope code of `CONSENT_CATEGORIES`)
    narrowed: tuple[tuple[str, str, str], ...] = ()

    def category_of(self, resource_type: str) -> tuple[str, str] | None:
        """The category a permit of `resource_type` is narrowed to, if any."""
        return next(((p, v) for t, p, v in self.narrowed if t == resource_type), None)

    @property
    def effect(self) -> str:
        """What the rule does: a permit that holds anything not understood denies instead."""
        return DENY if self.problems else self.type

    def matches(self, query: Query) -> Selection:
        """The resources of `query.resource_type` that this rule's own conditions cover."""
        if not self.period.covers(query.now):
            return NOTHING
        if self.grantees is not None:
            named = query.actor in self.grantees
            if self.effect == DENY:
                named = named or query.actor in self.others
            if not named:
                return NOTHING
        if self.operations is not None and query.operation not in self.operations:
            return NOTHING
        if self.types is not None and query.resource_type not in self.types:
            return NOTHING
        if self.effect == PERMIT:
            # a deny covers the whole type (fail closed); a narrowed permit only its category
            category = self.category_of(query.resource_type)
            if category is not None and query.category != category:
                return NOTHING
        if self.purposes is not None and query.purpose not in self.purposes:
            return NOTHING
        if self.data is None:
            return EVERYTHING
        prefix = f"{query.resource_type}/"
        return Selection(
            False, frozenset(d.removeprefix(prefix) for d in self.data if d.startswith(prefix))
        )

    def evaluate(self, query: Query, region: Selection, named: bool) -> tuple[Selection, Selection]:
        """(covered, permitted): where within `region` this rule applies, and what it (with
        its nested rules) permits there. A permit counts only for an actor named as a grantee
        here or in an enclosing rule."""
        covered = region & self.matches(query)
        if covered.empty:
            return NOTHING, NOTHING
        named = named or (self.grantees is not None and query.actor in self.grantees)
        permitted = covered if self.effect == PERMIT and named else NOTHING
        denied = NOTHING
        for nested in self.provisions:
            inner, allowed = nested.evaluate(query, covered, named)
            permitted = (permitted - inner) | allowed
            if nested.effect == DENY:
                denied = denied | (inner - allowed)
        return covered, permitted - denied

    def describe(self, depth: int = 0) -> list[str]:
        parts = [("  " * depth) + ("nested " if depth else "") + self.effect]
        if self.type != self.effect:
            parts.append(f"(written {self.type}, not understood)")
        if self.period is not ALWAYS:
            parts.append(f"period {self.period.describe()}")
        if self.grantees is not None:
            parts.append(f"grantees {sorted(self.grantees) or 'none'}")
            if self.others:
                parts.append(f"other actors {sorted(self.others)}")
        parts.append(
            "operations "
            + ("all" if self.operations is None else ",".join(sorted(self.operations)))
        )
        parts.append("types " + ("all" if self.types is None else ",".join(sorted(self.types))))
        for type_, param, value in self.narrowed:
            parts.append(f"{type_} only where {param}={value}")
        if self.data is not None:
            parts.append("data " + ",".join(sorted(self.data)))
        if self.purposes is not None:
            parts.append("purposes " + ",".join(sorted(self.purposes)))
        if self.problems:
            parts.append("not understood: " + "; ".join(self.problems))
        lines = [" ".join(parts)]
        for nested in self.provisions:
            lines.extend(nested.describe(depth + 1))
        return lines


@dataclass(frozen=True, slots=True)
class ConsentFact:
    """A Consent about `patient`, read: `root` is None when it grants and denies nothing
    (not active, another scope, an unknown policy rule: `problems` says why)."""

    reference: str  # "Consent/3"
    patient: str
    root: Provision | None
    problems: tuple[str, ...] = ()
    windows: tuple[Window, ...] = field(default=(), compare=False)

    @classmethod
    def scoped(
        cls,
        reference: str,
        patient: str,
        actors: Iterable[str],
        scopes: Iterable[str],
        active: bool = True,
        period: Window = ALWAYS,
    ) -> ConsentFact:
        """A permit Consent in the server's own scope codes (tests, benchmarks)."""
        if not active:
            return cls(reference, patient, None, ("not active",))
        scopes = tuple(scopes)
        types = frozenset(t for s in scopes for t in CONSENT_SCOPES.get(s, ()))
        narrowed = {
            t: CONSENT_CATEGORIES[(s, t)]
            for s in scopes
            for t in CONSENT_SCOPES.get(s, ())
            if (s, t) in CONSENT_CATEGORIES
        }
        whole = {
            t for s in scopes for t in CONSENT_SCOPES.get(s, ()) if (s, t) not in CONSENT_CATEGORIES
        }
        root = Provision(
            PERMIT,
            period,
            grantees=frozenset(actors),
            types=types,
            narrowed=tuple(sorted((t, p, v) for t, (p, v) in narrowed.items() if t not in whole)),
        )
        return cls(reference, patient, root, windows=(period,))

    def evaluate(self, query: Query) -> tuple[Selection, Selection]:
        """(permitted, denied) for the query. Only a Consent whose root is a deny denies
        anything beyond its own permits (a nested deny only narrows its own Consent)."""
        if self.root is None or (self.root.type == PERMIT and self.root.problems):
            return NOTHING, NOTHING  # a permit not understood grants nothing, and takes nothing
        covered, permitted = self.root.evaluate(query, EVERYTHING, False)
        if self.root.effect == DENY:
            return permitted, covered - permitted
        return permitted, NOTHING

    def names(self, actors: Iterable[str]) -> bool:
        """Whether any rule names one of `actors` (or a deny names nobody, so everyone)."""
        wanted = frozenset(actors)

        def walk(p: Provision) -> bool:
            if p.grantees is not None and (p.grantees | p.others) & wanted:
                return True
            return any(walk(n) for n in p.provisions)

        if self.root is None:
            return False
        return walk(self.root) or (self.root.effect == DENY and self.root.grantees is None)

    def describe(self) -> list[str]:
        if self.root is None:
            return [f"grants nothing: {'; '.join(self.problems)}"]
        return [*(f"note: {p}" for p in self.problems), *self.root.describe()]


def read_consent(
    id: str, content: Mapping[str, Any], local_bases: frozenset[str] = NO_BASES
) -> ConsentFact:
    """The ConsentFact of a stored Consent (see the module's docstring). References count as
    compartments/references.py reads them, under this server's `local_bases`."""
    reference = f"Consent/{id}"
    patient = reference_of(content.get("patient"), local_bases) or ""
    if content.get("status") != "active":
        return ConsentFact(reference, patient, None, (f"status `{content.get('status')}`",))
    # a scope coded without its system is read as the consentscope code it spells
    scope = _codings(content.get("scope"))
    if not scope & {(SCOPE_SYSTEM, "patient-privacy"), ("", "patient-privacy")}:
        return ConsentFact(reference, patient, None, ("scope is not patient-privacy",))
    if content.get("modifierExtension"):
        return ConsentFact(reference, patient, None, ("a modifierExtension",))
    provision = content.get("provision")
    if not isinstance(provision, dict):
        return ConsentFact(reference, patient, None, ("no provision",))
    base = provision.get("type")
    notes: list[str] = []
    if base is None:
        rules = _codings(content.get("policyRule"))
        codes = {c for s, c in rules if s == ACT_CODE_SYSTEM}
        if not rules:
            base = PERMIT
            notes.append("no provision.type nor policyRule: read as permit")
        elif codes and codes <= _OPT_IN:
            base = PERMIT
        elif codes and codes <= _OPT_OUT:
            base = DENY
        else:
            return ConsentFact(reference, patient, None, ("policyRule not understood",))
    windows: list[Window] = []
    root = _provision(provision, base, windows, local_bases)
    return ConsentFact(reference, patient, root, tuple(notes), tuple(windows))


def _provision(
    element: Mapping[str, Any],
    type_: str | None,
    windows: list[Window],
    local_bases: frozenset[str],
) -> Provision:
    problems: list[str] = []
    written = element.get("type", type_)
    if written not in (PERMIT, DENY):
        problems.append("a nested provision without type permit or deny")
        written = DENY
    for name in _NOT_EVALUATED:
        if element.get(name):
            problems.append(f"provision.{name}")
    period = window(element.get("period"))
    if not period.valid:
        problems.append("provision.period is not a FHIR date or time with a zone")
        period = ALWAYS
    windows.append(period)
    grantees: frozenset[str] | None = None
    others: set[str] = set()
    if "actor" in element:
        named: set[str] = set()
        for actor in _list(element.get("actor")):
            who = _actor(actor, local_bases)
            if who is None:
                problems.append("an actor without a resolvable reference")
                continue
            roles = _codings(actor.get("role"))
            (named if roles & GRANTEE_ROLES else others).add(who)
        grantees = frozenset(named)
    operations: frozenset[str] | None = None
    if "action" in element:
        operations = frozenset()
        for system, code in _concept_codings(element.get("action")):
            if system == ACTION_SYSTEM and code in ACTIONS:
                operations |= ACTIONS[code]
            else:
                problems.append(f"action `{code}`")
                operations = None
                break
    types = None
    if "class" in element:
        classes = _codings(element.get("class"), listed=True)
        unknown = sorted(c for s, c in classes if s != RESOURCE_TYPES_SYSTEM)
        if unknown:
            problems.append(f"class {unknown} outside {RESOURCE_TYPES_SYSTEM}")
        else:
            types = frozenset(c for _, c in classes)
    narrowed: dict[str, tuple[str, str]] = {}
    if "code" in element:
        scoped: set[str] = set()
        whole: set[str] = set()  # types some code opens in every category
        understood = True
        for system, code in _concept_codings(element.get("code")):
            if system == CONSENT_SCOPE_SYSTEM and code in CONSENT_SCOPES:
                scoped |= CONSENT_SCOPES[code]
                for type_ in CONSENT_SCOPES[code]:
                    if (code, type_) in CONSENT_CATEGORIES:
                        narrowed[type_] = CONSENT_CATEGORIES[(code, type_)]
                    else:
                        whole.add(type_)
            else:
                problems.append(f"code `{code}`")
                understood = False
        if understood:
            types = frozenset(scoped) if types is None else types & scoped
        for type_ in whole:
            narrowed.pop(type_, None)
    data = None
    if "data" in element:
        refs: set[str] = set()
        for item in _list(element.get("data")):
            ref = item.get("reference") if isinstance(item, dict) else None
            text = ref.get("reference") if isinstance(ref, dict) else None
            meaning = item.get("meaning") if isinstance(item, dict) else None
            if meaning == "instance" and _relative(text):
                refs.add(str(text))
            else:
                problems.append(f"data `{text}` with meaning `{meaning}`")
                refs.clear()
                break
        data = frozenset(refs) if refs else None
    purposes = None
    if "purpose" in element:
        codes = _codings(element.get("purpose"), listed=True)
        if all(s == ACT_REASON_SYSTEM for s, _ in codes):
            purposes = frozenset(c for _, c in codes)
        else:
            problems.append("purpose outside v3 ActReason")
    nested = tuple(
        _provision(p, None, windows, local_bases) for p in _list(element.get("provision"))
    )
    return Provision(
        type=written,
        period=period,
        grantees=grantees,
        others=frozenset(others),
        operations=operations,
        types=types,
        data=data,
        purposes=purposes,
        problems=tuple(problems),
        provisions=nested,
        narrowed=tuple(sorted((t, p, v) for t, (p, v) in narrowed.items())),
    )


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _codings(value: Any, listed: bool = False) -> frozenset[tuple[str, str]]:
    """(system, code) of a CodeableConcept (or CodeableConcepts), or of a list of Codings."""
    if listed:
        items = [c for c in _list(value) if isinstance(c, dict)]
    else:
        concepts = value if isinstance(value, list) else [value]
        items = [
            c
            for concept in concepts
            if isinstance(concept, dict)
            for c in _list(concept.get("coding"))
        ]
    return frozenset(
        (str(c.get("system", "")), str(c.get("code", ""))) for c in items if isinstance(c, dict)
    )


def _concept_codings(value: Any) -> list[tuple[str, str]]:
    """Every (system, code) of a list of CodeableConcepts; a concept with text only counts as
    an unknown code."""
    found: list[tuple[str, str]] = []
    for concept in _list(value):
        codings = _codings(concept)
        found.extend(sorted(codings) if codings else [("", "(text only)")])
    return found


def _relative(text: Any) -> bool:
    if not isinstance(text, str):
        return False
    parts = text.split("/")
    return len(parts) == 2 and parts[0][:1].isupper() and bool(parts[1]) and ":" not in text


def _actor(actor: Any, local_bases: frozenset[str]) -> str | None:
    """`Type/id` of one `provision.actor` (its `reference`), or None."""
    return reference_of(actor.get("reference"), local_bases) if isinstance(actor, dict) else None


def consent_actors(provision: Any, local_bases: frozenset[str] = NO_BASES) -> frozenset[str]:
    """Every actor a Consent `provision` names, in it and all its nested provisions, with any
    role: the one reader of `Consent.provision.actor` (`read_consent` reads them with roles)."""
    found: set[str] = set()
    pending = [provision]
    while pending:
        item = pending.pop()
        if not isinstance(item, dict):
            continue
        for actor in _list(item.get("actor")):
            if (who := _actor(actor, local_bases)) is not None:
                found.add(who)
        pending.extend(_list(item.get("provision")))
    return frozenset(found)
