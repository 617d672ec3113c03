"""Parsing search parameters (pure; the HTTP behaviour is in tests/api/test_search.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.errors import BadRequest
from fhir_server.search.index import NOT_INDEXED
from fhir_server.search.query import (
    ROW_MODIFIERS,
    parse_search,
    split_prefix,
    split_unescaped,
    split_values,
)
from fhir_server.storage.cursors import decode_cursor, encode_cursor


def test_values_split_at_unescaped_commas() -> None:
    assert split_values("a,b\\,c,d") == ("a", "b,c", "d")


def test_token_parts_unescape() -> None:
    assert split_unescaped("http://x|a\\|b", "|") == ["http://x", "a|b"]
    assert split_unescaped("|code", "|") == ["", "code"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("ge2020", ("ge", "2020")),
        ("2020", ("eq", "2020")),
        ("ap-1.5", ("ap", "-1.5")),
        ("gexyz", ("eq", "gexyz")),
    ],
)
def test_prefixes(value: str, expected: tuple[str, str]) -> None:
    assert split_prefix(value) == expected


def test_chain_has_and_modifiers_parse() -> None:
    query = parse_search(
        ("Observation",),
        [
            ("subject:Patient.name:exact", "Ann"),
            ("code:text", "heart"),
            ("_count", "5"),
            ("_sort", "-date"),
        ],
    )
    chained, text = query.criteria
    assert chained.param.code == "subject" and chained.modifier == "Patient"
    assert chained.chain[0].resource_type == "Patient" and chained.chain[0].modifier == "exact"
    assert text.modifier == "text"
    assert query.count == 5 and query.sort[0].descending
    has = parse_search(("Patient",), [("_has:Observation:patient:code", "1234")]).criteria[0]
    assert has.has_type == "Observation" and has.chain[0].param.code == "code"


def test_id_and_last_updated_with_modifiers_in_chains_and_has_are_criteria() -> None:
    """`_id` and `_lastUpdated` alone are the query's own lists; with a modifier, or on the
    target of a chain or `_has`, criteria the planner answers on the resource row."""
    query = parse_search(
        ("Observation",),
        [
            ("_id", "a,b"),
            ("_lastUpdated", "gt2020"),
            ("_id:not", "c"),
            ("_lastUpdated:missing", "false"),
            ("subject:Patient._id", "p1"),
            ("subject._lastUpdated", "lt2020"),
        ],
    )
    assert query.ids == (("a", "b"),) and query.last_updated == (("gt2020",),)
    not_c, missing, chained, every_target = query.criteria
    assert (not_c.param.code, not_c.modifier, not_c.values) == ("_id", "not", ("c",))
    assert (missing.param.code, missing.modifier) == ("_lastUpdated", "missing")
    assert chained.chain[0].param.code == "_id" and chained.chain[0].values == ("p1",)
    # `subject` refers to several types, each of which has `_lastUpdated`
    assert len(every_target.chain) > 1
    assert {c.param.code for c in every_target.chain} == {"_lastUpdated"}
    has = parse_search(("Patient",), [("_has:Observation:subject:_id", "o1")]).criteria[0]
    assert has.has_type == "Observation" and has.chain[0].param.code == "_id"
    # the parser's row parameters are those the index leaves out and the planner answers
    assert frozenset(ROW_MODIFIERS) == NOT_INDEXED
    lenient = parse_search(("Patient",), [("_id:below", "x")], strict=False)
    assert lenient.criteria == () and lenient.echo == ()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("nickname", "x"),
        ("name:phonetic", "x"),
        ("birthdate", "xx2000"),
        ("_count", "-1"),
        ("_total", "all"),
        ("_include", "Patient:name"),
        ("gender:missing", "maybe"),
        ("subject.subject.subject.subject.name", "x"),
        ("_has:Observation:code:status", "final"),
        ("_id", ""),
        ("_id", "a,,b"),
        ("_id:below", "x"),
        ("_id:exact", "x"),
        ("_id:missing", "maybe"),
        ("_id:not", ""),
        ("_lastUpdated:not", "2020"),
        ("_lastUpdated:missing", "x"),
        ("general-practitioner._id:text", "x"),
        ("general-practitioner._lastUpdated", "xx2000"),
    ],
)
def test_strict_parsing_refuses(name: str, value: str) -> None:
    types = ("Observation",) if name.startswith("subject") else ("Patient",)
    with pytest.raises(BadRequest):
        parse_search(types, [(name, value)])


def test_lenient_parsing_drops_unknown_parameters() -> None:
    query = parse_search(("Patient",), [("nickname", "x"), ("name", "y")], strict=False)
    assert [c.param.code for c in query.criteria] == ["name"]
    assert query.echo == (("name", "y"),)


@given(
    st.lists(
        st.one_of(
            st.none(),
            st.text(max_size=20),
            st.integers(min_value=-(2**40), max_value=2**40),
            st.datetimes(timezones=st.just(UTC)),
            st.decimals(allow_nan=False, allow_infinity=False, places=3),
        ),
        max_size=5,
    )
)
def test_cursor_round_trip(keys: list[object]) -> None:
    decoded = decode_cursor(encode_cursor(tuple(keys)), len(keys))
    assert list(decoded) == keys
    for original, back in zip(keys, decoded, strict=True):
        assert type(original) is type(back) or isinstance(original, datetime | Decimal)


def test_a_forged_cursor_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        decode_cursor("not-a-cursor!", 2)
    with pytest.raises(BadRequest):
        decode_cursor(encode_cursor(("a",)), 2)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (">2020", ("gt", "2020")),
        ("<2020", ("lt", "2020")),
        (">=5", ("ge", "5")),
        ("<=5", ("le", "5")),
    ],
)
def test_fhirclient_operators_are_prefixes(value: str, expected: tuple[str, str]) -> None:
    assert split_prefix(value) == expected


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (("_totalMethod", "count"), ("_total", "accurate")),
        (("_totalMethod", "estimate"), ("_total", "estimate")),
        (("_totalMethod", "none"), ("_total", "none")),
        (("_sort:asc", "date"), ("_sort", "date")),
        (("_sort:desc", "date,code"), ("_sort", "-date,-code")),
        (
            ("_include:recursive", "Observation:subject"),
            ("_include:iterate", "Observation:subject"),
        ),
        (("id", "abc"), ("_id", "abc")),
    ],
)
def test_client_aliases_are_understood_as_r4_spells_them(
    given: tuple[str, str], expected: tuple[str, str]
) -> None:
    query = parse_search(("Observation",), [given])
    assert expected in query.echo


def test_an_unknown_total_method_and_mixed_elements_are_refused() -> None:
    with pytest.raises(BadRequest, match="_totalMethod=exact"):
        parse_search(("Patient",), [("_totalMethod", "exact")])
    with pytest.raises(BadRequest, match="mixes"):
        parse_search(("Patient",), [("_elements", "name,-text")])
    # lenient handling does not make a wrong value right either
    with pytest.raises(BadRequest):
        parse_search(("Patient",), [("_totalMethod", "exact")], strict=False)
    assert parse_search(("Patient",), [("_totalMethod", "count")]).total == "accurate"
    assert parse_search(("Patient",), [("_elements", "-text,-contact")]).elements == (
        "-text",
        "-contact",
    )
