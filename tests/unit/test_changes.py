"""The value-less diffs of the audit trail (services/formats/changes.py)."""

from __future__ import annotations

from typing import Any

import jsonpatch
import orjson
from hypothesis import given
from hypothesis import strategies as st

from fhir_server.services.formats.changes import MAX_OPERATIONS, diff, encode

BEFORE: dict[str, Any] = {
    "resourceType": "Patient",
    "id": "1",
    "meta": {"versionId": "1", "lastUpdated": "2026-01-01T00:00:00Z"},
    "name": [{"family": "Doe", "given": ["Jane"]}],
    "birthDate": "1990-04-01",
    "telecom": [{"system": "email", "value": "jane@example.org"}],
}


def test_an_update_names_the_paths_it_changed_and_none_of_the_values() -> None:
    after = {
        **BEFORE,
        "meta": {"versionId": "2", "lastUpdated": "2026-01-02T00:00:00Z"},
        "name": [{"family": "Doe", "given": ["Janet"]}],
        "gender": "female",
    }
    del after["telecom"]
    operations = diff(BEFORE, after)
    assert operations == [
        {"op": "remove", "path": "/telecom"},
        {"op": "replace", "path": "/name/0/given/0"},
        {"op": "add", "path": "/gender"},
    ]
    text = encode(operations)
    for value in ("Janet", "Jane", "female", "jane@example.org", "1990"):
        assert value not in text


def test_the_servers_bookkeeping_is_no_change() -> None:
    """A client that sends no `meta` (or the stored one) changes nothing; a tag it adds is."""
    without_meta = {k: v for k, v in BEFORE.items() if k != "meta"}
    assert diff(BEFORE, without_meta) == []
    tagged = {**without_meta, "meta": {"tag": [{"code": "x"}]}}
    assert diff(BEFORE, tagged) == [{"op": "add", "path": "/meta"}]


def test_create_and_delete() -> None:
    assert diff(None, BEFORE) == [
        {"op": "add", "path": "/name"},
        {"op": "add", "path": "/birthDate"},
        {"op": "add", "path": "/telecom"},
    ]
    assert diff(BEFORE, None) == [{"op": "remove", "path": ""}]
    assert diff(BEFORE, BEFORE) == []


def test_a_list_that_changes_length_is_replaced_whole_and_keys_are_escaped() -> None:
    assert diff({"a/b": [1]}, {"a/b": [1, 2]}) == [{"op": "replace", "path": "/a~1b"}]


def test_large_changes_are_told_with_shorter_paths() -> None:
    before = {"entry": [{"value": i, "note": {"text": str(i)}} for i in range(40)]}
    after = {"entry": [{"value": -i - 1, "note": {"text": "x"}} for i in range(40)]}
    operations = diff(before, after)
    assert len(operations) == 80
    told = orjson.loads(encode(operations))
    assert len(told) <= MAX_OPERATIONS
    assert told == [{"op": "replace", "path": f"/entry/{i}"} for i in range(40)]
    # every path changed is still covered by a path told
    assert all(any(o["path"].startswith(t["path"]) for t in told) for o in operations)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | st.text("ab", max_size=2),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.text("ab/~", min_size=1, max_size=2), children, max_size=3)
    ),
    max_leaves=12,
)
documents = st.dictionaries(st.text("abc", min_size=1, max_size=2), json_values, max_size=4)


@given(documents, documents)
def test_the_paths_are_exactly_where_the_documents_differ(
    before: dict[str, Any], after: dict[str, Any]
) -> None:
    """Applying the value-less operations, with the values taken from `after`, gives `after`:
    nothing changed is missed, and no path points outside the documents."""
    patch = []
    for operation in diff(before, after):
        if operation["op"] == "remove":
            patch.append(operation)
        else:
            pointer = jsonpatch.JsonPointer(operation["path"])
            patch.append({**operation, "value": pointer.resolve(after)})
    # removals of list items would shift indexes; diff() never emits them (lists of another
    # length are replaced whole)
    assert jsonpatch.apply_patch(before, patch) == after
