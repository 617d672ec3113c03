"""The search planner's SQL cache (storage/search_sql.py): SQL text per query shape, values always
bound per request. Pure: no database (results per request are checked in
tests/integration/test_search_statement_cache.py)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import bindparam, select

from fhir_server.search.grants import UNRESTRICTED, Everything, Grant, InCompartments
from fhir_server.search.query import parse_search
from fhir_server.storage import search_sql
from fhir_server.storage.search_sql import (
    MAX_CACHED_VALUES,
    STATEMENT_CACHE_SIZE,
    access_clause,
    clear_statement_cache,
    count_statement,
    include_statement,
    search_statement,
    statement_cache_info,
)
from fhir_server.storage.sql import Query, compile_query
from fhir_server.storage.tables import resources

BASES = ("http://test/fhir",)
NOW = datetime(2026, 6, 1, tzinfo=UTC)


@pytest.fixture(autouse=True)
def empty_cache() -> Iterator[None]:
    clear_statement_cache()
    yield
    clear_statement_cache()


def statement(
    params: list[tuple[str, str]], access: Any = None, resource_type: str = "Patient"
) -> Query:
    query = parse_search((resource_type,), params)
    found, _ = search_statement(
        query, Everything() if access is None else access, local_bases=BASES, now=NOW
    )
    return found


def test_same_shape_shares_the_sql_and_keeps_its_own_values() -> None:
    first = statement([("family", "smith")])
    second = statement([("family", "o'brien'); drop table resources; --")])
    assert first.sql == second.sql
    assert first.params != second.params
    assert "smith" in first.params.values() and "smith" not in str(second.params)
    # values never reach the SQL text, whatever they hold
    assert "smith" not in first.sql and "brien" not in second.sql
    info = statement_cache_info()
    assert (info.hits, info.misses) == (1, 1)


def test_other_parameter_of_the_same_type_shares_the_sql() -> None:
    # the parameter's code is a value too
    assert statement([("family", "a")]).sql == statement([("given", "a")]).sql


@pytest.mark.parametrize(
    ("one", "other"),
    [
        ([("family", "smi")], [("family:exact", "Smith")]),
        ([("family", "smi")], [("family:contains", "mit")]),
        ([("gender", "male")], [("gender:not", "male")]),
        ([("gender:missing", "true")], [("gender:missing", "false")]),
        ([("identifier", "http://x|1")], [("identifier", "1")]),
        ([("identifier", "http://x|1")], [("identifier", "|1")]),
        ([("birthdate", "ge2000")], [("birthdate", "le2000")]),
        ([("birthdate", "2000")], [("birthdate", "2000,2001")]),
        ([("_sort", "family")], [("_sort", "-family")]),
        ([("general-practitioner", "Practitioner/1")], [("general-practitioner", "1")]),
    ],
)
def test_shapes_that_differ_get_their_own_sql(
    one: list[tuple[str, str]], other: list[tuple[str, str]]
) -> None:
    assert statement(one).sql != statement(other).sql


def test_a_list_is_one_array_value_whatever_its_length() -> None:
    one = statement([("_id", "a")])
    three = statement([("_id", "a,b,c")])
    assert one.sql == three.sql
    assert ["a"] in one.params.values() and ["a", "b", "c"] in three.params.values()


def test_access_values_are_bound_and_their_shape_is_part_of_the_key() -> None:
    mine = statement([("family", "x")], InCompartments(frozenset({"Patient/1"})))
    theirs = statement([("family", "x")], InCompartments(frozenset({"Patient/2", "Patient/3"})))
    assert mine.sql == theirs.sql
    assert ["Patient/1"] in mine.params.values()
    assert ["Patient/2", "Patient/3"] in theirs.params.values()
    assert "Patient/" not in mine.sql
    created = statement([("family", "x")], InCompartments(frozenset({"Patient/1"}), "Person/9"))
    everything = statement([("family", "x")])
    assert len({mine.sql, created.sql, everything.sql}) == 3


def test_every_value_has_its_parameter_in_the_sql() -> None:
    for found in (
        statement([("name", "ann"), ("birthdate", "ap1980"), ("_lastUpdated", "lt2020")]),
        statement([("subject:Patient.name", "x"), ("_sort", "-date")], resource_type="Observation"),
        count_statement(
            parse_search(("Patient",), [("_has:Observation:patient:code", "1")]),
            Everything(),
            now=NOW,
        ),
    ):
        for name in found.params:
            assert f"%({name})s" in found.sql


def test_include_pages_of_any_size_share_the_sql() -> None:
    include = parse_search(("Observation",), [("_include", "Observation:encounter")]).includes[0]
    one = include_statement(include, [("Observation", "1")], Everything(), limit=10)
    many = include_statement(include, [("Observation", str(i)) for i in range(20)], Everything())
    again = include_statement(include, [("Observation", "2")], Everything(), limit=10)
    assert one.sql == again.sql and one.params != again.params
    assert "LIMIT" in one.sql and "LIMIT" not in many.sql


def test_the_cache_is_bounded_and_huge_queries_stay_out_of_it() -> None:
    assert statement_cache_info().maxsize == STATEMENT_CACHE_SIZE
    values = ",".join(f"http://x|{i}" for i in range(MAX_CACHED_VALUES + 1))
    huge = statement([("identifier", values)])
    assert len(huge.params) > MAX_CACHED_VALUES
    assert statement_cache_info().currsize == 0
    statement([("identifier", "http://x|1")])
    assert statement_cache_info().currsize == 1


def test_access_clause_carries_its_own_values() -> None:
    grant = Grant(compartments=frozenset({"Patient/1"}), creators=frozenset({"Person/2"}))

    one = {"Observation": grant}
    sql, params = compile_query(
        select(resources.c.id).where(access_clause(one, resources, ["Observation"]))
    )
    assert sorted(map(str, params.values())) == ["['Patient/1']", "['Person/2']"]
    assert "Patient/1" not in sql
    # not the search cache's business
    assert statement_cache_info().currsize == 0


def test_a_value_outside_the_shape_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    def literal(name: str, type_: Any) -> Any:
        return bindparam(f"{name}_literal", "a value of this request", type_=type_)

    monkeypatch.setattr(search_sql, "_placeholder", literal)
    with pytest.raises(AssertionError, match="outside the search's shape"):
        statement([("family", "x")])
    assert statement_cache_info().currsize == 0


class ObservationsOnly(dict[str, Grant | None]):
    def __missing__(self, resource_type: str) -> Grant | None:
        return UNRESTRICTED if resource_type == "Observation" else None


def test_values_of_a_condition_reduced_to_false_stay_unused() -> None:
    # a chain into a type the caller may not see: SQLAlchemy reduces `x AND false` to `false`,
    # and psycopg sends only the values the SQL names
    found = statement([("subject:Patient.name", "x")], ObservationsOnly(), "Observation")
    assert "WHERE false" in found.sql
    unused = [name for name in found.params if f"%({name})s" not in found.sql]
    assert [found.params[name] for name in unused] == ["Patient", "x", "y", "name"]
