"""The input limits of services/formats/limits.py, and the parser that applies them."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.errors import BadRequest
from fhir_server.services.formats.limits import InputLimits, check_value
from fhir_server.services.interactions.versions import parse_json

LIMITS = InputLimits(max_depth=4, max_string_length=12, max_array_length=3)


def refusal(value: Any, **kw: Any) -> tuple[str, str]:
    with pytest.raises(BadRequest) as caught:
        check_value(value, LIMITS, **kw)
    issue = caught.value.issues[0]
    return issue.diagnostics, issue.expression[0]


def test_values_within_every_limit_pass() -> None:
    check_value({"resourceType": "Basic", "a": [{"b": ["123456789012"]}, 1, None]}, LIMITS)


@pytest.mark.parametrize(
    ("value", "message", "where"),
    [
        ({"resourceType": "Basic", "a": [{"b": [[]]}]}, "deeper than 4 levels", "Basic.a[0].b[0]"),
        ({"resourceType": "Basic", "a": [1, 2, 3, 4]}, "4 items; at most 3", "Basic.a"),
        ({"resourceType": "Basic", "a": [{"b": "x" * 13}]}, "13 characters", "Basic.a[0].b"),
        ({"resourceType": "Basic", "x" * 13: 1}, "13 characters", "Basic"),
        ({"a": {"b": "x\x00"}}, "NUL", "a.b"),
        ({"a": ["\x00"]}, "NUL", "a[0]"),
        ([[[[[]]]]], "deeper than 4 levels", "[0][0][0][0]"),
    ],
)
def test_a_value_beyond_a_limit_is_refused_naming_where(
    value: Any, message: str, where: str
) -> None:
    diagnostics, expression = refusal(value)
    assert message in diagnostics
    assert expression == where
    assert f"`{where}`" in diagnostics


def test_lone_surrogates_are_refused_only_when_asked() -> None:
    check_value({"a": "\ud800"}, LIMITS)
    assert "surrogate" in refusal({"a": "\ud800"}, surrogates=True)[0]
    check_value({"a": "é\U0001f4a5"}, LIMITS, surrogates=True)


@pytest.mark.parametrize(
    "raw",
    [
        b"[" * 5000 + b"]" * 5000,
        b'{"x": 1.50, "y": ' + b"[" * 5000 + b"]" * 5000 + b"}",
    ],
)
def test_nesting_beyond_the_parsers_is_a_400(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="nests too deeply"):
        parse_json(raw, InputLimits())


@pytest.mark.parametrize(
    "raw", [b'{"x": 1.50, "y": "\\ud800"}', b'{"x": 1.50, "y": "\xed\xa0\x80"}']
)
def test_the_text_keeping_parser_refuses_lone_surrogates(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="surrogate"):
        parse_json(raw, InputLimits())


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=14),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=14), children, max_size=5)
    ),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def _fits(value: Any) -> bool:
    if isinstance(value, str):
        return len(value) <= 12 and "\x00" not in value
    if isinstance(value, dict):
        return all(_fits(k) and _fits(v) for k, v in value.items())
    if isinstance(value, list):
        return len(value) <= 3 and all(_fits(v) for v in value)
    return True


@given(json_values)
def test_refused_exactly_when_a_limit_is_broken(value: Any) -> None:
    expected = _depth(value) <= 4 and _fits(value)
    try:
        check_value(value, LIMITS)
    except BadRequest:
        assert not expected
    else:
        assert expected
