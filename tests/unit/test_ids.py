"""The R4 id, written once (compartments/ids.py): every place that checks an id agrees with it."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compartments.ids import ID_PATTERN, ID_REGEX, MAX_ID_LENGTH, is_id
from fhir_server.api.fhir import FhirId
from fhir_server.auth.tokens import _fhir_user
from fhir_server.errors import Unauthorized

ALPHABET = "ABCXYZabcxyz0189-._/ \n#é٣"


@given(st.text(alphabet=ALPHABET, max_size=70))
def test_the_fast_check_is_the_pattern(text: str) -> None:
    assert is_id(text) == (ID_PATTERN.fullmatch(text) is not None)


@given(st.text(alphabet=ALPHABET, max_size=70))
def test_the_path_convertor_uses_the_pattern(text: str) -> None:
    assert FhirId.regex == ID_REGEX
    assert (re.fullmatch(FhirId.regex, text) is not None) == is_id(text)


def test_the_edges() -> None:
    assert is_id("a") and is_id("A-1.z") and is_id("x" * MAX_ID_LENGTH)
    for text in ("", "x" * (MAX_ID_LENGTH + 1), "a_b", "a/b", "a b", "a\n", "é", "٣"):
        assert not is_id(text), text


def test_fhir_user_ids_follow_the_pattern() -> None:
    assert _fhir_user("Patient/" + "x" * MAX_ID_LENGTH) == "Patient/" + "x" * MAX_ID_LENGTH
    for bad in ("Patient/" + "x" * (MAX_ID_LENGTH + 1), "Patient/a_b", "Patient/"):
        with pytest.raises(Unauthorized):
            _fhir_user(bad)
