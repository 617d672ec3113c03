"""The fuzzer's own parts, without a server: the schemas it generates from, the bytes it sends,
how it reads the server's log, shrinks and shows a failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from fhir_server.validation import default_validator
from fuzz.case import Body, Case, compact, raw_marker, reproducer
from fuzz.runner import ServerLog, _smaller, exception_type
from fuzz.schemas import resource_schema
from fuzz.strategies import TYPES, World, cases, mutated, resource


def _refs(node: object) -> int:
    if isinstance(node, dict):
        return ("$ref" in node) + sum(_refs(v) for v in node.values())
    if isinstance(node, list):
        return sum(_refs(v) for v in node)
    return 0


@pytest.mark.parametrize("resource_type", TYPES)
def test_the_schemas_are_finite_and_keep_the_required_elements(resource_type: str) -> None:
    schema = resource_schema(resource_type)
    assert _refs(schema) == 0
    assert "resourceType" in schema["required"]
    assert schema["additionalProperties"] is False
    assert len(json.dumps(schema)) < 200_000


def test_observation_status_and_one_value_type() -> None:
    # what the JSON Schema cannot say, the generator knows as the server's validator does
    schema = resource_schema("Observation")
    assert {"status", "code"} <= set(schema["required"])
    values = [key for key in schema["properties"] if key.startswith("value")]
    assert values == ["valueQuantity"]


GENERATE = settings(
    max_examples=8,
    database=None,
    deadline=None,
    phases=[Phase.generate],
    suppress_health_check=list(HealthCheck),
)


@GENERATE
@given(st.sampled_from(TYPES).flatmap(lambda t: st.tuples(st.just(t), resource(t))))
def test_generated_resources_are_mostly_valid(drawn: tuple[str, dict[str, object]]) -> None:
    """Valid generation reaches storage: the validator's complaints may only be about values
    that the R4 schema's patterns allow and FHIR does not (a 31st of April, base64 spacing)."""
    resource_type, generated = drawn
    assert generated["resourceType"] == resource_type
    for issue in default_validator().issues(generated):
        assert "calendar date" in issue.diagnostics or "base64" in issue.diagnostics, issue


@GENERATE
@given(mutated("Patient"))
def test_a_mutated_resource_is_still_sendable(drawn: tuple[Body, str]) -> None:
    body, note = drawn
    data = body.render()
    assert isinstance(data, bytes) and data
    assert note.startswith("Patient with ")
    assert b"\x00raw:" not in data  # every splice was replaced


def test_bodies_write_what_json_cannot() -> None:
    doc = {"a": "\ud800", "b": raw_marker(0), "c": "\x00"}
    ascii_body = Body(doc, ("1e400",)).render()
    assert ascii_body == b'{"a":"\\ud800","b":1e400,"c":"\\u0000"}'
    utf8 = Body({"a": "\ud800é"}, encoding="utf8").render()
    assert utf8 == b'{"a":"\xed\xa0\x80\xc3\xa9"}'
    assert Body(opaque=b"{").render() == b"{"


def test_queries_are_encoded_byte_for_byte() -> None:
    case = Case("search", "GET", "/fhir/Patient", query=(("name", "a b"), ("x", "\ud800\x00|,")))
    assert case.target() == "/fhir/Patient?name=a%20b&x=%ED%A0%80%00|,"


def test_compact_folds_repetitions_and_evaluates_to_the_same_bytes() -> None:
    data = b'{"a":' + b"[" * 5000 + b"1" + b"]" * 5000 + b',"b":"' + b"xy" * 900 + b'"}'
    shown = compact(data, limit=10_000)
    assert "b'[' * 5000" in shown and "b'xy' * 900" in shown
    assert eval(shown) == data  # noqa: S307 - our own output
    assert compact("abc") == "'abc'"


def test_the_reproducer_names_the_caller_not_the_token() -> None:
    case = Case(
        "create",
        "POST",
        "/fhir/Patient",
        "RelatedPerson",
        headers=(("Content-Type", "application/fhir+json"),),
        body=Body({"resourceType": "Patient"}),
    )
    text = reproducer(case, "http://h")
    assert "POST http://h/fhir/Patient" in text
    assert "<token as RelatedPerson>" in text
    assert 'b\'{"resourceType":"Patient"}\'' in text


def test_exception_types_come_from_the_traceback() -> None:
    trace = (
        "Traceback (most recent call last):\n"
        '  File "/w/fhir_server/storage/repository.py", line 10, in insert\n'
        '  File "/w/.venv/lib/python3.11/site-packages/psycopg/cursor.py", line 97, in execute\n'
        "    return await cursor.execute(query)\n"
        "           ^^^^^^\n"
        "psycopg.errors.ProgramLimitExceeded: index row size 5000 exceeds maximum\n"
        "HINT:  Values larger than 1/3 of a buffer page cannot be indexed.\n"
        "CONTEXT:  COPY search_string, line 1"
    )
    assert exception_type(trace) == (
        "psycopg.errors.ProgramLimitExceeded at fhir_server/storage/repository.py:insert"
    )
    assert exception_type("KeyError: 'x'") == "KeyError"
    assert exception_type("") == "unknown"


def test_the_log_is_read_in_increments(tmp_path: Path) -> None:
    path = tmp_path / "server.log"
    path.write_text('{"level":"info","message":"before"}\n')
    log = ServerLog(path)
    with path.open("a") as handle:
        handle.write('{"level":"error","message":"one"}\nnot json\n{"level":"info","mes')
    assert [r["message"] for r in log.read()] == ["one"]
    with path.open("a") as handle:
        handle.write('sage":"two"}\n')
    assert [r["message"] for r in log.read()] == ["two"]


def test_shrinking_candidates_are_smaller() -> None:
    case = Case(
        "create",
        "POST",
        "/fhir/Patient",
        "Patient",
        query=(("a", "1"), ("b", "2")),
        body=Body({"resourceType": "Patient", "name": [{"family": "x" * 64}, {"family": "y"}]}),
    )
    candidates = list(_smaller(case))
    assert all(len(c.target()) + len(c.body_bytes() or b"") <= 200 for c in candidates)
    assert any(c.role == "System" for c in candidates)
    assert any(c.query == (("a", "1"),) for c in candidates)
    assert any(c.body and c.body.doc == {"resourceType": "Patient"} for c in candidates)
    names = [c.body.doc.get("name") for c in candidates if c.body]
    assert [{"family": "x" * 64}] in names
    assert [{"family": "x" * 32}, {"family": "y"}] in names
    # every candidate is strictly smaller in some part
    original = (len(case.query), len(case.body_bytes() or b""), case.role)
    assert all((len(c.query), len(c.body_bytes() or b""), c.role) != original for c in candidates)


WORLD = World("child", "adult", "mother", ("o1",), (("_page", "abc"),), (("_page", "def"),))


@GENERATE
@given(cases(WORLD))
def test_every_kind_of_case_can_be_generated_and_written(case: Case) -> None:
    assert case.method and case.path.startswith("/")
    case.target()
    case.body_bytes()
