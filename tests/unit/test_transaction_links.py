"""Where a transaction looks for links to its entries' full URLs: the properties the R4 schema
types `uri`, `url`, `oid` or `uuid`, `Reference.reference` and the narrative, nothing else."""

from __future__ import annotations

from typing import Any

from fhir_server.services.interactions.batch import (
    _NARRATIVE,
    _REFERENCE,
    _RESOURCE,
    _URI,
    References,
    _links,
)

SERVER = "http://server.example/fhir"
URN = "urn:uuid:3f1a2b4c-0000-4000-8000-000000000009"


def test_the_link_properties_come_from_the_r4_schema() -> None:
    links = _links()
    assert links["Reference"]["reference"] is _REFERENCE
    assert links["Narrative"]["div"] is _NARRATIVE
    assert links["Attachment"]["url"] is _URI  # url
    assert links["Extension"]["valueUri"] is _URI  # a choice's uri, inlined in the schema
    assert links["Extension"]["valueUuid"] is _URI
    assert links["Identifier"]["system"] is _URI
    assert links["CarePlan"]["instantiatesUri"] is _URI  # an array of uri
    assert links["DocumentReference"]["content"] == "DocumentReference_Content"
    assert links["Observation"]["contained"] is _RESOURCE
    assert links["Bundle_Entry"]["resource"] is _RESOURCE
    # strings, markdown, codes and canonicals are no links R4 asks to replace
    assert "value" not in links["Identifier"]
    assert "valueString" not in links["Extension"]
    assert "valueMarkdown" not in links["Extension"]
    assert "valueCanonical" not in links["Extension"]
    assert "description" not in links["DocumentReference"]
    assert "profile" not in links["Meta"]


def walked(resource: dict[str, Any]) -> dict[str, Any]:
    references = References(SERVER)
    references.add(URN, "Patient/p1")
    references._rewrite(resource, resource["resourceType"], SERVER, 0)
    return resource


def test_contained_resources_and_wrong_shapes() -> None:
    resource = walked(
        {
            "resourceType": "Observation",
            "contained": [{"resourceType": "Binary", "id": "b", "contentType": "x"}, "odd"],
            "subject": "not an object",
            "focus": [{"reference": URN}, 7, None],
            "derivedFrom": {"reference": URN},
            "note": [{"text": URN}],
            "extension": [{"url": URN, "valueUrl": URN}],
            "unknown": {"reference": URN},
        }
    )
    assert resource["focus"][0] == {"reference": "Patient/p1"}
    assert resource["derivedFrom"] == {"reference": "Patient/p1"}  # the wrong shape is still walked
    assert resource["note"] == [{"text": URN}]  # markdown
    assert resource["extension"] == [{"url": "Patient/p1", "valueUrl": "Patient/p1"}]
    assert resource["unknown"] == {"reference": URN}  # no property of Observation
    assert resource["subject"] == "not an object"


def test_narrative_attributes_only_whole_values() -> None:
    div = (
        f"<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href='{URN}'>x</a>"
        f'<a title="{URN}" href="{URN}x">y</a><img  src = "{URN}" /> href="{URN}"</div>'
    )
    resource = walked({"resourceType": "Basic", "text": {"status": "generated", "div": div}})
    assert resource["text"]["div"] == (
        "<div xmlns=\"http://www.w3.org/1999/xhtml\"><a href='Patient/p1'>x</a>"
        f'<a title="{URN}" href="{URN}x">y</a><img  src = "Patient/p1" /> href="{URN}"</div>'
    )
