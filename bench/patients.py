"""Synthetic, varied Patient resources and transaction Bundles of them (deterministic by seed)."""

from __future__ import annotations

import random
from datetime import date, timedelta
from typing import Any

# fmt: off
FAMILY = (
    "Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis", "Rodriguez",
    "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson", "Thomas", "Taylor",
    "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White", "Harris", "Sanchez",
    "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young", "Allen", "King", "Wright",
    "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green", "Adams", "Nelson", "Baker", "Hall",
    "Rivera", "Campbell", "Mitchell", "Carter", "Roberts", "Okafor", "Novak",
)
GIVEN = {
    "female": (
        "Mary", "Patricia", "Jennifer", "Linda", "Elizabeth", "Barbara", "Susan", "Jessica",
        "Sarah", "Karen", "Nancy", "Lisa", "Betty", "Sandra", "Ashley", "Emily", "Olivia", "Emma",
        "Ava", "Sophia", "Amara", "Ingrid", "Mei", "Fatima",
    ),
    "male": (
        "James", "Robert", "John", "Michael", "David", "William", "Richard", "Joseph", "Thomas",
        "Charles", "Daniel", "Matthew", "Anthony", "Mark", "Paul", "Steven", "Andrew", "Joshua",
        "Liam", "Noah", "Ethan", "Kwame", "Lars", "Hiroshi",
    ),
}
STREETS = (
    "Main", "Oak", "Pine", "Maple", "Cedar", "Elm", "Washington", "Lake", "Hill", "Park",
    "Sunset", "River",
)
# fmt: on
CITIES = (
    ("Boston", "MA", "021"),
    ("Austin", "TX", "787"),
    ("Denver", "CO", "802"),
    ("Seattle", "WA", "981"),
    ("Atlanta", "GA", "303"),
    ("Chicago", "IL", "606"),
    ("Portland", "OR", "972"),
    ("Madison", "WI", "537"),
)
EPOCH = date(1930, 1, 1)


def patient(rng: random.Random, n: int) -> dict[str, Any]:
    """The `n`th synthetic Patient: names, birthDate, gender, identifiers, address, telecom."""
    gender = rng.choice(("female", "male", "female", "male", "other", "unknown"))
    given_pool = GIVEN.get(gender) or GIVEN[rng.choice(("female", "male"))]
    family = rng.choice(FAMILY)
    given = [rng.choice(given_pool)] + ([rng.choice(given_pool)] if rng.random() < 0.4 else [])
    city, state, zip_prefix = rng.choice(CITIES)
    phone = f"+1-555-{rng.randrange(100, 1000)}-{rng.randrange(1000, 10000)}"
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "active": rng.random() < 0.95,
        "identifier": [
            {
                "use": "usual",
                "type": {
                    "coding": [
                        {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                    ]
                },
                "system": "http://hospital.example.org/mrn",
                "value": f"MRN-{n:08d}",
            }
        ],
        "name": [{"use": "official", "family": family, "given": given}],
        "gender": gender,
        "birthDate": (EPOCH + timedelta(days=rng.randrange(0, 34_000))).isoformat(),
        "telecom": [{"system": "phone", "value": phone, "use": rng.choice(("home", "mobile"))}],
        "address": [
            {
                "use": "home",
                "line": [f"{rng.randrange(1, 9999)} {rng.choice(STREETS)} St"],
                "city": city,
                "state": state,
                "postalCode": f"{zip_prefix}{rng.randrange(0, 100):02d}",
                "country": "US",
            }
        ],
    }
    if rng.random() < 0.5:
        email = f"{given[0].lower()}.{family.lower()}{n}@example.com"
        resource["telecom"].append({"system": "email", "value": email})
    if rng.random() < 0.3:
        resource["name"].append({"use": "nickname", "given": [given[0][:3]]})
    if rng.random() < 0.2:
        resource["maritalStatus"] = {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                    "code": rng.choice(("M", "S", "D", "W")),
                }
            ]
        }
    return resource


def transaction(rng: random.Random, start: int, size: int) -> dict[str, Any]:
    """A transaction Bundle creating Patients `start` .. `start + size - 1`."""
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {"resource": patient(rng, n), "request": {"method": "POST", "url": "Patient"}}
            for n in range(start, start + size)
        ],
    }
