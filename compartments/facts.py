"""The engine's facts about one user, read from the stored resources that carry them.

`read_facts(user, rows, base, local_bases)` turns the rows the access-facts statement gives
(fhir_server/storage/access_facts.py: the user's Persons, RelatedPersons, their patients' birth
dates, Consents, CareTeams, general practitioners, relatives and the access epoch) into the
identities the user acts as and the `Facts` the engine decides with, and tells when they stop
holding (the first instant one of their periods starts or ends). References are read as
compartments/references.py reads them: one to another server's resource is none of this
server's.

Pure: no clock (`base.now` is the moment), no I/O.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import date, datetime
from typing import Any, Final, NamedTuple, TypeAlias

from compartments.consent import ConsentFact, read_consent
from compartments.engine import Facts, Identity, RelatedPersonFact
from compartments.periods import Window, next_change, window
from compartments.references import NO_BASES, reference_of

VERIFIED_ASSURANCE: Final = frozenset({"level3", "level4"})


class Epoch(NamedTuple):
    """The access epoch facts were read at: the `access_epochs` keys the facts statement walked
    through and the sum of their counters. The facts hold while that sum is unchanged."""

    keys: frozenset[str]
    value: int


NO_EPOCH: Final = Epoch(frozenset(), 0)

# (kind, id, extra, content): a row of the access-facts statement, its JSON already parsed.
FactRow: TypeAlias = tuple[str, str | None, str | None, Mapping[str, Any] | None]


def read_facts(
    fhir_user: str,
    rows: Iterable[FactRow],
    base: Facts,
    local_bases: frozenset[str] = NO_BASES,
) -> tuple[Epoch, tuple[Identity, ...], Facts, datetime | None]:
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
    care_teams: list[Mapping[str, Any]] = []
    relatives: dict[str, str] = {}
    windows: list[Window] = []
    epoch = NO_EPOCH
    for kind, id, extra, found in rows:
        content: Mapping[str, Any] = found if found is not None else {}
        if kind == "epoch":
            epoch = Epoch(frozenset(content.get("keys", ())), int(str(extra)))
        elif kind == "Person":
            if content.get("active") is False:
                continue
            for link in content.get("link", ()):
                target = reference_of(link.get("target"), local_bases)
                if target is None or target.split("/")[0] == "Person":
                    continue
                verified = link.get("assurance") in VERIFIED_ASSURANCE
                assurance[target] = assurance.get(target, False) or verified
        elif kind == "RelatedPerson":
            link = related[f"RelatedPerson/{id}"] = _related_person(str(id), content, local_bases)
            windows.append(link.period)
        elif kind == "Patient":
            births[f"Patient/{id}"] = earliest_date(content.get("birthDate"))
        elif kind == "Consent":
            consent = read_consent(str(id), content, local_bases)
            consents.append(consent)
            windows.extend(consent.windows)
        elif kind == "general-practitioner":
            care.setdefault(f"Practitioner/{extra}", set()).add(f"Patient/{id}")
        elif kind == "CareTeam":
            care_teams.append(content)
        elif kind == "relative":
            relatives[f"RelatedPerson/{id}"] = f"Patient/{extra}"
    for team in care_teams:
        _add_care_team(team, base.now, care, windows, local_bases)
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


def _related_person(
    id: str, content: Mapping[str, Any], local_bases: frozenset[str]
) -> RelatedPersonFact:
    return RelatedPersonFact(
        reference=f"RelatedPerson/{id}",
        patient=reference_of(content.get("patient"), local_bases) or "",
        relationships=_codes(content.get("relationship", [])),
        active=content.get("active") is not False,
        period=window(content.get("period")),
    )


def _add_care_team(
    team: Mapping[str, Any],
    now: datetime,
    care: dict[str, set[str]],
    windows: list[Window],
    local_bases: frozenset[str],
) -> None:
    """The practitioners a CareTeam gives its patient to now: an active team (its own
    `period` covering now), participants whose `period` covers now."""
    if team.get("status") not in (None, "active"):
        return
    patient = reference_of(team.get("subject"), local_bases)
    if patient is None or not patient.startswith("Patient/"):
        return
    period = window(team.get("period"))
    windows.append(period)
    if not period.covers(now):
        return
    for participant in team.get("participant", ()):
        member = reference_of(participant.get("member"), local_bases)
        if member is None or not member.startswith("Practitioner/"):
            continue
        joined = window(participant.get("period"))
        windows.append(joined)
        if joined.covers(now):
            care.setdefault(member, set()).add(patient)
