"""The Patient Service specification's validation rules, shared by `/api/v1/patients` and, with
`FHIR_PATIENT_PROFILE=phase1`, by every FHIR Patient write (create, update, patch, bundles)."""

from __future__ import annotations

import re
from datetime import date
from typing import Any

from fhir_server.errors import Issue

EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
COUNTRY = re.compile(r"^[A-Z]{2}$")
MAX_AGE = 120
MAX_NAME = 100


def name_problem(text: str) -> str | None:
    """What is wrong with a (trimmed) name, or None."""
    if len(text) > MAX_NAME:
        return f"at most {MAX_NAME} characters"
    if any(c.isdigit() for c in text):
        return "digits are not allowed in names"
    return None


def age_problem(born: date, today: date) -> str | None:
    if born >= today:
        return "must be in the past"
    age = today.year - born.year - ((today.month, today.day) < (born.month, born.day))
    return f"age at most {MAX_AGE}" if age > MAX_AGE else None


def check(patient: dict[str, Any], today: date) -> list[Issue]:
    """The rules as they apply to a FHIR Patient; an Issue per problem, located by expression."""
    issues: list[Issue] = []

    def problem(where: str, text: str) -> None:
        issues.append(Issue("business-rule", f"`{where}` {text}", expression=(where,)))

    for n, name in enumerate(patient.get("name", [])):
        parts = [("family", name.get("family"))] + [
            (f"given[{g}]", given) for g, given in enumerate(name.get("given", []))
        ]
        for field, value in parts:
            if isinstance(value, str) and (why := name_problem(" ".join(value.split()))):
                problem(f"Patient.name[{n}].{field}", why)
    born = patient.get("birthDate")
    if (
        isinstance(born, str)
        and len(born) == 10
        and (why := age_problem(date.fromisoformat(born), today))
    ):
        problem("Patient.birthDate", why)
    for t, telecom in enumerate(patient.get("telecom", [])):
        value = telecom.get("value")
        if not isinstance(value, str):
            continue
        if telecom.get("system") == "email" and not EMAIL.match(value):
            problem(f"Patient.telecom[{t}].value", "is not an email address")
        if telecom.get("system") == "phone" and not E164.match(value):
            problem(f"Patient.telecom[{t}].value", "is not an E.164 phone number")
    for a, address in enumerate(patient.get("address", [])):
        country = address.get("country")
        if address.get("postalCode") and not country:
            problem(f"Patient.address[{a}].country", "is required with a postal code")
        if isinstance(country, str) and not COUNTRY.match(country):
            problem(f"Patient.address[{a}].country", "must be an ISO 3166-1 alpha-2 code")
    return issues
