"""SMART scopes and relationships in plain words, for the approval page, the picker and the
account's "Connected apps" page (a service, so that both HTTP layers, oauth/ and web/, use it)."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Final

from fhir_server.auth.scopes import ScopeError, parse_scope
from fhir_server.services.workflows.relationships import ROLE_NAMES

# Scopes that are part of the launch itself: the approval page shows them, unticking is not
# offered (without them the app cannot start).
REQUIRED = frozenset({"openid", "launch", "launch/patient", "launch/encounter"})
LAUNCH_SCOPES = frozenset({"launch", "launch/patient", "launch/encounter"})

_WORDS = {
    "openid": "Confirm to the app that it is you who signed in",
    "fhirUser": "Tell the app which person you are in this health record",
    "launch": "Open with the record your health system has open",
    "launch/patient": "Know whose record you chose",
    "launch/encounter": "Know which visit your health system has open",
    "offline_access": "Keep access when you are not using the app, until you revoke it",
    "online_access": "Keep access while you are using the app",
}
_VERBS = (("r", "read"), ("s", "search"), ("c", "add"), ("u", "change"), ("d", "delete"))
# A few types that read better in words; the rest are split at their capitals.
_TYPES = {
    "Observation": "observations and lab results",
    "MedicationRequest": "prescriptions",
    "AllergyIntolerance": "allergies",
    "Condition": "conditions",
    "Encounter": "visits",
    "Appointment": "appointments",
    "Immunization": "immunizations",
    "Patient": "contact details",
    "DiagnosticReport": "test reports",
}
_CATEGORY_WORDS = {"laboratory": "lab results only", "vital-signs": "vital signs only"}


# A RelatedPerson's relationship (v3 RoleCode, and the seed's own codes) as the account pages
# say it: "You are her father".
RELATIONSHIP_WORDS: Final = {
    "FTH": "father",
    "MTH": "mother",
    "PRN": "parent",
    "PARENT": "parent",
    "NPRN": "parent",
    "NFTH": "father",
    "NMTH": "mother",
    "ADOPTP": "adoptive parent",
    "ADOPTF": "adoptive father",
    "ADOPTM": "adoptive mother",
    "STPPRN": "step-parent",
    "STPFTH": "stepfather",
    "STPMTH": "stepmother",
    "GUARD": "guardian",
    "GUARDIAN": "guardian",
    "SPS": "spouse",
    "HUSB": "husband",
    "WIFE": "wife",
    "DOMPART": "partner",
    "CHILD": "child",
    "SON": "son",
    "DAU": "daughter",
    "SIB": "sibling",
    "GRPRN": "grandparent",
    "FAMMEMB": "family member",
    "FRND": "friend",
    "BRO": "brother",
    "SIS": "sister",
    "GRMTH": "grandmother",
    "GRFTH": "grandfather",
}


def required(scope: str) -> bool:
    return scope in REQUIRED


def _type_words(resource_type: str) -> str:
    if resource_type == "*":
        return "all kinds of records"
    if resource_type in _TYPES:
        return _TYPES[resource_type]
    return " ".join(w.lower() for w in re.findall(r"[A-Z][a-z]*", resource_type)) + " records"


def describe(scope: str, patient_name: str | None = None) -> str:
    """One line of the approval page: "Read and search observations and lab results of Mary"."""
    if scope in _WORDS:
        return _WORDS[scope]
    try:
        parsed = parse_scope(scope)
    except ScopeError:
        parsed = None
    if parsed is None:
        return f"Use the permission “{scope}”"
    verbs = [word for letter, word in _VERBS if letter in parsed.permissions]
    action = verbs[0] if len(verbs) == 1 else ", ".join(verbs[:-1]) + " and " + verbs[-1]
    whose = {
        "patient": f"of {patient_name}" if patient_name else "of the chosen person",
        "user": "that you may see",
        "system": "of anyone (as a system)",
    }[parsed.context]
    line = f"{action.capitalize()} {_type_words(parsed.resource_type)} {whose}"
    filters = [
        _CATEGORY_WORDS.get(value.rsplit("|", 1)[-1], f"{name} {value.rsplit('|', 1)[-1]}")
        for name, value in parsed.query
    ]
    return line + (f" ({', '.join(filters)})" if filters else "")


def relationship(codes: Iterable[str], via: str, is_self: bool) -> str:
    """How the signed-in person stands to a choice of the picker: "you", "father", "spouse"."""
    if is_self:
        return "you"
    if via.startswith("Practitioner/"):
        return "in your care"
    words = sorted({ROLE_NAMES.get(code, code.lower()) for code in codes})
    return " and ".join(words) if words else "related person"


def you_are(codes: Iterable[str], via: str, is_self: bool) -> str:
    """The picker's relationship line, from the signed-in person's side: "You are her father"."""
    words = relationship(codes, via, is_self)
    if is_self:
        return "Your own record"
    if words == "in your care":
        return "In your care"
    return f"You are their {words}"
