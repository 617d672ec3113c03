"""Which JSON keys `_elements` and `_summary=true` keep (pure; over HTTP in tests/api/test_search.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from capability.definitions import summary_elements
from fhir_server.search.fhirpath import element_keys
from fhir_server.search.query import parse_search
from fhir_server.services.interactions.search import _subset

EXAMPLES = sorted((Path(__file__).parent.parent / "data" / "r4-examples").glob("*.json"))


def test_an_element_is_its_choices_and_its_primitive_extensions() -> None:
    assert element_keys("Patient", "birthDate") == {"birthDate", "_birthDate"}
    assert {"deceasedBoolean", "deceasedDateTime", "_deceasedBoolean"} <= element_keys(
        "Patient", "deceased"
    )
    assert element_keys("Patient", "deceased[x]") == element_keys("Patient", "deceased")
    assert {"valueQuantity", "valueString", "_valueString"} <= element_keys("Observation", "value")
    # a JSON name of one choice is that choice only
    assert element_keys("Patient", "deceasedBoolean") == {"deceasedBoolean", "_deceasedBoolean"}
    # `policyRule` is an element of its own, not a choice of `policy`
    assert "policyRule" not in element_keys("Consent", "policy")
    assert element_keys("Patient", "nickname") == frozenset()
    assert element_keys("Patient", "name.family") == frozenset()
    assert element_keys("Patient", "") == frozenset()


def _old_in_summary(key: str, summary: frozenset[str]) -> bool:
    """`_summary=true`'s test before it shared `element_keys` with `_elements`."""
    key = key.removeprefix("_")
    return key in summary or any(
        char.isupper() and f"{key[:position]}[x]" in summary for position, char in enumerate(key)
    )


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_summary_keeps_what_it_kept_before(path: Path) -> None:
    resource: dict[str, Any] = json.loads(path.read_text())
    summary = summary_elements()[resource["resourceType"]]
    query = parse_search((resource["resourceType"],), [("_summary", "true")])
    subset = _subset(resource, query)
    expected = {
        k for k in resource if k in {"resourceType", "id", "meta"} or _old_in_summary(k, summary)
    }
    assert set(subset) == expected | {"meta"}


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.stem)
def test_elements_and_their_negation_split_every_resource(path: Path) -> None:
    resource: dict[str, Any] = json.loads(path.read_text())
    names = sorted({k.lstrip("_") for k in resource} - {"resourceType", "id", "meta"})[::2]
    if not names:
        return
    resource_type = resource["resourceType"]
    kept = _subset(resource, parse_search((resource_type,), [("_elements", ",".join(names))]))
    left = _subset(
        resource,
        parse_search((resource_type,), [("_elements", ",".join(f"-{n}" for n in names))]),
    )
    always = {"resourceType", "id", "meta"}
    assert (set(kept) - always) | (set(left) - always) == set(resource) - always
    assert not (set(kept) - always) & (set(left) - always)
