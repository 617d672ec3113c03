"""The `Prefer` header (RFC 7240) as the FHIR API reads it: every field line is one list, names
without regard to case, values exactly."""

from __future__ import annotations

import pytest
from starlette.datastructures import Headers

from fhir_server.api.deps import _prefers, prefer_of, prefer_return


def joined(*lines: str) -> str | None:
    """What `interaction()` makes of the `Prefer` field lines of a request."""
    return prefer_of(Headers(raw=[(b"prefer", line.encode()) for line in lines]))


def test_several_prefer_lines_are_one_list() -> None:
    prefer = joined("return=minimal", "handling=lenient")
    assert prefer_return(prefer) == "minimal"
    assert _prefers(prefer, "handling", "lenient")
    prefer = joined("handling=lenient", "return=OperationOutcome")
    assert prefer_return(prefer) == "OperationOutcome"
    assert _prefers(prefer, "handling", "lenient")


@pytest.mark.parametrize(
    ("handling", "returning"),
    [
        ("HANDLING=lenient", "RETURN=minimal"),
        ("Handling=lenient", "Return=minimal"),
        (" handling = lenient ", " return = minimal "),
        ('handling="lenient"', 'return="minimal"'),
    ],
)
def test_preference_names_are_case_insensitive(handling: str, returning: str) -> None:
    assert _prefers(joined(handling), "handling", "lenient")
    assert prefer_return(joined(returning)) == "minimal"
    assert prefer_return(joined(handling, returning)) == "minimal"


def test_values_are_compared_exactly_and_an_unknown_one_is_ignored() -> None:
    assert not _prefers(joined("handling=LENIENT"), "handling", "lenient")
    assert prefer_return(joined("return=MINIMAL")) == "representation"


def test_no_prefer_is_the_default() -> None:
    assert joined() is None
    assert prefer_return(None) == "representation"
    assert not _prefers(None, "handling", "lenient")
