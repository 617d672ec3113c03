"""Search over HTTP agrees with a plain-Python reference evaluator (tests/support/search_reference.py).

Hypothesis generates small sets of Patients and Observations, creates them in one transaction,
reads them back (so ids and references are the server's) and runs generated searches both through
``GET /fhir/{type}?...`` and through the reference evaluator: the ids must be the same, in the same
order. Every search is also paged with a small ``_count`` by following the ``next`` links, and the
pages, in order, must give every match exactly once.

Each example tags its resources with its own ``urn:test:run|<uuid>`` and every search carries
``_tag=urn:test:run|<uuid>``, so examples never see each other's resources (nor other tests').

The example-based tests at the end pin the trickiest rules on readable cases: accent folding,
date precision edges, ``:not`` with the element absent, open periods, quantity precision. The
``test_reference_*`` tests check the evaluator itself against hand-computed answers, without a
server.

Each property test runs 100 examples (about 30 s for the file on a quiet 2-core machine); set
``SEARCH_PROPERTY_EXAMPLES`` for a longer hunt. A failure shrinks for a minute or two (every
attempt creates resources over HTTP) and prints the query, both id lists and the example's
resources with the fields the search looks at.
"""

from __future__ import annotations

import calendar
import json
import os
import re
import unicodedata
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_CEILING, ROUND_FLOOR, Decimal
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, note, settings
from hypothesis import strategies as st

from tests.support import search_reference as ref

Resource = dict[str, Any]
Params = list[tuple[str, str]]

TAG_SYSTEM = "urn:test:run"
LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MISSING_ID = "00000000-0000-4000-8000-000000000000"

# Names with accents, case variants, a decomposed (NFD) spelling, a sharp s and inner spaces.
FAMILIES = [
    "Müller",
    "muller",
    "MÜLLER",
    "Mueller",
    "Mu\u0308ller",
    "Weiß",
    "Weiss",
    "van der Berg",
]
GIVENS = ["Ann", "Anna", "ANN", "Hans", "Hänsel", "Zoë", "zoe", "Éva"]
NAME_PREFIXES = ["Dr.", "Frau"]
GENDERS = ["male", "female", "other", "unknown"]
IDENTIFIER_SYSTEMS = ["urn:oid:1.2.3", "http://example.org/mrn"]
IDENTIFIER_VALUES = ["123", "456", "A-7"]
LOINC_CODES = ["29463-7", "8302-2", "3141-9"]
ZONES = ["Z", "+00:00", "+02:00", "-05:00", "+14:00", "-12:00"]
PREFIXES = ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb"]

SETTINGS = settings(
    max_examples=int(os.environ.get("SEARCH_PROPERTY_EXAMPLES", "100")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    report_multiple_bugs=False,  # shrink the first failure only: every attempt costs HTTP calls
)


# ----------------------------------------------------------------------------------------- HTTP


def dumps(value: Any) -> bytes:
    """JSON with Decimals written as their text (so 70.10 keeps its trailing zero)."""
    decimals: dict[str, str] = {}

    def default(o: object) -> str:
        if isinstance(o, Decimal):
            token = f"@@decimal-{len(decimals)}@@"
            decimals[token] = str(o)
            return token
        raise TypeError(type(o))

    text = json.dumps(value, default=default, ensure_ascii=False)
    for token, number in decimals.items():
        text = text.replace(f'"{token}"', number)
    return text.encode()


def loads(response: httpx.Response) -> Any:
    return json.loads(response.text, parse_float=Decimal)


def tagged(resource: Resource, tag: str) -> Resource:
    return {**resource, "meta": {"tag": [{"system": TAG_SYSTEM, "code": tag}]}}


def create(client: httpx.Client, entries: Sequence[tuple[str, Resource]]) -> list[Resource]:
    """POST (urn, resource) pairs as one transaction; the stored resources, read back, in order."""
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {
                "fullUrl": urn,
                "resource": resource,
                "request": {"method": "POST", "url": resource["resourceType"]},
            }
            for urn, resource in entries
        ],
    }
    response = client.post(
        "", content=dumps(bundle), headers={"Content-Type": "application/fhir+json"}
    )
    assert response.status_code == 200, response.text
    stored = []
    for entry in loads(response)["entry"]:
        location = entry["response"]["location"]
        resource_type, resource_id = location.split("/")[:2]
        read = client.get(f"/{resource_type}/{resource_id}")
        assert read.status_code == 200, read.text
        stored.append(loads(read))
    return stored


@dataclass
class SearchResult:
    pages: list[list[str]] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)

    @property
    def ids(self) -> list[str]:
        return [i for page in self.pages for i in page]


def run_search(client: httpx.Client, resource_type: str, params: Params) -> SearchResult:
    """GET the search and every page after it through the `next` links."""
    result = SearchResult()
    response = client.get(f"/{resource_type}", params=params)
    while True:
        url = str(response.request.url)
        assert response.status_code == 200, f"GET {url}\n-> {response.status_code} {response.text}"
        bundle = loads(response)
        assert bundle["resourceType"] == "Bundle", url
        assert bundle["type"] == "searchset", url
        page = []
        for entry in bundle.get("entry", []):
            assert entry["search"]["mode"] == "match", (url, entry)
            resource = entry["resource"]
            assert resource["resourceType"] == resource_type, (url, entry)
            assert entry["fullUrl"].endswith(f"/{resource_type}/{resource['id']}"), (url, entry)
            page.append(resource["id"])
        result.pages.append(page)
        result.urls.append(url)
        following = [link["url"] for link in bundle.get("link", []) if link["relation"] == "next"]
        if not following:
            return result
        assert len(following) == 1, url
        assert following[0].startswith("http"), f"next link is not absolute: {following[0]}"
        assert len(result.pages) < 100, f"more than 100 pages: {result.urls[:3]}"
        response = client.get(following[0])


# --------------------------------------------------------------------------------- explanations


def summary(resource: Resource) -> dict[str, Any]:
    """The fields the searches look at, for failure messages."""
    keep = (
        "name",
        "gender",
        "birthDate",
        "identifier",
        "active",
        "code",
        "subject",
        "effectiveDateTime",
        "effectivePeriod",
        "valueQuantity",
    )
    fields: dict[str, Any] = {k: resource[k] for k in keep if k in resource}
    if "code" in fields:
        fields["code"] = [
            f"{c.get('system')}|{c.get('code')}" for c in fields["code"].get("coding", [])
        ]
    return fields


def explain(
    resource_type: str,
    stored: Sequence[Resource],
    params: Params,
    expected: Sequence[str],
    actual: Sequence[str],
) -> str:
    """The query, both answers and the example's resources, marked, with their searched fields."""
    wanted = [r for r in stored if r["resourceType"] == resource_type]
    sort_keys = [key for name, value in params if name == "_sort" for key in value.split(",")]
    lines = [
        "the server disagrees with the reference evaluator",
        f"query:    GET /{resource_type}?" + "&".join(f"{k}={v}" for k, v in params if k != "_tag"),
        f"expected: {list(expected)}",
        f"actual:   {list(actual)}",
        f"missing from actual:    {[i for i in expected if i not in actual]}",
        f"unexpected in actual:   {[i for i in actual if i not in expected]}",
        f"{resource_type} resources of the example (by id):",
    ]
    for resource in sorted(wanted, key=lambda r: r["id"]):
        mark = ("E" if resource["id"] in expected else "-") + (
            "A" if resource["id"] in actual else "-"
        )
        fields = summary(resource)
        for key in sort_keys:
            value = ref.sort_value(resource_type, resource, key)
            fields[f"_sort={key} by"] = (
                ref.show_instant(value) if isinstance(value, int | float) else value
            )
        lines.append(f"  {mark} {resource['id']}: {json.dumps(fields, default=str)}")
    lines.append("  (E: expected, A: returned)")
    return "\n".join(lines)


def check(
    client: httpx.Client,
    resource_type: str,
    stored: Sequence[Resource],
    tag: str,
    params: Params,
    count: int,
) -> None:
    """The search agrees with the reference, and so does its paging with `_count=count`."""
    query = [*params, ("_tag", f"{TAG_SYSTEM}|{tag}")]
    expected = ref.search_ids(resource_type, stored, query)
    of_type = sum(r["resourceType"] == resource_type for r in stored)
    share = "none" if not expected else "all" if len(expected) == of_type else "some"
    for name, _ in params:
        event(f"{name}: {share} match")
    whole = run_search(client, resource_type, query)
    assert whole.ids == expected, explain(resource_type, stored, params, expected, whole.ids)

    paged = run_search(client, resource_type, [*query, ("_count", str(count))])
    detail = explain(resource_type, stored, [*params, ("_count", str(count))], expected, paged.ids)
    for page, url in zip(paged.pages, paged.urls, strict=True):
        assert len(page) <= count, f"page {url} has {len(page)} entries\n{detail}"
    assert len(paged.ids) == len(set(paged.ids)), f"duplicates across pages\n{detail}"
    assert paged.ids == expected, f"pages {paged.pages}\n{detail}"


# ----------------------------------------------------------------------------------- generators


def ors(values: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """One value, or two OR-ed with a comma."""
    return st.lists(values, min_size=1, max_size=2).map(",".join)


@st.composite
def fhir_date(draw: st.DrawFn, years: st.SearchStrategy[int]) -> str:
    """A date at year, year-month or full-date precision, favouring the edges of months."""
    year = draw(years)
    precision = draw(st.sampled_from(["year", "month", "day"]))
    if precision == "year":
        return f"{year:04d}"
    month = draw(st.sampled_from([1, 2, 6, 12]))
    if precision == "month":
        return f"{year:04d}-{month:02d}"
    last = calendar.monthrange(year, month)[1]
    day = draw(st.sampled_from([1, 2, 15, last]))
    return f"{year:04d}-{month:02d}-{day:02d}"


@st.composite
def fhir_date_time(draw: st.DrawFn, years: st.SearchStrategy[int]) -> str:
    """A dateTime with seconds, sometimes a fraction, and a zone; near midnight and new year."""
    year = draw(years)
    month, day = draw(st.sampled_from([(1, 1), (6, 15), (12, 31)]))
    hour, minute, second = draw(
        st.sampled_from([(0, 0, 0), (0, 30, 0), (12, 0, 0), (23, 0, 0), (23, 59, 59)])
    )
    fraction = draw(st.sampled_from(["", ".5", ".25", ".999"]))
    zone = draw(st.sampled_from(ZONES))
    return f"{year:04d}-{month:02d}-{day:02d}T{hour:02d}:{minute:02d}:{second:02d}{fraction}{zone}"


# Mostly three adjacent years, so values of different precisions overlap and touch.
BIRTH_YEARS = st.one_of(
    st.sampled_from([1979, 1980, 1981]),
    st.sampled_from([1979, 1980, 1981]),
    st.sampled_from([1940, 2020]),
    st.integers(1940, 2020),
)
EFFECTIVE_YEARS = st.sampled_from([2019, 2020, 2021])


@st.composite
def human_name(draw: st.DrawFn) -> dict[str, Any]:
    name: dict[str, Any] = {}
    if draw(st.booleans()):
        name["family"] = draw(st.sampled_from(FAMILIES))
    given = draw(st.lists(st.sampled_from(GIVENS), max_size=2))
    if given or not name:
        name["given"] = given or [draw(st.sampled_from(GIVENS))]
    if draw(st.integers(0, 4)) == 0:
        name["prefix"] = [draw(st.sampled_from(NAME_PREFIXES))]
    if draw(st.integers(0, 4)) == 0:
        name["text"] = " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return name


@st.composite
def patient(draw: st.DrawFn) -> Resource:
    resource: Resource = {"resourceType": "Patient"}
    names = draw(st.lists(human_name(), max_size=2))
    if names:
        resource["name"] = names
    gender = draw(st.none() | st.sampled_from(GENDERS))
    if gender is not None:
        resource["gender"] = gender
    if draw(st.integers(0, 5)) > 0:
        resource["birthDate"] = draw(fhir_date(BIRTH_YEARS))
    identifiers = draw(
        st.lists(
            st.tuples(
                st.none() | st.sampled_from(IDENTIFIER_SYSTEMS), st.sampled_from(IDENTIFIER_VALUES)
            ),
            max_size=2,
        )
    )
    if identifiers:
        resource["identifier"] = [
            {"value": value} if system is None else {"system": system, "value": value}
            for system, value in identifiers
        ]
    active = draw(st.none() | st.booleans())
    if active is not None:
        resource["active"] = active
    return resource


@st.composite
def effective_period(draw: st.DrawFn) -> dict[str, str]:
    moments = st.one_of(fhir_date(EFFECTIVE_YEARS), fhir_date_time(EFFECTIVE_YEARS))
    which = draw(st.sampled_from(["start", "end", "both"]))
    if which != "both":
        return {which: draw(moments)}
    first, second = draw(moments), draw(moments)
    if ref.date_range(first).low > ref.date_range(second).low:
        first, second = second, first
    return {"start": first, "end": second}


DECIMALS = st.builds(
    lambda whole, fraction: Decimal(f"{whole}{fraction}"),
    st.sampled_from([0, 4, 5, 6, 70, 100]),
    st.sampled_from(["", ".0", ".5", ".05", ".45", ".49", ".50", ".95", ".25", ".1"]),
)


@st.composite
def observation(draw: st.DrawFn, patient_urns: Sequence[str]) -> Resource:
    codes = draw(st.lists(st.sampled_from(LOINC_CODES), min_size=1, max_size=2, unique=True))
    resource: Resource = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": code} for code in codes]},
    }
    if draw(st.integers(0, 5)) > 0:
        resource["subject"] = {"reference": draw(st.sampled_from(patient_urns))}
    kind = draw(st.sampled_from(["dateTime", "dateTime", "period", None]))
    if kind == "dateTime":
        resource["effectiveDateTime"] = draw(
            st.one_of(fhir_date_time(EFFECTIVE_YEARS), fhir_date(EFFECTIVE_YEARS))
        )
    elif kind == "period":
        resource["effectivePeriod"] = draw(effective_period())
    if draw(st.integers(0, 5)) > 0:
        unit = draw(st.sampled_from(["kg", "kg", "kg", "g"]))
        resource["valueQuantity"] = {
            "value": draw(DECIMALS),
            "unit": unit,
            "system": UCUM,
            "code": unit,
        }
    return resource


# ---------------------------------------------------------------------------- query generators


def strip_accents(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    return "".join(c for c in decomposed if not unicodedata.combining(c))


STRING_VARIANTS: list[Callable[[str], str]] = [
    lambda s: s,
    str.upper,
    str.lower,
    strip_accents,
    lambda s: s.replace(" ", "  "),
]


@st.composite
def string_query(draw: st.DrawFn, words: st.SearchStrategy[str], mode: str) -> str:
    """A prefix (mode "prefix"), a part ("contains") or a whole word ("exact") in some variant."""
    word = draw(words)
    if mode == "exact":
        return draw(st.sampled_from([word, word, word.upper(), strip_accents(word)]))
    start = 0 if mode == "prefix" else draw(st.integers(0, len(word) - 1))
    end = draw(st.integers(start + 1, len(word)))
    part = draw(st.sampled_from(STRING_VARIANTS))(word[start:end])
    return part if ref.normalize(part) else word


def name_words(
    stored: Sequence[Resource], parts: Sequence[str], alphabet: Sequence[str]
) -> st.SearchStrategy[str]:
    """Half the time a word of the example's names, else any word of the alphabet."""
    found = sorted({w for r in stored for w in ref.human_name_parts(r, parts)})
    return (
        st.one_of(st.sampled_from(found), st.sampled_from(alphabet))
        if found
        else st.sampled_from(alphabet)
    )


def truncations(text: str) -> list[str]:
    """A date or dateTime and its coarser forms: 2020-06-15T.. -> 2020, 2020-06, 2020-06-15, ..."""
    forms = [text[:4]]
    if len(text) >= 7:
        forms.append(text[:7])
    if len(text) >= 10:
        forms.append(text[:10])
    if len(text) > 10:
        forms.append(text)
    return forms


def neighbours(text: str) -> list[str]:
    """The unit just before and just after a date or dateTime, at its precision, in UTC.

    1980 -> 1979, 1981; 1980-12-31 -> 1980-12-30, 1981-01-01; 2020-01-01T01:00:00.5+02:00 ->
    2019-12-31T23:00:00.4Z, 2019-12-31T23:00:00.6Z: the query ranges that touch the value's range,
    where the prefixes' strict and non-strict comparisons differ.
    """
    r = ref.date_range(text)
    assert isinstance(r.low, int) and isinstance(r.high, int)

    def show(micros: int) -> str:
        moment = ref.moment(micros)
        if len(text) <= 10:
            return moment.strftime("%Y-%m-%d")[: len(text)]
        stamp = moment.strftime("%Y-%m-%dT%H:%M:%S")
        if "." in text:
            digits = len(re.split("[Z+-]", text.split(".")[1])[0])
            stamp += "." + f"{moment.microsecond:06d}"[:digits]
        return stamp + "Z"

    return [show(r.low - 1), show(r.high)]


def date_query(fresh: st.SearchStrategy[str], existing: Sequence[str]) -> st.SearchStrategy[str]:
    """A prefix and a date: a fresh one, one of the example's (coarsened) or one that touches it."""
    seen = sorted(
        {
            near
            for text in existing
            for form in truncations(text)
            for near in [form, *neighbours(form)]
        }
    )
    moments = st.one_of(fresh, st.sampled_from(seen)) if seen else fresh
    return st.builds(lambda p, d: p + d, st.sampled_from(PREFIXES), moments)


def token_query(systems: Sequence[str], codes: Sequence[str]) -> st.SearchStrategy[str]:
    system = st.sampled_from([*systems, "urn:other"])
    code = st.sampled_from([*codes, "nothing"])
    return st.one_of(
        code,
        code,
        st.builds(lambda s, c: f"{s}|{c}", system, code),
        st.builds(lambda s, c: f"{s}|{c}", system, code),
        code.map(lambda c: f"|{c}"),
        system.map(lambda s: f"{s}|"),
    )


def missing(names: Sequence[str]) -> st.SearchStrategy[tuple[str, str]]:
    return st.tuples(
        st.sampled_from([f"{n}:missing" for n in names]), st.sampled_from(["true", "false"])
    )


def patient_filter(stored: Sequence[Resource]) -> st.SearchStrategy[tuple[str, str]]:
    all_parts = ("family", "given", "prefix", "text")
    any_name = name_words(stored, all_parts, [*FAMILIES, *GIVENS])
    families = name_words(stored, ("family",), FAMILIES)
    givens = name_words(stored, ("given",), GIVENS)
    births = [r["birthDate"] for r in stored if "birthDate" in r]
    return st.one_of(
        st.tuples(st.just("name"), ors(string_query(any_name, "prefix"))),
        st.tuples(st.just("name:exact"), ors(string_query(any_name, "exact"))),
        st.tuples(st.just("name:contains"), ors(string_query(any_name, "contains"))),
        st.tuples(st.just("family"), ors(string_query(families, "prefix"))),
        st.tuples(st.just("given"), ors(string_query(givens, "prefix"))),
        st.tuples(st.sampled_from(["gender", "gender:not"]), ors(st.sampled_from(GENDERS))),
        st.tuples(st.just("birthdate"), ors(date_query(fhir_date(BIRTH_YEARS), births))),
        st.tuples(st.just("identifier"), ors(token_query(IDENTIFIER_SYSTEMS, IDENTIFIER_VALUES))),
        st.tuples(st.sampled_from(["active", "active:not"]), st.sampled_from(["true", "false"])),
        missing(["name", "gender", "birthdate", "identifier", "active"]),
    )


def observation_filter(stored: Sequence[Resource]) -> st.SearchStrategy[tuple[str, str]]:
    patients = [r for r in stored if r["resourceType"] == "Patient"]
    observations = [r for r in stored if r["resourceType"] == "Observation"]
    ids = st.sampled_from([*(p["id"] for p in patients), MISSING_ID])
    dates = [
        text
        for o in observations
        for text in (
            [o["effectiveDateTime"]]
            if "effectiveDateTime" in o
            else list(o.get("effectivePeriod", {}).values())
        )
    ]
    fresh_dates = st.one_of(fhir_date(EFFECTIVE_YEARS), fhir_date_time(EFFECTIVE_YEARS))
    numbers = sorted(
        {
            text
            for o in observations
            if "valueQuantity" in o
            for text in number_forms(Decimal(str(o["valueQuantity"]["value"])))
        }
    )
    number = (
        st.one_of(DECIMALS.map(str), st.sampled_from(numbers)) if numbers else DECIMALS.map(str)
    )
    quantity = st.builds(
        lambda prefix, n, unit: f"{prefix}{n}{unit}",
        st.sampled_from(PREFIXES),
        number,
        st.sampled_from(["", "", f"|{UCUM}|kg", f"|{UCUM}|g"]),
    )
    return st.one_of(
        st.tuples(
            st.sampled_from(["code", "code", "code:not"]), ors(token_query([LOINC], LOINC_CODES))
        ),
        st.tuples(st.just("subject"), ors(ids.map(lambda i: f"Patient/{i}"))),
        st.tuples(st.just("subject"), ids),
        st.tuples(st.just("patient"), ors(ids)),
        st.tuples(st.just("patient"), ids.map(lambda i: f"Patient/{i}")),
        st.tuples(st.just("date"), ors(date_query(fresh_dates, dates))),
        st.tuples(st.just("value-quantity"), ors(quantity)),
        missing(["subject", "date", "value-quantity"]),
    )


def number_forms(value: Decimal) -> list[str]:
    """The value and its roundings to 0-2 decimals: 5.25 -> 5, 5.2, 5.3, 5.25 (precision edges)."""
    forms = {str(value)}
    for places in range(3):
        quantum = Decimal(1).scaleb(-places)
        forms.add(str(value.quantize(quantum, rounding=ROUND_FLOOR)))
        forms.add(str(value.quantize(quantum, rounding=ROUND_CEILING)))
    return sorted(forms)


@st.composite
def query(
    draw: st.DrawFn,
    filters: st.SearchStrategy[tuple[str, str]],
    sorts: Sequence[str],
) -> tuple[Params, int]:
    # mostly one parameter, sometimes two (AND), sometimes none (all the example's resources)
    params: Params = [draw(filters) for _ in range(draw(st.sampled_from([0, 1, 1, 1, 2, 2])))]
    sort = draw(st.none() | st.sampled_from(sorts))
    if sort is not None:
        params.append(("_sort", sort))
    return params, draw(st.integers(1, 4))


PATIENT_SORTS = [
    "birthdate",
    "-birthdate",
    "family",
    "-family",
    "name",
    "-name",
    "given",
    "-given",
    "family,-birthdate",
]
OBSERVATION_SORTS = ["date", "-date"]


# ------------------------------------------------------------------------------- property tests


def new_urn() -> str:
    return f"urn:uuid:{uuid.uuid4()}"


@SETTINGS
@given(data=st.data())
def test_patient_search_agrees_with_reference(client: httpx.Client, data: st.DataObject) -> None:
    patients = data.draw(st.lists(patient(), min_size=3, max_size=8), label="patients")
    tag = str(uuid.uuid4())
    stored = create(client, [(new_urn(), tagged(p, tag)) for p in patients])
    queries = data.draw(
        st.lists(query(patient_filter(stored), PATIENT_SORTS), min_size=1, max_size=5),
        label="queries",
    )
    for params, count in queries:
        check(client, "Patient", stored, tag, params, count)


@SETTINGS
@given(data=st.data())
def test_observation_search_agrees_with_reference(
    client: httpx.Client, data: st.DataObject
) -> None:
    patients = data.draw(st.lists(patient(), min_size=1, max_size=3), label="patients")
    urns = [new_urn() for _ in patients]
    observations = data.draw(
        st.lists(observation(urns), min_size=2, max_size=5), label="observations"
    )
    tag = str(uuid.uuid4())
    entries = [(urn, tagged(p, tag)) for urn, p in zip(urns, patients, strict=True)]
    entries += [(new_urn(), tagged(o, tag)) for o in observations]
    stored = create(client, entries)
    note(f"patients: {[p['id'] for p in stored if p['resourceType'] == 'Patient']}")
    queries = data.draw(
        st.lists(query(observation_filter(stored), OBSERVATION_SORTS), min_size=1, max_size=5),
        label="queries",
    )
    for params, count in queries:
        check(client, "Observation", stored, tag, params, count)


# ------------------------------------------------------------------- the evaluator on its own


def at(text: str) -> int:
    """Microseconds since the epoch of an ISO instant with a zone."""
    moment = datetime.fromisoformat(text)
    return ref.micros(moment.astimezone(UTC))


def test_reference_normalize() -> None:
    assert ref.normalize("Müller") == "muller"
    assert ref.normalize("MÜLLER") == "muller"
    assert ref.normalize("Mu\u0308ller") == "muller"
    assert ref.normalize("Mueller") == "mueller"
    assert ref.normalize("Weiß") == "weiss"
    assert ref.normalize("  van \t der   Berg ") == "van der berg"
    assert ref.normalize("Zoë") == "zoe"


def test_reference_strings() -> None:
    values = ["Müller", "Ann"]
    assert ref.string_matches(None, values, "muller")
    assert ref.string_matches(None, values, "MÜL")
    assert ref.string_matches(None, values, "an")
    assert not ref.string_matches(None, ["Mueller"], "muller")
    assert not ref.string_matches(None, values, "ller")
    assert ref.string_matches("contains", values, "ULL")
    assert ref.string_matches("contains", ["van der Berg"], "r  b")
    assert ref.string_matches("exact", values, "Müller")
    assert not ref.string_matches("exact", values, "müller")
    assert not ref.string_matches("exact", values, "Mu\u0308ller")  # NFD is another string


def test_reference_date_ranges() -> None:
    assert ref.date_range("1980") == ref.DateRange(
        at("1980-01-01T00:00:00+00:00"), at("1981-01-01T00:00:00+00:00")
    )
    assert ref.date_range("1980-02") == ref.DateRange(
        at("1980-02-01T00:00:00+00:00"), at("1980-03-01T00:00:00+00:00")
    )
    assert ref.date_range("1980-12") == ref.DateRange(
        at("1980-12-01T00:00:00+00:00"), at("1981-01-01T00:00:00+00:00")
    )
    assert ref.date_range("1980-02-29") == ref.DateRange(
        at("1980-02-29T00:00:00+00:00"), at("1980-03-01T00:00:00+00:00")
    )
    low = at("2019-12-31T23:00:00+00:00")
    assert ref.date_range("2020-01-01T01:00:00+02:00") == ref.DateRange(low, low + 1_000_000)
    assert ref.date_range("2020-01-01T01:00:00.5+02:00") == ref.DateRange(
        low + 500_000, low + 600_000
    )
    assert ref.date_range("2020-01-01T01:00:00.25+02:00") == ref.DateRange(
        low + 250_000, low + 260_000
    )
    assert ref.period_range({"start": "2020"}) == ref.DateRange(
        at("2020-01-01T00:00:00+00:00"), ref.POS_INF
    )
    assert ref.period_range({"end": "2020"}) == ref.DateRange(
        ref.NEG_INF, at("2021-01-01T00:00:00+00:00")
    )


@pytest.mark.parametrize(
    ("query", "matching"),
    [
        ("1980", {"1980", "1980-01", "1980-12-31"}),
        ("eq1980", {"1980", "1980-01", "1980-12-31"}),
        ("ne1980", {"1979-12-31", "1981-01-01", "1979"}),
        ("gt1980", {"1981-01-01"}),
        ("lt1980", {"1979-12-31", "1979"}),
        ("ge1980", {"1980", "1980-01", "1980-12-31", "1981-01-01"}),
        ("le1980", {"1979-12-31", "1979", "1980", "1980-01", "1980-12-31"}),
        ("sa1980", {"1981-01-01"}),
        ("eb1980", {"1979-12-31", "1979"}),
        # a year is not within a day, but reaches after it and starts before it
        ("1980-01-01", set()),
        ("gt1980-01-01", {"1980", "1980-01", "1980-12-31", "1981-01-01"}),
        ("lt1980-01-01", {"1979-12-31", "1979"}),
        ("ge1980-01", {"1980", "1980-01", "1980-12-31", "1981-01-01"}),
        ("sa1980-01-01", {"1980-12-31", "1981-01-01"}),
        ("eb1980-12-31", {"1979-12-31", "1979", "1980-01"}),
        ("1979-12", {"1979-12-31"}),
    ],
)
def test_reference_dates(query: str, matching: set[str]) -> None:
    values = ["1979", "1979-12-31", "1980", "1980-01", "1980-12-31", "1981-01-01"]
    prefix, text = ref.split_prefix(query)
    found = {v for v in values if ref.date_matches(prefix, ref.date_range(v), ref.date_range(text))}
    assert found == matching


def test_reference_open_periods() -> None:
    open_end = ref.period_range({"start": "2020-01-01"})
    open_start = ref.period_range({"end": "2020-06-30"})
    year = ref.date_range("2020")
    assert not ref.date_matches("eq", open_end, year)
    assert ref.date_matches("ne", open_end, year)
    assert ref.date_matches("gt", open_end, ref.date_range("2999"))
    assert ref.date_matches("ge", open_end, year)
    assert not ref.date_matches("lt", open_end, year)
    assert ref.date_matches("lt", open_end, ref.date_range("2020-01-02"))
    assert ref.date_matches("sa", open_end, ref.date_range("2019"))
    assert not ref.date_matches("sa", open_end, ref.date_range("2019-12-31T23:59:59.5-01:00"))
    assert ref.date_matches("lt", open_start, ref.date_range("1900"))
    assert not ref.date_matches("gt", open_start, year)
    assert ref.date_matches("eb", open_start, ref.date_range("2020-07"))
    assert not ref.date_matches("eb", open_start, ref.date_range("2020-06"))


@pytest.mark.parametrize(
    ("query", "matching"),
    [
        ("5", {"4.5", "5.0", "5.04", "5.05", "5.49"}),
        ("5.0", {"5.0", "5.04"}),
        ("5.00", {"5.0"}),
        ("5.05", {"5.05"}),
        ("ne5", {"4.4", "5.5"}),
        ("gt5", {"5.04", "5.05", "5.49", "5.5"}),
        ("ge5", {"5.0", "5.04", "5.05", "5.49", "5.5"}),
        ("lt5", {"4.4", "4.5"}),
        ("le5.0", {"4.4", "4.5", "5.0"}),
        ("sa5", {"5.04", "5.05", "5.49", "5.5"}),
        ("eb5.04", {"4.4", "4.5", "5.0"}),
        ("5.5", {"5.49", "5.5"}),
        ("4", {"4.4"}),
    ],
)
def test_reference_quantity_precision(query: str, matching: set[str]) -> None:
    values = ["4.4", "4.5", "5.0", "5.04", "5.05", "5.49", "5.5"]
    found = {
        v for v in values if ref.quantity_matches(ref.Quantity(Decimal(v), UCUM, "kg", "kg"), query)
    }
    assert found == matching


def test_reference_quantity_units() -> None:
    grams = ref.Quantity(Decimal("5"), UCUM, "g", "g")
    assert ref.quantity_matches(grams, "5")
    assert ref.quantity_matches(grams, f"5|{UCUM}|g")
    assert not ref.quantity_matches(grams, f"5|{UCUM}|kg")
    assert not ref.quantity_matches(grams, "5|urn:other|g")


def test_reference_tokens() -> None:
    with_system = ref.Token("http://loinc.org", "1-8")
    bare = ref.Token(None, "1-8")
    assert ref.token_matches(with_system, "1-8")
    assert ref.token_matches(with_system, "http://loinc.org|1-8")
    assert ref.token_matches(with_system, "http://loinc.org|")
    assert not ref.token_matches(with_system, "|1-8")
    assert ref.token_matches(bare, "|1-8")
    assert not ref.token_matches(bare, "http://loinc.org|1-8")
    assert not ref.token_matches(with_system, "urn:other|1-8")


def test_reference_search_filters_and_sorts() -> None:
    patients = [
        {"resourceType": "Patient", "id": "a", "gender": "male", "birthDate": "1980"},
        {"resourceType": "Patient", "id": "b", "birthDate": "1980-06-01"},
        {"resourceType": "Patient", "id": "c", "gender": "female", "name": [{"family": "Ann"}]},
        {"resourceType": "Patient", "id": "d", "gender": "male", "birthDate": "1980"},
    ]
    assert ref.search_ids("Patient", patients, []) == ["a", "b", "c", "d"]
    assert ref.search_ids("Patient", patients, [("gender:not", "male")]) == ["b", "c"]
    assert ref.search_ids("Patient", patients, [("gender", "male,female")]) == ["a", "c", "d"]
    assert ref.search_ids("Patient", patients, [("gender:missing", "true")]) == ["b"]
    assert ref.search_ids("Patient", patients, [("name:missing", "false")]) == ["c"]
    # ascending: the smallest low (1980-01-01 for "1980" before 1980-06-01), missing last
    assert ref.search_ids("Patient", patients, [("_sort", "birthdate")]) == ["a", "d", "b", "c"]
    # descending: the largest high (1981-01-01 for "1980" after 1980-06-02), missing last
    assert ref.search_ids("Patient", patients, [("_sort", "-birthdate")]) == ["a", "d", "b", "c"]
    more = [*patients, {"resourceType": "Patient", "id": "e", "birthDate": "1980-12-31"}]
    assert ref.search_ids("Patient", more, [("_sort", "-birthdate")]) == ["a", "d", "e", "b", "c"]
    assert ref.search_ids("Patient", more, [("_sort", "birthdate")]) == ["a", "d", "b", "e", "c"]
    assert ref.search_ids(
        "Patient", more, [("birthdate", "ge1980-06"), ("birthdate", "lt1981")]
    ) == ["a", "b", "d", "e"]  # "1980" reaches after June 1980 and starts before 1981
    assert ref.search_ids(
        "Patient", more, [("birthdate", "sa1980-05"), ("birthdate", "eb1981")]
    ) == ["b", "e"]
    with pytest.raises(ref.Unsupported):
        ref.search_ids("Patient", patients, [("nonsense", "x")])
    with pytest.raises(ref.Unsupported):
        ref.search_ids("Patient", patients, [("birthdate", "ap1980")])


# --------------------------------------------------------------------- example-based, on HTTP


class Example:
    """Labelled resources created with their own tag; searches answer with labels."""

    def __init__(self, client: httpx.Client, resources: dict[str, Resource]) -> None:
        self.client = client
        self.tag = str(uuid.uuid4())
        self.urns = {label: new_urn() for label in resources}
        entries = [
            (self.urns[label], tagged(self.resolve(resource), self.tag))
            for label, resource in resources.items()
        ]
        self.stored = create(client, entries)
        self.labels = {r["id"]: label for r, label in zip(self.stored, resources, strict=True)}
        self.ids = {label: i for i, label in self.labels.items()}

    def resolve(self, value: Any) -> Any:
        """ "@label" strings become the urn of that label's resource."""
        if isinstance(value, dict):
            return {k: self.resolve(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.resolve(v) for v in value]
        if isinstance(value, str) and value.startswith("@"):
            return self.urns[value[1:]]
        return value

    def search(self, resource_type: str, params: Params) -> list[str]:
        """Labels in the server's order, after checking the reference evaluator agrees."""
        query = [*params, ("_tag", f"{TAG_SYSTEM}|{self.tag}")]
        actual = run_search(self.client, resource_type, query).ids
        expected = ref.search_ids(resource_type, self.stored, query)
        detail = explain(resource_type, self.stored, params, expected, actual)
        assert sorted(actual) == sorted(expected), detail
        assert actual == expected, detail
        return [self.labels[i] for i in actual]

    def found(self, resource_type: str, params: Params) -> set[str]:
        return set(self.search(resource_type, params))


def test_accent_and_case_folding(client: httpx.Client) -> None:
    ex = Example(
        client,
        {
            "nfc": {"resourceType": "Patient", "name": [{"family": "Müller"}]},
            "nfd": {"resourceType": "Patient", "name": [{"family": "Mu\u0308ller"}]},
            "upper": {"resourceType": "Patient", "name": [{"family": "MÜLLER"}]},
            "plain": {"resourceType": "Patient", "name": [{"family": "muller"}]},
            "ue": {"resourceType": "Patient", "name": [{"family": "Mueller"}]},
            "sharp": {"resourceType": "Patient", "name": [{"given": ["Weiß"], "family": "X"}]},
        },
    )
    folded = {"nfc", "nfd", "upper", "plain"}
    assert ex.found("Patient", [("name", "muller")]) == folded
    assert ex.found("Patient", [("family", "MÜL")]) == folded
    assert ex.found("Patient", [("name", "mue")]) == {"ue"}
    assert ex.found("Patient", [("name:exact", "Müller")]) == {"nfc"}
    assert ex.found("Patient", [("name:exact", "muller")]) == {"plain"}
    assert ex.found("Patient", [("name:contains", "ÜLL")]) == folded
    assert ex.found("Patient", [("name:contains", "uell")]) == {"ue"}
    assert ex.found("Patient", [("given", "weiss")]) == {"sharp"}
    assert ex.found("Patient", [("family", "weiss")]) == set()


def test_birthdate_precision_edges(client: httpx.Client) -> None:
    values = ["1979", "1979-12-31", "1980", "1980-01", "1980-12-31", "1981-01-01"]
    ex = Example(client, {v: {"resourceType": "Patient", "birthDate": v} for v in values})
    assert ex.found("Patient", [("birthdate", "1980")]) == {"1980", "1980-01", "1980-12-31"}
    assert ex.found("Patient", [("birthdate", "1980-01-01")]) == set()
    assert ex.found("Patient", [("birthdate", "gt1980")]) == {"1981-01-01"}
    assert ex.found("Patient", [("birthdate", "lt1980")]) == {"1979", "1979-12-31"}
    assert ex.found("Patient", [("birthdate", "sa1980-01-01")]) == {"1980-12-31", "1981-01-01"}
    assert ex.found("Patient", [("birthdate", "eb1980-12-31")]) == {"1979", "1979-12-31", "1980-01"}
    assert ex.found("Patient", [("birthdate", "ne1980")]) == {"1979", "1979-12-31", "1981-01-01"}
    # ge1980-01: reaches after January 1980 (gt) or lies within it (eq); descending by the largest
    # high, "1980" and "1980-12-31" tie (both end at 1981-01-01) and go by id
    assert ex.search("Patient", [("birthdate", "ge1980-01"), ("_sort", "-birthdate")]) == [
        "1981-01-01",
        *sorted(["1980", "1980-12-31"], key=lambda label: ex.ids[label]),
        "1980-01",
    ]


def test_date_time_zone_crosses_midnight(client: httpx.Client) -> None:
    ex = Example(
        client,
        {
            "east": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "effectiveDateTime": "2020-01-01T01:00:00+02:00",  # 2019-12-31T23:00Z
            },
            "west": {
                "resourceType": "Observation",
                "status": "final",
                "code": {"text": "x"},
                "effectiveDateTime": "2019-12-31T23:30:00-05:00",  # 2020-01-01T04:30Z
            },
        },
    )
    assert ex.found("Observation", [("date", "2019-12-31")]) == {"east"}
    assert ex.found("Observation", [("date", "2020")]) == {"west"}
    assert ex.found("Observation", [("date", "lt2020-01-01T00:00:00Z")]) == {"east"}
    assert ex.found("Observation", [("date", "2020-01-01T01:00:00+02:00")]) == {"east"}
    assert ex.search("Observation", [("_sort", "date")]) == ["east", "west"]
    assert ex.search("Observation", [("_sort", "-date")]) == ["west", "east"]


def test_not_includes_resources_without_the_element(client: httpx.Client) -> None:
    ex = Example(
        client,
        {
            "male": {"resourceType": "Patient", "gender": "male", "active": True},
            "female": {"resourceType": "Patient", "gender": "female", "active": False},
            "none": {"resourceType": "Patient"},
        },
    )
    assert ex.found("Patient", [("gender:not", "male")]) == {"female", "none"}
    assert ex.found("Patient", [("gender:not", "male,female")]) == {"none"}
    assert ex.found("Patient", [("active:not", "true")]) == {"female", "none"}
    assert ex.found("Patient", [("gender:missing", "true")]) == {"none"}
    assert ex.found("Patient", [("gender:missing", "false")]) == {"male", "female"}
    assert ex.found("Patient", [("active", "false")]) == {"female"}


def test_open_periods(client: httpx.Client) -> None:
    def obs(period: dict[str, str]) -> Resource:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "effectivePeriod": period,
        }

    ex = Example(
        client,
        {
            "open-end": obs({"start": "2020-01-01"}),
            "open-start": obs({"end": "2020-06-30"}),
            "closed": obs({"start": "2020-03-01T10:00:00Z", "end": "2020-03-01T11:00:00Z"}),
        },
    )
    assert ex.found("Observation", [("date", "gt2999")]) == {"open-end"}
    assert ex.found("Observation", [("date", "lt1900")]) == {"open-start"}
    assert ex.found("Observation", [("date", "2020")]) == {"closed"}
    assert ex.found("Observation", [("date", "ne2020")]) == {"open-end", "open-start"}
    assert ex.found("Observation", [("date", "sa2019")]) == {"closed", "open-end"}
    assert ex.found("Observation", [("date", "eb2020-07")]) == {"open-start", "closed"}
    assert ex.search("Observation", [("_sort", "date")]) == ["open-start", "open-end", "closed"]
    assert ex.search("Observation", [("_sort", "-date")]) == ["open-end", "open-start", "closed"]


def test_quantity_precision(client: httpx.Client) -> None:
    def obs(value: str, unit: str = "kg") -> Resource:
        return {
            "resourceType": "Observation",
            "status": "final",
            "code": {"coding": [{"system": LOINC, "code": "29463-7"}]},
            "valueQuantity": {"value": Decimal(value), "unit": unit, "system": UCUM, "code": unit},
        }

    values = ["4.4", "4.5", "5.0", "5.04", "5.05", "5.49", "5.5"]
    resources = {v: obs(v) for v in values}
    resources["5 g"] = obs("5", "g")
    ex = Example(client, resources)
    assert ex.found("Observation", [("value-quantity", "5")]) == {
        "4.5",
        "5.0",
        "5.04",
        "5.05",
        "5.49",
        "5 g",
    }
    assert ex.found("Observation", [("value-quantity", "5.0")]) == {"5.0", "5.04", "5 g"}
    assert ex.found("Observation", [("value-quantity", f"5|{UCUM}|kg")]) == {
        "4.5",
        "5.0",
        "5.04",
        "5.05",
        "5.49",
    }
    assert ex.found("Observation", [("value-quantity", f"5|{UCUM}|g")]) == {"5 g"}
    assert ex.found("Observation", [("value-quantity", "gt5")]) == {"5.04", "5.05", "5.49", "5.5"}
    assert ex.found("Observation", [("value-quantity", "le5.0")]) == {"4.4", "4.5", "5.0", "5 g"}
    assert ex.found("Observation", [("value-quantity", "ne5")]) == {"4.4", "5.5"}


def test_references_and_paging(client: httpx.Client) -> None:
    ex = Example(
        client,
        {
            "pat": {"resourceType": "Patient", "name": [{"family": "Ref"}]},
            **{
                f"obs{i}": {
                    "resourceType": "Observation",
                    "status": "final",
                    "code": {"text": "x"},
                    "subject": {"reference": "@pat"},
                }
                for i in range(5)
            },
            "other": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}},
        },
    )
    patient_id = ex.ids["pat"]
    everyone = {f"obs{i}" for i in range(5)}
    assert ex.found("Observation", [("subject", f"Patient/{patient_id}")]) == everyone
    assert ex.found("Observation", [("patient", patient_id)]) == everyone
    assert ex.found("Observation", [("subject", f"Patient/{MISSING_ID}")]) == set()
    assert ex.found("Observation", [("subject:missing", "true")]) == {"other"}
    query = [("patient", patient_id), ("_tag", f"{TAG_SYSTEM}|{ex.tag}")]
    paged = run_search(client, "Observation", [*query, ("_count", "2")])
    assert [len(page) for page in paged.pages] == [2, 2, 1]
    assert paged.ids == sorted(ex.ids[label] for label in everyone)
