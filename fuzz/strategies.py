"""Hypothesis strategies of hostile requests: resources from the R4 JSON Schema (valid and
mutated), searches from the R4 SearchParameters, JSON Patches, Bundles, hostile HTTP, and the
non-FHIR APIs, each sent as one of several callers."""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from typing import Any

from hypothesis import strategies as st
from hypothesis_jsonschema import from_schema

from capability.definitions import search_parameter_bundle
from fuzz.case import Body, Case, raw_marker
from fuzz.schemas import _resource_schema, resource_schema

TYPES = (
    "Patient",
    "RelatedPerson",
    "Person",
    "Consent",
    "Observation",
    "Condition",
    "Communication",
    "Appointment",
    "CarePlan",
    "CareTeam",
    "Coverage",
    "Encounter",
    "Immunization",
    "MedicationRequest",
    "AuditEvent",
)

# Callers: real tokens for real identities (fuzz/world.py), and tokens that are hostile themselves.
ROLES = ("System", "Patient", "RelatedPerson")
HOSTILE_ROLES = (
    "Anonymous",
    "Garbage",
    "Expired",
    "ScopeNumber",
    "ScopeList",
    "FhirUserNumber",
    "FhirUserObject",
    "PatientList",
    "ExpNotNumber",
    "AudNumber",
    "HugeClaim",
)


@dataclass(frozen=True)
class World:
    """The identities and resources a run starts with (made by the System caller)."""

    child: str
    adult: str
    mother: str
    observations: tuple[str, ...]
    # A real next-page link's query of a search and of a history, to mutate its cursor.
    search_next: tuple[tuple[str, str], ...] = ()
    history_next: tuple[tuple[str, str], ...] = ()

    def ids(self, resource_type: str) -> tuple[str, ...]:
        known = {
            "Patient": (self.child, self.adult),
            "RelatedPerson": (self.mother,),
            "Observation": self.observations,
        }
        return known.get(resource_type, ())


def roles() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(ROLES),
        st.sampled_from(ROLES),
        st.sampled_from(ROLES),
        st.sampled_from(HOSTILE_ROLES),
    )


# ---------------------------------------------------------------- hostile values

LONG_SIZES = (2_000, 2_800, 8_200, 100_000, 1_000_000)
UNICODE = (
    "\ud800",
    "\udfff",
    "a\udc00b",
    "\x00",
    "a\x00b",
    "\u202eevil",
    "\ufeff",
    "\uffff",
    "\U0001f600",
    "e\u0301",
    "\u0000\u0001\u001f",
    "\u2028\u2029",
    "\U0010ffff",
    "İı",
    "ß",
    " ",
    "",
    "%00",
    "\\",
    '"',
    "'; drop table resources; --",
    "${jndi:ldap://x}",
    "../../etc/passwd",
    "*",
    "%",
    "_",
)
DATES = (
    "0001-01-01",
    "0001",
    "9999",
    "9999-12-31",
    "9999-12-31T23:59:59.999999999+14:00",
    "0001-01-01T00:00:00-14:00",
    "0001-01-01T00:00:00+14:00",
    "9999-12-31T23:59:59-12:00",
    "2023-02-29",
    "2024-02-30",
    "10000-01-01",
    "0000",
    "0000-00-00",
    "1970-01-01T00:00:60Z",
    "2020-13-01",
    "2020-01-01T24:00:00Z",
    "2020-01-01T10:00:00",
    "2020-01-01T10:00:00.1234567890123Z",
    "-2020",
    "2020-1-1",
    "now",
)
NUMBERS = (
    "1e400",
    "-1e400",
    "1e-400",
    "1E+308",
    "123456789012345678901234567890",
    "0." + "0" * 1000 + "1",
    "9" * 5000,
    "-0",
    "0.10",
    "2147483648",
    "9223372036854775808",
    "-9223372036854775809",
    "NaN",
    "Infinity",
    "-Infinity",
    "1.0e2",
    "0x10",
    "1_000",
)


def hostile_text(long_sizes: tuple[int, ...] = LONG_SIZES) -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(UNICODE),
        st.sampled_from(DATES),
        st.sampled_from(NUMBERS),
        st.builds(
            lambda c, n: c * n, st.sampled_from("x\xe9\x00\ud800|,$."), st.sampled_from(long_sizes)
        ),
        st.text(max_size=20),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
    )


# In a URL: up to 100,000 characters in one value (a megabyte once percent-encoded, at most).
QUERY_SIZES = (2_000, 2_800, 8_200, 100_000)
# A query string is not made longer than this by repeating its parameters.
MAX_REPEATED_QUERY = 20_000
# Nor a Bundle's entries (2,000 copies of a 1 MB entry would be 2 GB in the fuzzer itself).
MAX_REPEATED_BUNDLE = 5_000


# ---------------------------------------------------------------- resources


@functools.cache
def resource(resource_type: str) -> st.SearchStrategy[dict[str, Any]]:
    return from_schema(resource_schema(resource_type))


def _paths(doc: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path to a node below the root (keys and indexes), `resourceType` left alone."""
    found: list[tuple[Any, ...]] = []
    if isinstance(doc, dict):
        for key, value in doc.items():
            if prefix == () and key == "resourceType":
                continue
            found.append((*prefix, key))
            found.extend(_paths(value, (*prefix, key)))
    elif isinstance(doc, list):
        for index, value in enumerate(doc):
            found.append((*prefix, index))
            found.extend(_paths(value, (*prefix, index)))
    return found


def _set(doc: Any, path: tuple[Any, ...], value: Any) -> Any:
    """`doc` with `value` at `path`, making the containers on the way when they are missing."""
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(head, str):
        base = doc if isinstance(doc, dict) else {}
        return {**base, head: _set(base.get(head), rest, value)}
    items = list(doc) if isinstance(doc, list) and doc else [None]
    head = min(head, len(items) - 1)
    items[head] = _set(items[head], rest, value)
    return items


# Elements the search index reads for most of the types above (added when absent).
INDEXED = {
    "name": [{"family": "F", "given": ["G"]}],
    "identifier": [{"system": "http://example.org/id", "value": "V"}],
    "telecom": [{"system": "phone", "value": "1"}],
    "address": [{"city": "C", "postalCode": "1"}],
    "code": {"coding": [{"system": "http://loinc.org", "code": "1-8"}], "text": "T"},
    "subject": {"reference": "Patient/x"},
    "patient": {"reference": "Patient/x"},
}
INDEXED_LEAVES = (
    ("name", 0, "family"),
    ("name", 0, "given", 0),
    ("identifier", 0, "value"),
    ("identifier", 0, "system"),
    ("telecom", 0, "value"),
    ("address", 0, "city"),
    ("code", "coding", 0, "code"),
    ("code", "coding", 0, "system"),
    ("code", "text"),
    ("subject", "reference"),
    ("patient", "reference"),
)


@st.composite
def mutated(draw: st.DrawFn, resource_type: str) -> tuple[Body, str]:
    """A valid resource with one hostile change: the body and what was done."""
    doc: dict[str, Any] = draw(resource(resource_type))
    raws: list[str] = []
    encoding = draw(st.sampled_from(("ascii", "ascii", "utf8")))
    kind = draw(
        st.sampled_from(
            (
                "huge-string",
                "huge-array",
                "deep-nesting",
                "unicode",
                "number",
                "date",
                "wrong-type",
                "unknown-element",
                "resource-type",
                "id",
                "text",
                "duplicate-key",
            )
        )
    )
    paths = _paths(doc)

    def leaf() -> tuple[Any, ...]:
        if paths and draw(st.booleans()):
            return draw(st.sampled_from(paths))
        # an indexed element of this type where it has one (elsewhere: an unknown element)
        known = set(_resource_schema(resource_type, 2)["properties"])
        leaves = [p for p in INDEXED_LEAVES if p[0] in known] or list(INDEXED_LEAVES)
        path = draw(st.sampled_from(leaves))
        if path[0] not in doc:
            doc[path[0]] = INDEXED[path[0]]
        return path

    if kind == "huge-string":
        path = leaf()
        size = draw(st.sampled_from(LONG_SIZES))
        char = draw(st.sampled_from("xé\U0001f600 |"))
        doc = _set(doc, path, char * size)
    elif kind == "huge-array":
        element = draw(st.sampled_from(sorted(INDEXED)))
        size = draw(st.sampled_from((1_000, 10_000, 100_000)))
        item = INDEXED[element][0] if isinstance(INDEXED[element], list) else {"text": "x"}
        doc[element] = [item] * size
    elif kind == "deep-nesting":
        depth = draw(st.sampled_from((100, 1_000, 5_000, 100_000)))
        opener, closer = draw(st.sampled_from((("[", "]"), ('{"a":', "}"))))
        raws.append(opener * depth + "1" + closer * depth)
        path = leaf() if draw(st.booleans()) else (draw(st.sampled_from(sorted(INDEXED))),)
        doc = _set(doc, path, raw_marker(0))
    elif kind == "unicode":
        doc = _set(doc, leaf(), draw(st.sampled_from(UNICODE)))
    elif kind == "number":
        raws.append(draw(st.sampled_from(NUMBERS)))
        doc = _set(doc, leaf() if paths else ("valueQuantity",), raw_marker(0))
    elif kind == "date":
        date_keys = [p for p in paths if isinstance(p[-1], str) and _datey(p[-1])]
        path = draw(st.sampled_from(date_keys)) if date_keys else ("birthDate",)
        doc = _set(doc, path, draw(st.sampled_from(DATES)))
    elif kind == "wrong-type":
        value = draw(
            st.sampled_from((None, True, 0, 1.5, "x", [], {}, [1], {"a": 1}, [[]], [None]))
        )
        doc = _set(doc, leaf(), value)
    elif kind == "unknown-element":
        doc[draw(st.sampled_from(("bogus", "_name", "name_", "", "\x00", "resourcetype")))] = "x"
    elif kind == "resource-type":
        doc["resourceType"] = draw(st.sampled_from((None, 1, "", "Bogus", "patient", "Bundle", [])))
    elif kind == "id":
        doc["id"] = draw(st.sampled_from(("client-id", "", "a" * 65, "../x", "\x00", 7, None)))
    elif kind == "text":
        doc["text"] = {
            "status": "generated",
            "div": draw(
                st.sampled_from(
                    (
                        "<div>x</div>",
                        '<div xmlns="http://www.w3.org/1999/xhtml"><script>x</script></div>',
                        "<div>" * 10_000,
                        "",
                    )
                )
            ),
        }
    else:  # duplicate-key: the same element twice in the JSON text
        raws.append('"x","resourceType":"Patient"')
        doc["implicitRules"] = raw_marker(0)
    return Body(doc, tuple(raws), encoding), f"{resource_type} with {kind}"


def _datey(key: str) -> bool:
    lowered = key.lower()
    return any(
        word in lowered
        for word in (
            "date",
            "start",
            "end",
            "issued",
            "recorded",
            "effective",
            "authored",
            "occurrence",
            "instant",
            "period",
        )
    )


def opaque_bodies() -> st.SearchStrategy[tuple[bytes, str]]:
    """Bodies that are not JSON of a resource at all."""
    return st.sampled_from(
        (
            (b"", "empty body"),
            (b"{", "truncated JSON"),
            (b'{"resourceType":"Patient","name":[{"family":"x"', "truncated resource"),
            (b"\xef\xbb\xbf{}", "byte order mark"),
            (b'{"resourceType":"Patient"} trailing', "trailing garbage"),
            (b'{"resourceType":"Patient","gender":"\xff\xfe"}', "invalid UTF-8"),
            (b'{"resourceType":"Patient","gender":"\xed\xa0\x80"}', "UTF-8 surrogate bytes"),
            (b"null", "null"),
            (b"[]", "array"),
            (b'"Patient"', "string"),
            (b"1e999999", "huge exponent"),
            (b'{"resourceType":"Patient","name":[{"family":"x\\u0000"}]}', "escaped NUL"),
            (b'{"resourceType":"Patient","name":[{"family":"\\ud800"}]}', "escaped lone surrogate"),
            (b"<Patient xmlns='http://hl7.org/fhir'/>", "XML"),
            (b"\x00" * 1000, "NUL bytes"),
            (b"[" * 100_000, "unclosed nesting"),
            (b'{"a":' * 50_000 + b"1" + b"}" * 50_000, "deep object nesting"),
        )
    )


@st.composite
def resource_case(draw: st.DrawFn, world: World) -> Case:
    resource_type = draw(st.sampled_from(TYPES))
    role = draw(roles())
    choice = draw(st.integers(0, 9))
    headers: tuple[tuple[str, str], ...] = (("Content-Type", "application/fhir+json"),)
    if choice < 3:
        body, note = Body(draw(resource(resource_type))), f"valid {resource_type}"
    elif choice < 9:
        body, note = draw(mutated(resource_type))
    else:
        data, note = draw(opaque_bodies())
        body = Body(opaque=data)
    if draw(st.integers(0, 4)) == 0:
        # update: PUT to a known id (or a new one), the id in the body
        ids = world.ids(resource_type) or ("fuzz-new",)
        id = draw(st.sampled_from((*ids, "fuzz-" + resource_type.lower())))
        if isinstance(body.doc, dict):
            body = replace(body, doc={**body.doc, "id": id})
        return Case(
            "update",
            "PUT",
            f"/fhir/{resource_type}/{id}",
            role,
            headers=headers,
            body=body,
            note=note,
        )
    return Case(
        "create", "POST", f"/fhir/{resource_type}", role, headers=headers, body=body, note=note
    )


# ---------------------------------------------------------------- searches


@functools.cache
def search_parameters() -> dict[str, list[tuple[str, str]]]:
    """(code, type) of every R4 SearchParameter by base type, `Resource`'s included."""
    by_type: dict[str, list[tuple[str, str]]] = {}
    for entry in search_parameter_bundle()["entry"]:
        parameter = entry["resource"]
        for base in parameter.get("base", ()):
            by_type.setdefault(base, []).append((parameter["code"], parameter["type"]))
    return by_type


def _parameters(resource_type: str) -> list[tuple[str, str]]:
    table = search_parameters()
    return [
        *table.get(resource_type, []),
        *table.get("Resource", []),
        *table.get("DomainResource", []),
    ]


PREFIXES = ("", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap", "xx")
MODIFIERS = {
    "string": ("", ":exact", ":contains", ":missing", ":text", ":below", ":bogus"),
    "token": ("", ":not", ":text", ":missing", ":in", ":not-in", ":below", ":above", ":of-type"),
    "reference": ("", ":missing", ":identifier", ":Patient", ":Bogus", ":below"),
    "uri": ("", ":below", ":above", ":missing", ":contains"),
    "date": ("", ":missing", ":exact"),
    "number": ("", ":missing"),
    "quantity": ("", ":missing"),
    "composite": ("",),
    "special": ("", ":missing"),
}


@st.composite
def search_value(draw: st.DrawFn, kind: str, world: World) -> str:
    text = draw(hostile_text(QUERY_SIZES))
    if kind in ("date", "number", "quantity"):
        prefix = draw(st.sampled_from(PREFIXES))
        base = (
            draw(st.sampled_from(DATES if kind == "date" else NUMBERS))
            if draw(st.booleans())
            else text
        )
        value = prefix + base
        if kind == "quantity" and draw(st.booleans()):
            value += (
                "|"
                + draw(st.sampled_from(("http://unitsofmeasure.org", "", text)))
                + "|"
                + draw(st.sampled_from(("mg", "", text)))
            )
        return value
    if kind == "token":
        return draw(st.sampled_from((text, f"|{text}", f"{text}|", f"{text}|{text}", "|", "a|b|c")))
    if kind == "reference":
        return draw(
            st.sampled_from(
                (
                    text,
                    f"Patient/{world.child}",
                    f"Patient/{text}",
                    f"http://x/fhir/Patient/{text}",
                    world.adult,
                    "Patient/",
                    "/",
                )
            )
        )
    if kind == "composite":
        return f"{text}${text}"
    return text


@st.composite
def search_pair(draw: st.DrawFn, resource_type: str, world: World) -> tuple[str, str]:
    choice = draw(st.integers(0, 9))
    parameters = _parameters(resource_type)
    if choice < 5 and parameters:
        code, kind = draw(st.sampled_from(parameters))
        modifier = draw(st.sampled_from(MODIFIERS.get(kind, ("",))))
        if modifier == ":missing":
            return code + modifier, draw(st.sampled_from(("true", "false", "maybe", "")))
        return code + modifier, draw(search_value(kind, world))
    if choice < 7:
        # chains and reverse chains
        refs = [c for c, k in parameters if k == "reference"] or ["subject"]
        ref = draw(st.sampled_from(refs))
        target = draw(st.sampled_from(("", ":Patient", ":Bogus", ":Observation")))
        tail = draw(
            st.sampled_from(
                (
                    "name",
                    "birthdate",
                    "identifier",
                    "organization.name",
                    "general-practitioner.name",
                    "_id",
                    "bogus",
                )
            )
        )
        depth = draw(st.sampled_from((1, 1, 1, 4, 30)))
        name = ref + target + ("." + "link") * (depth - 1) + "." + tail
        if draw(st.booleans()):
            name = f"_has:{draw(st.sampled_from(TYPES))}:{ref}:{draw(st.sampled_from(('code', 'status', 'name', '_has:Observation:subject:code', 'bogus')))}"
        return name, draw(hostile_text(QUERY_SIZES))
    control = draw(
        st.sampled_from(
            (
                "_count",
                "_sort",
                "_include",
                "_revinclude",
                "_summary",
                "_elements",
                "_total",
                "_totalMethod",
                "_since",
                "_at",
                "_format",
                "_pretty",
                "_id",
                "_lastUpdated",
                "_contained",
                "_containedType",
                "_text",
                "_content",
                "_list",
                "_type",
                "_filter",
                "_query",
                "_page",
                "",
                "_bogus",
            )
        )
    )
    values = {
        "_count": ("0", "1", "-1", "1000", "1001", "99999999999999999999", "abc", "", "1.5"),
        "_sort": (
            "_id",
            "-_lastUpdated",
            "name",
            "-date",
            "bogus",
            ",",
            "-",
            "name,-birthdate,_id",
            "-" * 100,
        ),
        "_include": (
            f"{resource_type}:subject",
            f"{resource_type}:patient:Patient",
            "*",
            f"{resource_type}:*",
            ":iterate",
            "Observation:subject:Bogus",
            "x:y:z:w",
        ),
        "_revinclude": ("Observation:subject", "*", "Provenance:target", "Bogus:subject", ""),
        "_summary": ("true", "false", "text", "data", "count", "bogus"),
        "_elements": ("id", "name,birthDate", "bogus", ",,,", "a" * 5000),
        "_total": ("none", "estimate", "accurate", "bogus"),
        "_totalMethod": ("count", "bogus"),
        "_format": ("json", "xml", "application/fhir+json", "text/html", "\x00"),
        "_pretty": ("true", "false", "bogus"),
        "_lastUpdated": tuple(p + d for p in ("", "gt", "le", "sa") for d in DATES[:6]),
        "_since": DATES,
        "_at": DATES,
    }
    if control in values and draw(st.integers(0, 3)) > 0:
        value = draw(st.sampled_from(values[control]))
    else:
        value = draw(hostile_text(QUERY_SIZES))
    return control, value


@st.composite
def search_case(draw: st.DrawFn, world: World) -> Case:
    resource_type = draw(st.sampled_from((*TYPES, "Resource", "Bogus")))
    role = draw(roles())
    count = draw(st.sampled_from((1, 1, 2, 3, 5, 200)))
    pairs = tuple(draw(search_pair(resource_type, world)) for _ in range(min(count, 8)))
    if count > 8 and sum(len(k) + len(v) for k, v in pairs) * count < MAX_REPEATED_QUERY:
        pairs = pairs * (count // len(pairs))
    how = draw(st.integers(0, 9))
    if how == 0 and world.search_next:
        # a real next-page link with a hostile cursor or other parameters added
        page = [(k, v) for k, v in world.search_next]
        index = draw(st.integers(0, len(page) - 1))
        key, value = page[index]
        page[index] = (
            key,
            draw(
                st.sampled_from(
                    (
                        value[:-1],
                        value + "A",
                        value[::-1],
                        "",
                        "=" * 8,
                        draw(hostile_text(QUERY_SIZES)),
                    )
                )
            ),
        )
        return Case(
            "search",
            "GET",
            "/fhir/Observation",
            role,
            query=(*page, *pairs[:1]),
            note="mutated page link",
        )
    if how == 1 and world.history_next:
        page = [(k, v) for k, v in world.history_next]
        index = draw(st.integers(0, len(page) - 1))
        key, value = page[index]
        page[index] = (
            key,
            draw(st.sampled_from((value[:-2], value + "x", "", draw(hostile_text(QUERY_SIZES))))),
        )
        return Case(
            "history",
            "GET",
            "/fhir/Observation/_history",
            role,
            query=tuple(page),
            note="mutated history page link",
        )
    if how == 2:
        path = draw(
            st.sampled_from(
                (
                    "/fhir/_history",
                    f"/fhir/{resource_type}/_history",
                    f"/fhir/Patient/{world.child}/_history",
                )
            )
        )
        return Case("history", "GET", path, role, query=pairs, note="history")
    if how == 3:
        member = draw(st.sampled_from(("*", "Observation", "Bogus", resource_type)))
        owner = draw(st.sampled_from((world.child, world.adult, "unknown")))
        compartment = draw(
            st.sampled_from(
                ("Patient", "RelatedPerson", "Practitioner", "Encounter", "Device", "Bogus")
            )
        )
        return Case(
            "search",
            "GET",
            f"/fhir/{compartment}/{owner}/{member}",
            role,
            query=pairs,
            note="compartment search",
        )
    if how == 4:
        charset = draw(
            st.sampled_from(("", "; charset=utf-8", "; charset=latin-1", "; charset=bogus"))
        )
        body = Body(opaque=Case("form", "GET", "/", query=pairs).query_string().encode())
        headers = (("Content-Type", "application/x-www-form-urlencoded" + charset),)
        return Case(
            "search",
            "POST",
            f"/fhir/{resource_type}/_search",
            role,
            headers=headers,
            body=body,
            note="POST _search",
        )
    return Case("search", "GET", f"/fhir/{resource_type}", role, query=pairs, note="search")


# ---------------------------------------------------------------- patch


POINTERS = (
    "",
    "/",
    "/name",
    "/name/0/family",
    "/name/-",
    "/name/0",
    "x/y",
    "/~2",
    "/a~1b",
    "/~",
    "/name/01",
    "/name/99999999999999999999",
    "/name/-1",
    "/id",
    "/resourceType",
    "/meta/versionId",
    "/birthDate",
    "/gender",
    "/" + "a" * 5000,
    "/name/0/given/0/\x00",
)


@st.composite
def patch_case(draw: st.DrawFn, world: World) -> Case:
    resource_type, ids = draw(
        st.sampled_from(
            (
                ("Patient", (world.child, world.adult)),
                ("Observation", world.observations or ("x",)),
                ("RelatedPerson", (world.mother,)),
            )
        )
    )
    id = draw(st.sampled_from((*ids, "unknown")))
    role = draw(roles())
    kind = draw(st.integers(0, 9))
    if kind == 0:
        ops: Any = [{"op": "copy", "from": "/name", "path": "/name/-"}] * draw(
            st.sampled_from((5, 19, 40))
        )
        note = "copy an array into itself"
        ops = [{"op": "add", "path": "/name", "value": [{"family": "x"}]}, *ops]
    elif kind == 1:
        ops = draw(st.sampled_from(({}, "x", None, [1], [[]], [{"op": None}], [{}])))
        note = "not a patch document"
    else:
        count = draw(st.sampled_from((1, 1, 2, 3, 1_000)))
        op = st.fixed_dictionaries(
            {
                "op": st.sampled_from(
                    ("add", "remove", "replace", "move", "copy", "test", "bogus", "")
                ),
                "path": st.one_of(st.sampled_from(POINTERS), st.just(1)),
            },
            optional={
                "from": st.sampled_from(POINTERS),
                "value": st.one_of(
                    st.sampled_from(
                        ("x", 1, None, True, [], {}, "\ud800", "\x00", "x" * 100_000, "9999-12-31")
                    ),
                    st.builds(dict),
                ),
            },
        )
        drawn = [draw(op) for _ in range(min(count, 5))]
        ops = (drawn * (count // len(drawn) + 1))[:count]
        note = f"{count} patch operations"
    content_type = draw(
        st.sampled_from(
            ("application/json-patch+json",) * 4
            + (
                "application/json",
                "application/fhir+json",
                "application/json-patch+json; charset=utf-8",
            )
        )
    )
    headers = [("Content-Type", content_type)]
    if draw(st.integers(0, 3)) == 0:
        headers.append(
            (
                "If-Match",
                draw(
                    st.sampled_from(
                        ('W/"1"', '"1"', "*", 'W/"99999999999999999999"', 'W/""', "x", 'W/"-1"')
                    )
                ),
            )
        )
    return Case(
        "patch",
        "PATCH",
        f"/fhir/{resource_type}/{id}",
        role,
        headers=tuple(headers),
        body=Body(ops),
        note=note,
    )


# ---------------------------------------------------------------- bundles


@st.composite
def bundle_case(draw: st.DrawFn, world: World) -> Case:
    role = draw(roles())
    bundle_type = draw(
        st.sampled_from(("transaction", "transaction", "batch", "collection", "bogus", None))
    )
    entries: list[Any] = []
    raws: tuple[str, ...] = ()
    for n in range(draw(st.integers(1, 4))):
        resource_type = draw(st.sampled_from(TYPES))
        method = draw(
            st.sampled_from(("POST", "POST", "PUT", "GET", "DELETE", "PATCH", "HEAD", "bogus"))
        )
        if draw(st.integers(0, 2)) == 0:
            body, _ = draw(mutated(resource_type))
            doc, raws = body.doc, body.raws
        else:
            doc = draw(resource(resource_type))
        full_url = draw(
            st.sampled_from(
                (
                    f"urn:uuid:00000000-0000-0000-0000-00000000000{n}",
                    "urn:uuid:00000000-0000-0000-0000-000000000000",
                    f"http://x/fhir/{resource_type}/c{n}",
                    "",
                    "urn:uuid:bogus",
                )
            )
        )
        if method == "PUT":
            doc = {**doc, "id": f"fuzz-b{n}"} if isinstance(doc, dict) else doc
            url = f"{resource_type}/fuzz-b{n}"
        elif method in ("GET", "DELETE"):
            url = draw(
                st.sampled_from(
                    (
                        f"{resource_type}/{world.child}",
                        f"{resource_type}?_id={world.child}",
                        f"{resource_type}?{draw(search_pair(resource_type, world))[0]}=x",
                        "",
                        "?",
                        "Patient/" + "a" * 3000,
                        "metadata",
                    )
                )
            )
        else:
            url = draw(
                st.sampled_from((resource_type, resource_type + "?identifier=x", "", "Bogus"))
            )
        entry: dict[str, Any] = {"fullUrl": full_url, "request": {"method": method, "url": url}}
        if method in ("POST", "PUT", "PATCH"):
            entry["resource"] = doc
        if draw(st.integers(0, 5)) == 0:
            entry["request"] = draw(
                st.sampled_from((None, {}, "x", {"method": "POST"}, {"url": "Patient"}))
            )
        entries.append(entry)
    if draw(st.integers(0, 6)) == 0 and len(json.dumps(entries)) < MAX_REPEATED_BUNDLE:
        entries = entries * draw(st.sampled_from((50, 2_000)))
    bundle: dict[str, Any] = {"resourceType": "Bundle", "entry": entries}
    if bundle_type is not None:
        bundle["type"] = bundle_type
    headers = (("Content-Type", "application/fhir+json"),)
    if draw(st.booleans()):
        headers += (
            (
                "Prefer",
                draw(
                    st.sampled_from(
                        (
                            "return=minimal",
                            "return=OperationOutcome",
                            "return=representation",
                            "handling=strict",
                        )
                    )
                ),
            ),
        )
    return Case(
        "bundle",
        "POST",
        "/fhir",
        role,
        headers=headers,
        body=Body(bundle, raws),
        note=f"{bundle_type} of {len(entries)}",
    )


# ---------------------------------------------------------------- hostile HTTP

PATHS = (
    "/fhir/metadata",
    "/fhir/Patient",
    "/fhir/Patient/{child}",
    "/fhir/Patient/{child}/_history/1",
    "/fhir/Patient/{child}/_history/99999999999999999999",
    "/fhir/Patient/{child}/_history/x",
    "/fhir/Patient/{child}/$family",
    "/fhir/Patient/{child}/$emergency-contacts",
    "/fhir/Patient/{child}/$add-dependent",
    "/fhir/Patient/{child}/$remove-dependent",
    "/fhir/$explain-access",
    "/fhir/.well-known/smart-configuration",
    "/fhir/Patient/" + "a" * 5000,
    "/fhir/Patient/%00",
    "/fhir/Patient/..%2F..%2Fetc",
    "/fhir/%ED%A0%80",
    "/fhir/Bogus/1",
    "/fhir//Patient",
    "/fhir",
    "/api/v1/patients",
    "/api/v1/patients/{child}",
    "/api/v1/patients/{child}/audit",
    "/api/v1/patients/x:restore",
    "/api/v1/relationships/verify",
    "/api/v1/relationships/delegate",
    "/api/v1/relationships/delegate/x/approve",
    "/graphql",
    "/metrics",
    "/healthz",
    "/readyz",
    "/",
    "/" + "x" * 20_000,
)
HEADERS = {
    "Accept": (
        "application/xml",
        "*/*",
        "application/fhir+json;q=0",
        "text/html",
        "application/fhir+json; fhirVersion=3.0",
        "x" * 10_000,
        ";;;",
        "",
    ),
    "Content-Type": (
        "text/plain",
        "application/xml",
        "multipart/form-data; boundary=",
        "application/fhir+json; charset=latin-1",
        "application/fhir+json; charset=utf-16",
        "application/fhir+json; fhirVersion=5.0",
        "application/json-patch+json",
        "application/x-www-form-urlencoded",
        ";;;",
        "",
        "a" * 10_000,
    ),
    "If-Match": ('W/"1"', '"1"', "*", 'W/"99999999999999999999"', 'W/""', "x", 'W/"\x00"'),
    "If-None-Exist": (
        "identifier=x",
        "_id=",
        "bogus=1",
        "name:bogus=x",
        "x" * 10_000,
        "%ED%A0%80",
        "birthdate=ge9999-12-31T23:59:59+14:00",
    ),
    "If-None-Match": ("*", 'W/"1"', "x"),
    "If-Modified-Since": ("Thu, 01 Jan 1970 00:00:00 GMT", "x", "Sat, 31 Dec 9999 23:59:59 GMT"),
    "Prefer": (
        "return=minimal",
        "return=bogus",
        "handling=strict",
        "handling=lenient",
        "respond-async",
        ",,,",
        "return=" + "x" * 5000,
    ),
    "Idempotency-Key": ("k", "x" * 10_000, "", "\x7f"),
    "X-Request-ID": ("x" * 10_000, "../../", "ok-1"),
    "traceparent": (
        "00-" + "0" * 32 + "-" + "0" * 16 + "-01",
        "garbage",
        "ff-" + "f" * 32 + "-" + "f" * 16 + "-ff",
    ),
    "Content-Encoding": ("gzip", "br", "bogus"),
    "X-HTTP-Method-Override": ("DELETE",),
    "Range": ("bytes=0-1",),
    "Expect": ("100-continue",),
}


def _paths_for(world: World) -> st.SearchStrategy[str]:
    return st.sampled_from(PATHS).map(lambda p: p.replace("{child}", world.child))


@st.composite
def http_case(draw: st.DrawFn, world: World) -> Case:
    role = draw(roles())
    path = draw(_paths_for(world))
    method = draw(
        st.sampled_from(
            (
                "GET",
                "POST",
                "PUT",
                "PATCH",
                "DELETE",
                "HEAD",
                "OPTIONS",
                "TRACE",
                "PROPFIND",
                "FOO",
                "CONNECT",
            )
        )
    )
    names = draw(st.lists(st.sampled_from(sorted(HEADERS)), max_size=3, unique=True))
    headers = tuple((name, draw(st.sampled_from(HEADERS[name]))) for name in names)
    body = None
    if method in ("POST", "PUT", "PATCH") or draw(st.integers(0, 4)) == 0:
        if draw(st.booleans()):
            data, _ = draw(opaque_bodies())
            body = Body(opaque=data)
        else:
            body = Body(draw(json_values()))
    transport = draw(
        st.sampled_from(
            (None, None, None, None, "truncate", "slow", "disconnect", "garbage", "header-flood")
        )
    )
    if transport is not None:
        method = "POST" if transport in ("truncate", "slow", "disconnect") else method
        path = draw(
            st.sampled_from(
                ("/fhir/Patient", "/fhir", "/api/v1/patients", "/graphql", "/fhir/Patient/_search")
            )
        )
        body = body or Body({"resourceType": "Patient", "name": [{"family": "x" * 5000}]})
        headers = (("Content-Type", "application/fhir+json"),)
    return Case(
        "http",
        method,
        path,
        role,
        headers=headers,
        body=body,
        transport=transport,
        note=f"{method} {path.split('?')[0][:60]}",
    )


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(),
        st.floats(allow_nan=False, allow_infinity=False),
        hostile_text(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
        ),
        max_leaves=12,
    )


# ---------------------------------------------------------------- other APIs

PATIENT_API_FIELDS = (
    "given_name",
    "family_name",
    "date_of_birth",
    "gender",
    "national_id",
    "phone_number",
    "email",
    "address",
    "patient_id",
    "version",
    "created_at",
    "is_deleted",
    "bogus",
)
VERIFY_FIELDS = (
    "requesting_user_id",
    "patient_id",
    "relationship_type",
    "data_scope",
    "evidence",
    "bogus",
)


@st.composite
def api_case(draw: st.DrawFn, world: World) -> Case:
    role = draw(roles())
    surface = draw(st.integers(0, 4))
    value = st.one_of(
        hostile_text(),
        json_values(),
        st.sampled_from((world.child, f"Patient/{world.child}", "PRN", "2000-01-01")),
    )
    if surface <= 1:
        doc = draw(st.dictionaries(st.sampled_from(PATIENT_API_FIELDS), value, max_size=8))
        method, path = draw(
            st.sampled_from(
                (
                    ("POST", "/api/v1/patients"),
                    ("PUT", f"/api/v1/patients/{world.child}"),
                    ("GET", "/api/v1/patients"),
                )
            )
        )
        query: tuple[tuple[str, str], ...] = ()
        if method == "GET":
            query = tuple(
                draw(
                    st.lists(
                        st.tuples(
                            st.sampled_from(
                                ("name", "cursor", "limit", "national_id", "date_of_birth", "bogus")
                            ),
                            hostile_text(QUERY_SIZES),
                        ),
                        max_size=3,
                    )
                )
            )
            return Case("api", method, path, role, query=query, note="patient API search")
        return Case(
            "api",
            method,
            path,
            role,
            headers=(("Content-Type", "application/json"),),
            body=Body(doc),
            note="patient API",
        )
    if surface <= 3:
        doc = draw(st.dictionaries(st.sampled_from(VERIFY_FIELDS), value, max_size=6))
        path = draw(
            st.sampled_from(("/api/v1/relationships/verify", "/api/v1/relationships/delegate"))
        )
        return Case(
            "api",
            "POST",
            path,
            role,
            headers=(("Content-Type", "application/json"),),
            body=Body(doc),
            note="relationship API",
        )
    query_text = draw(
        st.sampled_from(
            (
                "{ myFamily { id } }",
                "{" * 5000 + "}" * 5000,
                "query { __schema { types { name fields { name type { name ofType { name ofType { name } } } } } } }",
                "mutation { addDependent(input: {}) { id } }",
                "{ myFamily { " + "id " * 10_000 + "} }",
                "",
                "\x00",
            )
        )
    )
    doc = {
        "query": query_text,
        "variables": draw(json_values()),
        "operationName": draw(st.one_of(st.none(), st.integers(), st.text(max_size=5))),
    }
    return Case(
        "api",
        "POST",
        "/graphql",
        role,
        headers=(("Content-Type", "application/json"),),
        body=Body(doc),
        note="GraphQL",
    )


def cases(world: World) -> st.SearchStrategy[Case]:
    """Every kind of request, in proportions that keep the run's time spread over the surfaces."""
    return st.one_of(
        resource_case(world),
        resource_case(world),
        resource_case(world),
        search_case(world),
        search_case(world),
        search_case(world),
        patch_case(world),
        bundle_case(world),
        http_case(world),
        api_case(world),
    )
