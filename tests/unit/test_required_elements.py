"""The required-elements table (capability/data/required-elements.json) is generated data: the
committed file is what capability/generate.py makes of the R4 definitions, and the generator
reads the definitions as the table's comment says."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from capability import generate
from capability.definitions import json_schema, required_elements

ROOT = Path(__file__).resolve().parents[2]
# The R4 definitions folder: FHIR_R4_DEFINITIONS, else the steering folder's copy beside the repo.
SOURCE = Path(os.environ.get("FHIR_R4_DEFINITIONS", ROOT.parent / "shared" / "fhir-r4"))


def test_the_committed_table_is_what_the_generator_makes_of_the_r4_definitions() -> None:
    missing = [name for name in generate.SOURCES if not (SOURCE / name).is_file()]
    if missing:
        pytest.skip(f"{SOURCE} lacks {', '.join(missing)} (set FHIR_R4_DEFINITIONS)")
    assert generate.render(generate.generate(SOURCE)) == generate.OUTPUT.read_text("utf-8")
    assert generate.main([str(SOURCE), "--check"]) == 0


def test_the_committed_file_is_the_rendered_table_the_server_loads() -> None:
    table = required_elements()
    assert generate.render({k: list(v) for k, v in table.items()}) == generate.OUTPUT.read_text(
        "utf-8"
    )
    assert len(table) == 302
    assert table["Observation"] == ("status",)
    assert table["Bundle_Link"] == ("relation", "url")
    assert table["Extension"] == ("url",)
    assert table["EvidenceVariable_Characteristic"] == ("definition[x]",)
    schema = json_schema()["definitions"]
    assert set(table) <= set(schema)


def _definition(type_name: str, *elements: tuple[str, int], **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "id": type_name,
        "type": type_name,
        "kind": "resource",
        "derivation": "specialization",
        "snapshot": {"element": [{"path": path, "min": low} for path, low in elements]},
        **extra,
    }


def _bundle(*definitions: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "entry": [{"resource": d} for d in definitions]}


SCHEMA = {
    "definitions": {
        "Thing": {
            "properties": {
                "status": {"$ref": "#/definitions/code"},
                "_status": {"$ref": "#/definitions/Element"},
                "valueString": {"type": "string"},
                "valueBoolean": {"type": "boolean"},
                "code": {"$ref": "#/definitions/CodeableConcept"},
                "part": {"type": "array", "items": {"$ref": "#/definitions/Thing_Part"}},
            },
            "required": ["code"],
        },
        "Thing_Part": {"properties": {"name": {"$ref": "#/definitions/string"}}},
    }
}


def test_the_generator_keys_by_schema_definition_and_skips_what_the_schema_requires(
    tmp_path: Path,
) -> None:
    thing = _definition(
        "Thing",
        ("Thing", 0),
        ("Thing.status", 1),
        ("Thing.value[x]", 1),
        ("Thing.code", 1),  # the schema's `required` has it
        ("Thing.part", 0),
        ("Thing.part.name", 1),
        ("Thing.later", 1),  # not in the schema: unknown to the validator anyway
        ("Thing.later.deep", 1),
    )
    profile = _definition("Thing", ("Thing.part", 1), derivation="constraint")
    (tmp_path / "fhir.schema.json").write_text(json.dumps(SCHEMA))
    (tmp_path / "profiles-types.json").write_text(json.dumps(_bundle(profile)))
    (tmp_path / "profiles-resources.json").write_text(json.dumps(_bundle(thing)))
    assert generate.generate(tmp_path) == {
        "Thing": ["status", "value[x]"],
        "Thing_Part": ["name"],
    }
    skipped: list[tuple[str, int]] = []
    generate.required_elements(SCHEMA, iter([thing]), skipped)
    assert skipped == [("Thing.later", 1), ("Thing.later.deep", 1)]
