"""ETags and If-Match, written once (services/formats/etags.py) for both APIs and Bundles."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.errors import PreconditionFailed
from fhir_server.services.formats.etags import ANY_VERSION, MAX_VERSION_DIGITS, etag, version_of
from fhir_server.services.interactions.update import check_precondition, parse_if_match


@pytest.mark.parametrize(
    ("value", "version"),
    [
        ('W/"3"', 3),
        ('"3"', 3),
        ("3", 3),
        ('  W/"12"\t', 12),  # whitespace around the whole value
        ('W/"007"', 7),
        ('W/"' + "9" * MAX_VERSION_DIGITS + '"', 10**MAX_VERSION_DIGITS - 1),
    ],
)
def test_values_that_name_a_version(value: str, version: int) -> None:
    assert version_of(value) == version
    assert parse_if_match(value) == version


@pytest.mark.parametrize(
    "value",
    [
        "",
        "W/",
        'W/""',
        'W/"-1"',
        'W/"+1"',
        'W/"1.0"',
        'W/"abc"',
        'W/" 1"',  # whitespace inside the quotes
        'W/ "1"',  # and between W/ and the quote
        'w/"1"',  # the weak prefix is case-sensitive
        'W/"٣"',  # a digit, but not an ASCII one
        'W/"²"',  # str.isdigit() says yes, int() says no
        'W/"' + "1" * (MAX_VERSION_DIGITS + 1) + '"',  # too long
        'W/"99999999999999999999999"',
    ],
)
def test_values_that_name_none(value: str) -> None:
    assert version_of(value) is None
    with pytest.raises(PreconditionFailed):
        parse_if_match(value)


def test_no_header_is_no_precondition() -> None:
    assert parse_if_match(None) is None


@pytest.mark.parametrize("value", ["*", " * "])
def test_star_asks_for_any_current_version_and_names_none(value: str) -> None:
    """`If-Match: *` (RFC 9110 13.1.1) is a precondition of its own, never a version."""
    assert version_of(value) is None
    assert parse_if_match(value) == ANY_VERSION
    check_precondition("Patient/a", 7, ANY_VERSION)
    for current, deleted in ((None, False), (7, True)):
        with pytest.raises(PreconditionFailed):
            check_precondition("Patient/a", current, ANY_VERSION, deleted=deleted)


@given(st.integers(min_value=1, max_value=10**MAX_VERSION_DIGITS - 1))
def test_an_etag_names_its_own_version(version: int) -> None:
    assert etag(version) == f'W/"{version}"'
    assert version_of(etag(version)) == version
