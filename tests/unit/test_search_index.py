"""Search-index rows of resources, and the value normalization that queries share with them."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.search.index import (
    DATE_MAX,
    DATE_MIN,
    IndexRows,
    _quantity_rows,
    _string_rows,
    _token_rows,
    date_range,
    index_rows,
    normalize_string,
    number_range,
)
from fhir_server.services.interactions.versions import DecimalText, parse_json

LOCAL = ("http://127.0.0.1:8080/fhir/",)
P1 = ("Patient", "p1", None, None, None)  # a reference row: Patient/p1 on this server
EXAMPLES = sorted((Path(__file__).resolve().parents[1] / "data" / "r4-examples").glob("*.json"))
UCUM = "http://unitsofmeasure.org"
LOINC = "http://loinc.org"
SNOMED = "http://snomed.info/sct"
CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
RXNORM = "http://www.nlm.nih.gov/research/umls/rxnorm"


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def D(text: str) -> Decimal:
    return Decimal(text)


def of(rows: list[Any], code: str) -> list[tuple[Any, ...]]:
    """The rows of one parameter, without the code."""
    return [row[1:] for row in rows if row[0] == code]


def codes(rows: IndexRows) -> set[str]:
    return {row[0] for table in IndexRows.__slots__ for row in getattr(rows, table)}


# --------------------------------------------------------------------------------------------
# normalize_string


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Chalmers", "chalmers"),
        ("  Peter \t James\n", "peter james"),
        ("Élodie Ñúñez", "elodie nunez"),
        ("MÜLLER", "muller"),
        ("Straße", "strasse"),  # case folding, not lower-casing
        (
            "\uff26\uff55\uff4c\uff4c\u3000\uff57\uff49\uff44\uff54\uff48",
            "full width",
        ),  # compatibility forms and an ideographic space
        ("\ufb01ne", "fine"),  # the ligature fi
        ("\u210cilbert", "hilbert"),  # decomposes to a capital, folded after decomposition
        ("İstanbul", "istanbul"),
        ("Ærøskøbing", "ærøskøbing"),  # letters without a decomposition stay
        ("   ", ""),
        ("", ""),
    ],
)
def test_normalize_string(text: str, expected: str) -> None:
    assert normalize_string(text) == expected


@given(st.text())
def test_normalize_string_is_idempotent_and_clean(text: str) -> None:
    normalized = normalize_string(text)
    assert normalize_string(normalized) == normalized
    assert normalized == normalized.strip()
    assert "  " not in normalized


# --------------------------------------------------------------------------------------------
# date_range


def at_ten(us: int, hour: int = 10) -> datetime:
    """2020-03-04 at 10:00:00 UTC (or another hour) and `us` microseconds."""
    return utc(2020, 3, 4, hour, 0, 0, us)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2020", utc(2020, 1, 1), utc(2021, 1, 1)),
        ("2020-02", utc(2020, 2, 1), utc(2020, 3, 1)),
        ("2020-12", utc(2020, 12, 1), utc(2021, 1, 1)),
        ("2020-03-04", utc(2020, 3, 4), utc(2020, 3, 5)),
        ("2024-02-29", utc(2024, 2, 29), utc(2024, 3, 1)),
        ("2020-12-31", utc(2020, 12, 31), utc(2021, 1, 1)),
        ("2020-03-04T10:00:00+02:00", utc(2020, 3, 4, 8), utc(2020, 3, 4, 8, 0, 1)),
        ("2020-03-04T10:00:00Z", utc(2020, 3, 4, 10), utc(2020, 3, 4, 10, 0, 1)),
        ("2020-03-04T10:00:00+00:00", utc(2020, 3, 4, 10), utc(2020, 3, 4, 10, 0, 1)),
        ("2020-03-04T10:00:00-05:30", utc(2020, 3, 4, 15, 30), utc(2020, 3, 4, 15, 30, 1)),
        ("2020-03-04T23:30:00-01:00", utc(2020, 3, 5, 0, 30), utc(2020, 3, 5, 0, 30, 1)),
        ("2020-03-04T00:30:00+14:00", utc(2020, 3, 3, 10, 30), utc(2020, 3, 3, 10, 30, 1)),
        # no zone: not valid FHIR for a time, read as UTC
        ("2020-03-04T10:00:00", utc(2020, 3, 4, 10), utc(2020, 3, 4, 10, 0, 1)),
        # minutes without seconds (a query may say so)
        ("2020-03-04T10:00Z", utc(2020, 3, 4, 10), utc(2020, 3, 4, 10, 1)),
        ("2020-03-04T10:00", utc(2020, 3, 4, 10), utc(2020, 3, 4, 10, 1)),
        # fractions: as precise as the last digit, down to the microsecond
        ("2020-03-04T10:00:00.5Z", at_ten(500000), at_ten(600000)),
        ("2020-03-04T10:00:00.50Z", at_ten(500000), at_ten(510000)),
        ("2020-03-04T10:00:00.123Z", at_ten(123000), at_ten(124000)),
        ("2020-03-04T10:00:00.123456+01:00", at_ten(123456, hour=9), at_ten(123457, hour=9)),
        ("2020-03-04T10:00:00.123456789Z", at_ten(123456), at_ten(123457)),
        ("2020-03-04T10:00:59.999Z", utc(2020, 3, 4, 10, 0, 59, 999000), utc(2020, 3, 4, 10, 1)),
        # a leap second is the second after 23:59:59
        ("2016-12-31T23:59:60Z", utc(2017, 1, 1), utc(2017, 1, 1, 0, 0, 1)),
        # the end of the calendar caps at DATE_MAX
        ("9999", utc(9999, 1, 1), DATE_MAX),
        ("9999-12", utc(9999, 12, 1), DATE_MAX),
        ("9999-12-31", utc(9999, 12, 31), DATE_MAX),
        ("0001", utc(1, 1, 1), utc(2, 1, 1)),
    ],
)
def test_date_range_precision(text: str, low: datetime, high: datetime) -> None:
    assert date_range(text) == (low, high)
    found = date_range(text)
    assert found is not None
    assert found[0].tzinfo is UTC
    assert found[1].tzinfo is UTC


@pytest.mark.parametrize(
    "text",
    [
        "",
        "tomorrow",
        "0000",  # no year 0
        "20201",
        "202",
        "2020-1",
        "2020-13",
        "2020-00",
        "2020-02-30",
        "2021-02-29",
        "2020-03-4",
        "2020-03-04Z",  # a date has no zone
        "2020-03-04T10",
        "2020-03-04T24:00:00Z",
        "2020-03-04T10:60:00Z",
        "2020-03-04T10:00:61Z",
        "2020-03-04T10:00:00.Z",
        "2020-03-04T10:00:00+15:00",
        "2020-03-04T10:00:00+14:30",
        "2020-03-04T10:00:00+01:60",
        "2020-03-04T10:00:00+0100",
        "2020-03-04 10:00:00Z",
        " 2020",
        "2020-03-04T10:00:00z",
        "\uff12\uff10\uff12\uff10",  # full-width digits
    ],
)
def test_date_range_refuses_what_is_no_fhir_date(text: str) -> None:
    assert date_range(text) is None


def test_date_range_clamps_at_the_ends_of_the_calendar() -> None:
    # 23:59:59 at -01:00 on the last day is in year 10000 UTC: held at DATE_MAX
    assert date_range("9999-12-31T23:59:59-01:00") == (DATE_MAX, DATE_MAX)
    assert date_range("9999-12-31T22:59:59-01:00") == (
        utc(9999, 12, 31, 23, 59, 59),
        DATE_MAX,
    )
    # midnight of year 1 at +01:00 is in year 0 UTC: held at DATE_MIN
    assert date_range("0001-01-01T00:00:00+01:00") == (DATE_MIN, DATE_MIN)
    assert utc(1, 1, 1) == DATE_MIN
    assert datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC) == DATE_MAX


_PRECISIONS = ("year", "month", "day", "minute", "second", *range(1, 10))


def _width(precision: str | int, moment: datetime) -> timedelta:
    if precision == "year":
        return timedelta(days=366 if calendar.isleap(moment.year) else 365)
    if precision == "month":
        return timedelta(days=calendar.monthrange(moment.year, moment.month)[1])
    if precision == "day":
        return timedelta(days=1)
    if precision == "minute":
        return timedelta(minutes=1)
    if precision == "second":
        return timedelta(seconds=1)
    assert isinstance(precision, int)
    return timedelta(microseconds=10 ** max(6 - precision, 0))


@given(
    moment=st.datetimes(min_value=datetime(2, 1, 1), max_value=datetime(9998, 12, 31)),
    precision=st.sampled_from(_PRECISIONS),
    offset_quarters=st.integers(min_value=-12 * 4, max_value=14 * 4),
    zone_style=st.sampled_from(("offset", "Z", "none")),
)
def test_date_range_contains_the_instant_and_has_the_width_of_the_precision(
    moment: datetime, precision: str | int, offset_quarters: int, zone_style: str
) -> None:
    """A dateTime text written from an instant at some precision covers that instant."""
    instant = moment.replace(tzinfo=UTC)
    if precision in ("year", "month", "day"):
        # dates are UTC days, months and years
        text = f"{instant.year:04d}"
        if precision != "year":
            text += f"-{instant.month:02d}"
        if precision == "day":
            text += f"-{instant.day:02d}"
        start = instant.replace(
            month=1 if precision == "year" else instant.month,
            day=1 if precision in ("year", "month") else instant.day,
            hour=0,
            minute=0,
            second=0,
            microsecond=0,
        )
    else:
        if zone_style == "offset":
            offset = timedelta(minutes=15 * offset_quarters)
            sign = "-" if offset < timedelta(0) else "+"
            hours, minutes = divmod(abs(offset_quarters) * 15, 60)
            zone = f"{sign}{hours:02d}:{minutes:02d}"
        else:
            offset = timedelta(0)
            zone = "Z" if zone_style == "Z" else ""
        local = instant.astimezone(timezone(offset))
        text = (
            f"{local.year:04d}-{local.month:02d}-{local.day:02d}"
            f"T{local.hour:02d}:{local.minute:02d}"
        )
        if precision == "minute":
            start = instant.replace(second=0, microsecond=0)
        else:
            text += f":{local.second:02d}"
            if precision == "second":
                start = instant.replace(microsecond=0)
            else:
                assert isinstance(precision, int)
                text += "." + f"{local.microsecond:06d}".ljust(precision, "0")[:precision]
                kept = 10 ** max(6 - precision, 0)
                start = instant.replace(microsecond=instant.microsecond // kept * kept)
        text += zone
    found = date_range(text)
    assert found is not None, text
    low, high = found
    assert low <= instant < high, text
    assert low == start, text
    assert high - low == _width(precision, start), text


# --------------------------------------------------------------------------------------------
# number_range


@pytest.mark.parametrize(
    ("text", "value", "low", "high"),
    [
        ("100", "100", "99.5", "100.5"),
        ("100.0", "100.0", "99.95", "100.05"),
        ("100.00", "100.00", "99.995", "100.005"),
        ("1.50", "1.50", "1.495", "1.505"),
        ("0.1", "0.1", "0.05", "0.15"),
        ("0", "0", "-0.5", "0.5"),
        ("-1.5", "-1.5", "-1.55", "-1.45"),
        ("-100", "-100", "-100.5", "-99.5"),
        ("1e2", "100", "50", "150"),  # one significant figure
        ("1E2", "100", "50", "150"),
        ("1.0e2", "100", "95", "105"),
        ("2.5e+3", "2500", "2450", "2550"),
        ("1e-3", "0.001", "0.0005", "0.0015"),
        ("1.000E-3", "0.001", "0.0009995", "0.0010005"),
        ("22125500", "22125500", "22125499.5", "22125500.5"),
        # more digits than the default decimal context's 28 stay exact
        (
            "123456789012345678901234567890.5",
            "123456789012345678901234567890.5",
            "123456789012345678901234567890.45",
            "123456789012345678901234567890.55",
        ),
    ],
)
def test_number_range(text: str, value: str, low: str, high: str) -> None:
    assert number_range(text) == (D(value), D(low), D(high))


def test_number_range_keeps_the_digits_of_the_text() -> None:
    found = number_range("1.50")
    assert found is not None
    assert found[0].as_tuple() == D("1.50").as_tuple()
    assert str(found[1]) == "1.495"


@pytest.mark.parametrize(
    "text",
    [
        "",
        "abc",
        "NaN",
        "Infinity",
        "-Infinity",
        "1_000",
        "+1",
        ".5",
        "5.",
        "1e",
        "1e+",
        " 1",
        "1 ",
        "0x10",
        "1,5",
        "١٢",  # digits of another script
        "1e-20000",  # more places than a PostgreSQL numeric holds
        "1e200000",
    ],
)
def test_number_range_refuses_what_is_no_number(text: str) -> None:
    assert number_range(text) is None


def _exponent(value: Decimal) -> int:
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)
    return exponent


@given(st.decimals(allow_nan=False, allow_infinity=False).filter(lambda d: -30 < _exponent(d) < 30))
def test_number_range_contains_the_value_with_a_unit_of_the_last_digit(value: Decimal) -> None:
    # positional text, or exponent notation for the smallest ones
    text = f"{value:f}" if _exponent(value) >= -20 else str(value)
    found = number_range(text)
    assert found is not None, text
    number, low, high = found
    assert number == value
    assert low < number < high
    assert high - low == Decimal((0, (1,), _exponent(number)))


# --------------------------------------------------------------------------------------------
# Resources


PATIENT: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "p1",
    "meta": {
        "versionId": "1",
        "lastUpdated": "2024-01-01T00:00:00.000000+00:00",
        "source": "http://example.org/source#abc",
        "profile": ["http://example.org/StructureDefinition/my-patient"],
        "security": [
            {"system": "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "code": "R"}
        ],
        "tag": [{"system": "http://example.org/tags", "code": "vip", "display": "VIP"}],
    },
    "identifier": [
        {
            "use": "usual",
            "type": {
                "coding": [
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}
                ],
                "text": "Medical  Record",
            },
            "system": "urn:oid:1.2.36.146.595.217.0.1",
            "value": "12345",
        },
        {"system": "http://example.org/ssn"},  # no value and no type text: nothing to find
    ],
    "active": True,
    "name": [
        {
            "use": "official",
            "family": "Chalmers",
            "given": ["Peter", "James"],
            "prefix": ["Mr."],
            "suffix": ["III"],
        },
        {"use": "usual", "given": ["Jim"], "period": {"start": "2000"}},
        {"text": "Élodie  Ñúñez", "given": ["Peter", ""]},
    ],
    "telecom": [
        {"system": "phone", "value": "(03) 5555 6473", "use": "work", "rank": 1},
        {"system": "email", "value": "jim@example.org"},
        {"use": "home"},
    ],
    "gender": "male",
    "birthDate": "1974-12-25",
    "address": [
        {
            "use": "home",
            "type": "both",
            "line": ["534 Erewhon St", "Apt 2"],
            "city": "PleasantVille",
            "district": "Rainbow",
            "state": "Vic",
            "postalCode": "3999",
            "country": "AU",
            "period": {"start": "1974-12-25"},
        }
    ],
    "communication": [
        {
            "language": {
                "coding": [{"system": "urn:ietf:bcp:47", "code": "en-AU"}],
                "text": "English",
            }
        }
    ],
    "generalPractitioner": [{"reference": "Practitioner/gp", "display": "Dr Adams"}],
    "managingOrganization": {"reference": "Organization/1"},
    "link": [
        {"other": {"reference": "Patient/p0"}, "type": "replaces"},
        {"other": {"reference": "RelatedPerson/r1"}, "type": "seealso"},
    ],
}


def test_patient() -> None:
    rows = index_rows(PATIENT)
    address = [
        ("534 erewhon st", "534 Erewhon St"),
        ("apt 2", "Apt 2"),
        ("pleasantville", "PleasantVille"),
        ("rainbow", "Rainbow"),
        ("vic", "Vic"),
        ("3999", "3999"),
        ("au", "AU"),
    ]
    name = [
        ("chalmers", "Chalmers"),
        ("peter", "Peter"),
        ("james", "James"),
        ("mr.", "Mr."),
        ("iii", "III"),
        ("jim", "Jim"),
        ("elodie nunez", "Élodie  Ñúñez"),
    ]
    assert rows.string == [
        *(("address", *row) for row in address),
        ("address-city", "pleasantville", "PleasantVille"),
        ("address-country", "au", "AU"),
        ("address-postalcode", "3999", "3999"),
        ("address-state", "vic", "Vic"),
        ("family", "chalmers", "Chalmers"),
        ("given", "peter", "Peter"),
        ("given", "james", "James"),
        ("given", "jim", "Jim"),
        *(("name", *row) for row in name),
        *(("phonetic", *row) for row in name),
    ]
    assert rows.token == [
        ("_security", "http://terminology.hl7.org/CodeSystem/v3-Confidentiality", "R", None),
        ("_tag", "http://example.org/tags", "vip", "vip"),
        ("active", None, "true", None),
        ("address-use", None, "home", None),
        ("deceased", None, "false", None),  # R4's expression: no deceased[x] is not deceased
        ("email", None, "jim@example.org", None),
        ("gender", None, "male", None),
        ("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345", "medical record"),
        ("language", "urn:ietf:bcp:47", "en-AU", None),
        ("language", None, None, "english"),
        ("phone", None, "(03) 5555 6473", None),
        ("telecom", None, "(03) 5555 6473", None),
        ("telecom", None, "jim@example.org", None),
    ]
    assert rows.date == [("birthdate", utc(1974, 12, 25), utc(1974, 12, 26))]
    assert rows.reference == [
        ("general-practitioner", "Practitioner", "gp", None, None, None),
        ("link", "Patient", "p0", None, None, None),
        ("link", "RelatedPerson", "r1", None, None, None),
        ("organization", "Organization", "1", None, None, None),
    ]
    assert rows.uri == [
        ("_profile", "http://example.org/StructureDefinition/my-patient"),
        ("_source", "http://example.org/source#abc"),
    ]
    assert rows.number == []
    assert rows.quantity == []


def test_id_and_last_updated_are_left_to_the_resources_table() -> None:
    found = codes(index_rows(PATIENT))
    assert "_id" not in found
    assert "_lastUpdated" not in found


def test_deceased_patient() -> None:
    patient = {
        "resourceType": "Patient",
        "deceasedDateTime": "2015-02-14T13:42:00+10:00",
        "active": False,
    }
    rows = index_rows(patient)
    assert rows.token == [("active", None, "false", None), ("deceased", None, "true", None)]
    assert rows.date == [
        ("death-date", utc(2015, 2, 14, 3, 42), utc(2015, 2, 14, 3, 42, 1)),
    ]


def test_rows_are_unique_in_order_of_first_appearance() -> None:
    patient = {
        "resourceType": "Patient",
        "name": [
            {"family": "Doe", "given": ["Ann", "Ann", "Bea"]},
            {"family": "DOE", "given": ["Ann"]},
            {"family": "Doe"},
        ],
        "identifier": [{"system": "s", "value": "1"}, {"system": "s", "value": "1"}],
    }
    rows = index_rows(patient)
    assert of(rows.string, "family") == [("doe", "Doe"), ("doe", "DOE")]
    assert of(rows.string, "given") == [("ann", "Ann"), ("bea", "Bea")]
    assert of(rows.string, "name") == [
        ("doe", "Doe"),
        ("ann", "Ann"),
        ("bea", "Bea"),
        ("doe", "DOE"),
    ]
    assert of(rows.token, "identifier") == [("s", "1", None)]
    for table in IndexRows.__slots__:
        found = getattr(rows, table)
        assert len(found) == len(set(found))


def observation(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Observation", "status": "final", **elements}


OBSERVATION = parse_json(
    b"""{
  "resourceType": "Observation",
  "id": "o1",
  "status": "final",
  "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                            "code": "vital-signs", "display": "Vital Signs"}]}],
  "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7", "display": "Body Weight"}],
           "text": "Weight"},
  "subject": {"reference": "Patient/p1"},
  "encounter": {"reference": "Encounter/e1/_history/2"},
  "effectiveDateTime": "2016-03-28T09:30:00+02:00",
  "performer": [{"reference": "http://127.0.0.1:8080/fhir/Practitioner/pr1"},
                {"reference": "https://other.example/fhir/Practitioner/x"}],
  "valueQuantity": {"value": 72.50, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
  "component": [
    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
     "valueQuantity": {"value": 107, "unit": "mmHg", "system": "http://unitsofmeasure.org",
                       "code": "mm[Hg]"}},
    {"code": {"text": "Mood"},
     "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "112080002",
                                          "display": "Happy"}]}}
  ]
}"""
)


def test_observation() -> None:
    assert isinstance(OBSERVATION["valueQuantity"]["value"], DecimalText)
    rows = index_rows(OBSERVATION, local_bases=LOCAL)
    weight = [(LOINC, "29463-7", "body weight"), (None, None, "weight")]
    systolic = [(LOINC, "8480-6", None), (None, None, "mood")]
    happy = [(SNOMED, "112080002", "happy")]
    assert rows.token == [
        ("category", CATEGORY, "vital-signs", "vital signs"),
        *(("code", *row) for row in weight),
        *(("combo-code", *row) for row in weight + systolic),
        *(("combo-value-concept", *row) for row in happy),
        *(("component-code", *row) for row in systolic),
        *(("component-value-concept", *row) for row in happy),
        ("status", None, "final", None),
    ]
    assert rows.date == [("date", utc(2016, 3, 28, 7, 30), utc(2016, 3, 28, 7, 30, 1))]
    assert rows.reference == [
        ("encounter", "Encounter", "e1", None, None, None),
        ("patient", "Patient", "p1", None, None, None),
        ("performer", "Practitioner", "pr1", None, None, None),
        ("performer", None, None, "https://other.example/fhir/Practitioner/x", None, None),
        ("subject", "Patient", "p1", None, None, None),
    ]
    weight_kg = (UCUM, "kg", "kg", D("72.50"), D("72.495"), D("72.505"))
    pressure = (UCUM, "mm[Hg]", "mmHg", D("107"), D("106.5"), D("107.5"))
    assert rows.quantity == [
        ("combo-value-quantity", *weight_kg),
        ("combo-value-quantity", *pressure),
        ("component-value-quantity", *pressure),
        ("value-quantity", *weight_kg),
    ]
    # the decimal keeps the precision of its text
    assert str(rows.quantity[0][4]) == "72.50"
    assert rows.string == []
    assert rows.number == []
    assert rows.uri == []


def test_composite_and_special_parameters_are_not_indexed() -> None:
    found = codes(index_rows(OBSERVATION))
    assert "code-value-quantity" not in found
    assert "component-code-value-quantity" not in found
    location = {
        "resourceType": "Location",
        "name": "Home",
        "position": {"longitude": 4.9, "latitude": 52.3},
    }
    rows = index_rows(location)
    assert "near" not in codes(rows)
    assert rows.string == [("name", "home", "Home")]


def test_observation_value_codeable_concept_and_string() -> None:
    rows = index_rows(
        observation(
            valueCodeableConcept={
                "coding": [{"system": SNOMED, "code": "260385009", "display": "Negative"}],
                "text": "Negative result",
            }
        )
    )
    concept = [(SNOMED, "260385009", "negative"), (None, None, "negative result")]
    assert of(rows.token, "value-concept") == concept
    assert of(rows.token, "combo-value-concept") == concept
    assert rows.string == [("value-string", "negative result", "Negative result")]
    rows = index_rows(observation(valueString="  Clear  fluid "))
    assert rows.string == [("value-string", "clear fluid", "  Clear  fluid ")]
    # the empty string and one of blanks are no strings to find
    assert index_rows(observation(valueString="   ")).string == []


def test_observation_effective_period_and_value_period() -> None:
    rows = index_rows(
        observation(
            effectivePeriod={"start": "2020-01-01", "end": "2020-01-31T12:00:00Z"},
            valuePeriod={"start": "2021-06"},
        )
    )
    assert rows.date == [
        ("date", utc(2020, 1, 1), utc(2020, 1, 31, 12, 0, 1)),
        ("value-date", utc(2021, 6, 1), DATE_MAX),
    ]


@pytest.mark.parametrize(
    ("period", "expected"),
    [
        ({"start": "2020-01-01"}, (utc(2020, 1, 1), DATE_MAX)),
        ({"end": "2020-01-01"}, (DATE_MIN, utc(2020, 1, 2))),
        ({"start": "2019", "end": "2020"}, (utc(2019, 1, 1), utc(2021, 1, 1))),
        ({"start": "not a date", "end": "2020"}, (DATE_MIN, utc(2021, 1, 1))),
        ({}, None),
        ({"extension": [{"url": "x", "valueString": "y"}]}, None),
    ],
)
def test_period(period: dict[str, Any], expected: tuple[datetime, datetime] | None) -> None:
    encounter = {"resourceType": "Encounter", "status": "finished", "period": period}
    rows = index_rows(encounter)
    assert rows.date == ([] if expected is None else [("date", *expected)])


def test_observation_effective_timing() -> None:
    rows = index_rows(
        observation(
            effectiveTiming={
                "event": ["2020-05-01T08:00:00Z", "2020-05-02", "not a date"],
                "repeat": {
                    "boundsPeriod": {"start": "2020-05-01", "end": "2020-05-10"},
                    "frequency": 1,
                },
            }
        )
    )
    assert rows.date == [
        ("date", utc(2020, 5, 1, 8), utc(2020, 5, 1, 8, 0, 1)),
        ("date", utc(2020, 5, 2), utc(2020, 5, 3)),
        ("date", utc(2020, 5, 1), utc(2020, 5, 11)),
    ]
    # a Timing bound by a duration has no dates to index but its events
    rows = index_rows(observation(effectiveTiming={"repeat": {"boundsDuration": {"value": 3}}}))
    assert rows.date == []


def test_observation_quantities_that_are_no_single_value() -> None:
    assert (
        index_rows(observation(valueRange={"low": {"value": 1}, "high": {"value": 2}})).quantity
        == []
    )
    sampled = {"origin": {"value": 0}, "period": 10, "dimensions": 1, "data": "1 2 3"}
    assert index_rows(observation(valueSampledData=sampled)).quantity == []
    assert index_rows(observation(valueQuantity={"unit": "kg"})).quantity == []
    assert index_rows(observation(valueQuantity={"value": True})).quantity == []


def test_quantity_without_units_and_with_a_comparator() -> None:
    rows = index_rows(observation(valueQuantity={"value": 5, "comparator": "<"}))
    assert of(rows.quantity, "value-quantity") == [(None, None, None, D("5"), D("4.5"), D("5.5"))]
    rows = index_rows(observation(valueQuantity={"value": 0.25, "unit": "mg", "code": ""}))
    assert of(rows.quantity, "value-quantity") == [
        (None, None, "mg", D("0.25"), D("0.245"), D("0.255"))
    ]


def test_encounter() -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
            "display": "ambulatory",
        },
        "subject": {"reference": "Patient/p1"},
        "participant": [{"individual": {"reference": "Practitioner/pr1"}}],
        "period": {"start": "2015-01-17T16:00:00+10:00", "end": "2015-01-17T16:30:00+10:00"},
        "length": {"value": 30, "unit": "min", "system": UCUM, "code": "min"},
        "location": [
            {"location": {"reference": "Location/l1"}, "period": {"start": "2015-01-17T16:00:00Z"}}
        ],
    }
    rows = index_rows(encounter)
    assert rows.token == [
        ("class", "http://terminology.hl7.org/CodeSystem/v3-ActCode", "AMB", "ambulatory"),
        ("status", None, "finished", None),
    ]
    assert rows.date == [
        ("date", utc(2015, 1, 17, 6), utc(2015, 1, 17, 6, 30, 1)),
        ("location-period", utc(2015, 1, 17, 16), DATE_MAX),
    ]
    assert rows.quantity == [("length", UCUM, "min", "min", D("30"), D("29.5"), D("30.5"))]
    assert rows.reference == [
        ("location", "Location", "l1", None, None, None),
        ("participant", "Practitioner", "pr1", None, None, None),
        ("patient", "Patient", "p1", None, None, None),
        ("practitioner", "Practitioner", "pr1", None, None, None),
        ("subject", "Patient", "p1", None, None, None),
    ]


def test_medication_request() -> None:
    request = {
        "resourceType": "MedicationRequest",
        "status": "active",
        "intent": "order",
        "contained": [{"resourceType": "Medication", "id": "med1"}],
        "medicationCodeableConcept": {
            "coding": [
                {
                    "system": "http://www.nlm.nih.gov/research/umls/rxnorm",
                    "code": "582620",
                    "display": "Nizatidine 15 MG/ML Oral Solution [Axid]",
                }
            ]
        },
        "subject": {"reference": "Patient/p1", "display": "Peter"},
        "authoredOn": "2015-01-15",
        "requester": {"reference": "Practitioner/pr1"},
        "dosageInstruction": [
            {"timing": {"event": ["2015-01-16T08:00:00Z"], "repeat": {"frequency": 2}}}
        ],
    }
    rows = index_rows(request)
    assert rows.token == [
        ("code", RXNORM, "582620", "nizatidine 15 mg/ml oral solution [axid]"),
        ("intent", None, "order", None),
        ("status", None, "active", None),
    ]
    assert rows.date == [
        ("authoredon", utc(2015, 1, 15), utc(2015, 1, 16)),
        ("date", utc(2015, 1, 16, 8), utc(2015, 1, 16, 8, 0, 1)),
    ]
    assert rows.reference == [
        ("patient", "Patient", "p1", None, None, None),
        ("requester", "Practitioner", "pr1", None, None, None),
        ("subject", "Patient", "p1", None, None, None),
    ]
    # a medication among the contained resources has no identity to find
    contained = {**request, "medicationReference": {"reference": "#med1"}}
    del contained["medicationCodeableConcept"]
    rows = index_rows(contained)
    assert of(rows.reference, "medication") == []
    assert of(rows.token, "code") == []


def test_appointment_participant_actors() -> None:
    appointment = {
        "resourceType": "Appointment",
        "status": "booked",
        "start": "2013-12-10T09:00:00Z",
        "participant": [
            {"actor": {"reference": "Patient/p1"}, "status": "accepted"},
            {"actor": {"reference": "Practitioner/pr1"}, "status": "accepted"},
            {"actor": {"reference": "Location/l1"}, "status": "accepted"},
            {"actor": {"display": "a neighbour"}, "status": "tentative"},
        ],
    }
    rows = index_rows(appointment)
    assert rows.reference == [
        ("actor", "Patient", "p1", None, None, None),
        ("actor", "Practitioner", "pr1", None, None, None),
        ("actor", "Location", "l1", None, None, None),
        ("location", "Location", "l1", None, None, None),
        ("patient", "Patient", "p1", None, None, None),
        ("practitioner", "Practitioner", "pr1", None, None, None),
    ]
    assert of(rows.token, "part-status") == [(None, "accepted", None), (None, "tentative", None)]
    assert rows.date == [("date", utc(2013, 12, 10, 9), utc(2013, 12, 10, 9, 0, 1))]


def test_immunization() -> None:
    immunization = {
        "resourceType": "Immunization",
        "status": "completed",
        "vaccineCode": {
            "coding": [{"system": "urn:oid:1.2.36.1.2001.1005.17", "code": "FLUVAX"}],
            "text": "Fluvax (Influenza)",
        },
        "patient": {"reference": "Patient/p1"},
        "occurrenceDateTime": "2013-01-10",
        "lotNumber": "AAJN11K",
        "performer": [{"actor": {"reference": "Practitioner/pr1"}}],
        "protocolApplied": [{"series": "Vaccination Series 1", "doseNumberPositiveInt": 1}],
    }
    rows = index_rows(immunization)
    assert rows.string == [
        ("lot-number", "aajn11k", "AAJN11K"),
        ("series", "vaccination series 1", "Vaccination Series 1"),
    ]
    assert rows.token == [
        ("status", None, "completed", None),
        ("vaccine-code", "urn:oid:1.2.36.1.2001.1005.17", "FLUVAX", None),
        ("vaccine-code", None, None, "fluvax (influenza)"),
    ]
    assert rows.date == [("date", utc(2013, 1, 10), utc(2013, 1, 11))]
    assert rows.reference == [
        ("patient", "Patient", "p1", None, None, None),
        ("performer", "Practitioner", "pr1", None, None, None),
    ]
    # an occurrence said in words is no date
    in_words = {**immunization, "occurrenceString": "last spring"}
    del in_words["occurrenceDateTime"]
    assert index_rows(in_words).date == []


def test_consent() -> None:
    consent = {
        "resourceType": "Consent",
        "status": "active",
        "scope": {
            "coding": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/consentscope",
                    "code": "patient-privacy",
                }
            ]
        },
        "category": [{"coding": [{"system": LOINC, "code": "59284-0"}]}],
        "patient": {"reference": "Patient/p1"},
        "dateTime": "2018-12-28",
        "performer": [{"reference": "RelatedPerson/r1"}],
        "sourceAttachment": {"url": "http://example.org/consents/1.pdf", "title": "Signed"},
        "provision": {
            "period": {"start": "2019-01-01"},
            "actor": [{"role": {"text": "carer"}, "reference": {"reference": "RelatedPerson/r1"}}],
            "data": [
                {
                    "meaning": "related",
                    "reference": {
                        "identifier": {"system": "http://example.org/docs", "value": "D-1"}
                    },
                }
            ],
            "purpose": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-ActReason", "code": "TREAT"}
            ],
        },
    }
    rows = index_rows(consent)
    assert rows.reference == [
        ("actor", "RelatedPerson", "r1", None, None, None),
        ("consentor", "RelatedPerson", "r1", None, None, None),
        ("data", None, None, None, "http://example.org/docs", "D-1"),
        ("patient", "Patient", "p1", None, None, None),
        ("source-reference", None, None, "http://example.org/consents/1.pdf", None, None),
    ]
    assert rows.date == [
        ("date", utc(2018, 12, 28), utc(2018, 12, 29)),
        ("period", utc(2019, 1, 1), DATE_MAX),
    ]
    assert rows.token == [
        ("category", LOINC, "59284-0", None),
        ("purpose", "http://terminology.hl7.org/CodeSystem/v3-ActReason", "TREAT", None),
        ("scope", "http://terminology.hl7.org/CodeSystem/consentscope", "patient-privacy", None),
        ("status", None, "active", None),
    ]
    by_reference = {**consent, "sourceReference": {"reference": "DocumentReference/d1"}}
    del by_reference["sourceAttachment"]
    assert of(index_rows(by_reference).reference, "source-reference") == [
        ("DocumentReference", "d1", None, None, None)
    ]


def test_related_person() -> None:
    related = {
        "resourceType": "RelatedPerson",
        "active": False,
        "patient": {"reference": "Patient/p1"},
        "relationship": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-RoleCode",
                        "code": "MTH",
                        "display": "mother",
                    }
                ]
            }
        ],
        "name": [{"family": "Chalmers", "given": ["Bénédicte"]}],
        "telecom": [{"system": "email", "value": "mum@example.org"}],
        "birthDate": "1950-06",
    }
    rows = index_rows(related)
    name = [("chalmers", "Chalmers"), ("benedicte", "Bénédicte")]
    assert rows.string == [*(("name", *r) for r in name), *(("phonetic", *r) for r in name)]
    assert rows.token == [
        ("active", None, "false", None),
        ("email", None, "mum@example.org", None),
        ("relationship", "http://terminology.hl7.org/CodeSystem/v3-RoleCode", "MTH", "mother"),
        ("telecom", None, "mum@example.org", None),
    ]
    assert rows.date == [("birthdate", utc(1950, 6, 1), utc(1950, 7, 1))]
    assert rows.reference == [("patient", "Patient", "p1", None, None, None)]


# --------------------------------------------------------------------------------------------
# References


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ({"reference": "Patient/p1"}, [P1]),
        ({"reference": "Patient/p1/_history/3"}, [P1]),
        ({"reference": "http://127.0.0.1:8080/fhir/Patient/p1"}, [P1]),
        ({"reference": "http://127.0.0.1:8080/fhir/Patient/p1/_history/2"}, [P1]),
        *(
            ({"reference": url}, [(None, None, url, None, None)])
            for url in (
                "https://other.example/fhir/Patient/p1",
                "urn:uuid:9d8b2a44-3f51-4c4e-9a3e-4d5f0b1c2a11",
                "Patient?identifier=http://example.org/mrn|7",
            )
        ),
        ({"reference": "#p1"}, []),
        ({"reference": ""}, []),
        ({"display": "someone"}, []),
        (
            {"identifier": {"system": "http://example.org/mrn", "value": "7"}},
            [(None, None, None, "http://example.org/mrn", "7")],
        ),
        ({"identifier": {"value": "7"}}, [(None, None, None, None, "7")]),
        ({"identifier": {"use": "usual"}}, []),
        (
            {
                "reference": "Patient/p1",
                "type": "Patient",
                "identifier": {"system": "http://example.org/mrn", "value": "7"},
            },
            [P1, (None, None, None, "http://example.org/mrn", "7")],
        ),
    ],
)
def test_reference(reference: dict[str, Any], expected: list[tuple[Any, ...]]) -> None:
    rows = index_rows(observation(subject=reference), local_bases=LOCAL)
    assert of(rows.reference, "subject") == expected


def test_local_bases_are_compared_without_a_trailing_slash() -> None:
    subject = {"reference": "http://127.0.0.1:8080/fhir/Patient/p1"}
    for bases in (("http://127.0.0.1:8080/fhir",), ("http://127.0.0.1:8080/fhir/",)):
        rows = index_rows(observation(subject=subject), local_bases=bases)
        assert of(rows.reference, "subject") == [P1]
    rows = index_rows(observation(subject=subject))
    assert of(rows.reference, "subject") == [
        (None, None, "http://127.0.0.1:8080/fhir/Patient/p1", None, None)
    ]


@pytest.mark.parametrize(
    ("canonical", "expected"),
    [
        ("Questionnaire/q1", ("Questionnaire", "q1", None, None, None)),
        ("Questionnaire/q1|2.0", ("Questionnaire", "q1", None, None, None)),
        (
            "http://127.0.0.1:8080/fhir/Questionnaire/q2|3",
            ("Questionnaire", "q2", None, None, None),
        ),
        (
            "http://example.org/Questionnaire/phq-9|1.0.0",
            (None, None, "http://example.org/Questionnaire/phq-9", None, None),
        ),
        (
            "http://example.org/questionnaires/phq-9",
            (None, None, "http://example.org/questionnaires/phq-9", None, None),
        ),
    ],
)
def test_canonical_reference(canonical: str, expected: tuple[Any, ...]) -> None:
    response = {
        "resourceType": "QuestionnaireResponse",
        "status": "completed",
        "questionnaire": canonical,
    }
    rows = index_rows(response, local_bases=LOCAL)
    assert rows.reference == [("questionnaire", *expected)]


def test_bundle_first_resource_counts_for_its_own_parameter() -> None:
    document = {
        "resourceType": "Bundle",
        "type": "document",
        "entry": [
            {"resource": {"resourceType": "Composition", "id": "c1", "status": "final"}},
            {"resource": {"resourceType": "Patient", "id": "p1"}},
        ],
    }
    rows = index_rows(document)
    assert rows.reference == [("composition", "Composition", "c1", None, None, None)]
    message = {
        "resourceType": "Bundle",
        "type": "message",
        "entry": [{"resource": {"resourceType": "MessageHeader", "id": "m1"}}],
    }
    assert index_rows(message).reference == [("message", "MessageHeader", "m1", None, None, None)]


# --------------------------------------------------------------------------------------------
# Numbers and money


def test_number_parameters() -> None:
    assessment = parse_json(
        b"""{"resourceType": "RiskAssessment", "status": "final",
             "subject": {"reference": "Patient/p1"},
             "prediction": [{"probabilityDecimal": 0.10}, {"probabilityDecimal": 0.02},
                            {"probabilityRange": {"low": {"value": 1}, "high": {"value": 2}}},
                            {"probabilityDecimal": 3}]}"""
    )
    rows = index_rows(assessment)
    assert rows.number == [
        ("probability", D("0.10"), D("0.095"), D("0.105")),
        ("probability", D("0.02"), D("0.015"), D("0.025")),
        ("probability", D("3"), D("2.5"), D("3.5")),
    ]
    # a boolean is never a number (an invalid resource must still index)
    broken = {"resourceType": "RiskAssessment", "prediction": [{"probabilityDecimal": True}]}
    assert index_rows(broken).number == []
    sequence = {
        "resourceType": "MolecularSequence",
        "coordinateSystem": 0,
        "referenceSeq": {"windowStart": 22125500, "windowEnd": 22125510},
    }
    assert index_rows(sequence).number == [
        ("window-end", D("22125510"), D("22125509.5"), D("22125510.5")),
        ("window-start", D("22125500"), D("22125499.5"), D("22125500.5")),
    ]


def test_money() -> None:
    item = parse_json(
        b"""{"resourceType": "ChargeItem", "status": "billable",
             "code": {"text": "consultation"}, "subject": {"reference": "Patient/p1"},
             "priceOverride": {"value": 40.00, "currency": "EUR"}, "factorOverride": 0.8}"""
    )
    rows = index_rows(item)
    assert rows.quantity == [
        ("price-override", None, "EUR", "EUR", D("40.00"), D("39.995"), D("40.005"))
    ]
    assert rows.number == [("factor-override", D("0.8"), D("0.75"), D("0.85"))]


def test_bare_number_as_quantity() -> None:
    # no R4 quantity parameter selects a bare decimal today; the index would take one as unitless
    assert _quantity_rows([DecimalText("2.0"), 3, True, "4"], frozenset()) == [
        (None, None, None, D("2.0"), D("1.95"), D("2.05")),
        (None, None, None, D("3"), D("2.5"), D("3.5")),
    ]


# --------------------------------------------------------------------------------------------
# Readers for types an expression does not tell


def test_strings_of_other_complex_types_are_their_string_leaves() -> None:
    rows = _string_rows("")
    value = {"a": "One", "b": [{"c": "Two"}, 3, True], "d": ""}
    assert rows(["Zero", value], frozenset()) == [("zero", "Zero"), ("one", "One"), ("two", "Two")]


def test_tokens_of_untold_types_are_read_from_their_element_names() -> None:
    rows = _token_rows("")
    values = [
        {"coding": [{"system": "s", "code": "c", "display": "D"}], "text": "T"},
        {"system": "s", "code": "c2"},
        {"display": "Only display"},
        {"system": "i", "value": "v", "type": {"text": "Kind"}},
        {"type": {"text": "Kind only"}},
        {"text": "Text only"},
        {"system": "s"},
        "plain",
        "",
        True,
        False,
        3,
    ]
    assert rows(values, frozenset()) == [
        ("s", "c", "d"),
        (None, None, "t"),
        ("s", "c2", None),
        (None, None, "only display"),
        ("i", "v", "kind"),
        (None, None, "kind only"),
        (None, None, "text only"),
        (None, "plain", None),
        (None, "true", None),
        (None, "false", None),
    ]


def test_identifier_with_type_text_only_and_coding_with_display_only() -> None:
    patient = {
        "resourceType": "Patient",
        "identifier": [{"type": {"text": "Passport"}}],
        "meta": {"tag": [{"display": "Needs review"}, {"system": "http://example.org/tags"}]},
    }
    rows = index_rows(patient)
    assert of(rows.token, "identifier") == [(None, None, "passport")]
    assert of(rows.token, "_tag") == [(None, None, "needs review")]


# --------------------------------------------------------------------------------------------
# Errors and the official examples


@pytest.mark.parametrize("resource", [{}, {"resourceType": "Foo"}, {"resourceType": 3}])
def test_unknown_type_is_refused(resource: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match="unknown resource type"):
        index_rows(resource)


def _check_row_shapes(rows: IndexRows) -> None:
    for code, normalized, exact in rows.string:
        assert isinstance(code, str)
        assert normalized == normalize_string(exact)
        assert normalized
    for _, system, token, text in rows.token:
        assert token is not None or text is not None
        assert system is None or isinstance(system, str)
        assert text is None or text == normalize_string(text)
    for _, start, end in rows.date:
        assert start.tzinfo is UTC
        assert end.tzinfo is UTC
        assert DATE_MIN <= start <= end <= DATE_MAX
    for reference in rows.reference:
        local = reference[1] is not None and reference[2] is not None
        assert local or any(part is not None for part in reference[3:])
    for _, number, low, high in rows.number:
        assert low < number < high
    for quantity in rows.quantity:
        assert quantity[5] < quantity[4] < quantity[6]
    for _, uri in rows.uri:
        assert uri


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.stem for p in EXAMPLES])
def test_every_official_example_indexes(path: Path) -> None:
    resource = parse_json(path.read_bytes())
    rows = index_rows(resource, local_bases=("http://hl7.org/fhir",))
    _check_row_shapes(rows)
    for table in IndexRows.__slots__:
        found = getattr(rows, table)
        assert len(found) == len(set(found))


def test_official_patient_example() -> None:
    resource = parse_json((EXAMPLES[0].parent / "Patient-example.json").read_bytes())
    rows = index_rows(resource)
    assert ("name", "chalmers", "Chalmers") in rows.string
    assert ("family", "chalmers", "Chalmers") in rows.string
    assert ("given", "peter", "Peter") in rows.string
    assert rows.date == [("birthdate", utc(1974, 12, 25), utc(1974, 12, 26))]
    assert ("identifier", "urn:oid:1.2.36.146.595.217.0.1", "12345", None) in rows.token
    assert ("gender", None, "male", None) in rows.token
    assert rows.reference == [("organization", "Organization", "1", None, None, None)]


def test_official_observation_examples() -> None:
    folder = EXAMPLES[0].parent
    pressure = index_rows(parse_json((folder / "Observation-blood-pressure.json").read_bytes()))
    assert of(pressure.quantity, "component-value-quantity") == [
        (UCUM, "mm[Hg]", "mmHg", D("107"), D("106.5"), D("107.5")),
        (UCUM, "mm[Hg]", "mmHg", D("60"), D("59.5"), D("60.5")),
    ]
    assert of(pressure.reference, "based-on") == [
        (None, None, None, "https://acme.org/identifiers", "1234")
    ]
    assert of(pressure.uri, "_profile") == [("http://hl7.org/fhir/StructureDefinition/vitalsigns",)]
    # 1.0, 1.00, 1.0 again, 1E-22, 1000000000000000000, 1.000000000000000000E-245 and
    # -1.000000000000000000E+245 grams: each value with the precision of its text
    decimal = index_rows(parse_json((folder / "Observation-decimal.json").read_bytes()))
    values = ["1.0", "1.00", "1E-22", "1000000000000000000", "1.000000000000000000E-245"]
    values.append("-1.000000000000000000E+245")
    expected = []
    for text in values:
        found = number_range(text)
        assert found is not None
        expected.append((None, None, "g", *found))
    assert of(decimal.quantity, "component-value-quantity") == expected
    assert [str(row[3]) for row in of(decimal.quantity, "component-value-quantity")] == [
        "1.0",
        "1.00",
        "1E-22",
        "1000000000000000000",
        "1.000000000000000000E-245",
        "-1.000000000000000000E+245",
    ]
    assert of(decimal.quantity, "component-value-quantity")[5][4:] == (
        D("-1.0000000000000000005E+245"),
        D("-9.999999999999999995E+244"),
    )
