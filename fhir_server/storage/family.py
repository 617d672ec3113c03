"""The family workflow's queries (services/workflows/family.py): the links it made, the Person of
a patient, a beneficiary's Coverage. Each reads live resources through the search index and gives
their stored JSON text; what they mean (active links, covering periods) is the workflow's."""

from __future__ import annotations

from fhir_server.storage.sql import Connection, Statement, fetch_all

_RELATED_PERSONS_CODED = Statement(
    """
SELECT r.id, r.content::text FROM resources r
WHERE r.resource_type = 'RelatedPerson' AND NOT r.deleted AND r.id IN (
    SELECT t.id FROM search_token t
    WHERE t.resource_type = 'RelatedPerson' AND t.code = 'relationship'
      AND t.system = %(system)s)
"""
)


async def related_persons_coded(conn: Connection, system: str) -> list[tuple[str, str]]:
    """`(id, content)` of every live RelatedPerson with a relationship coded in `system`."""
    rows = await fetch_all(conn, _RELATED_PERSONS_CODED, {"system": system})
    return [(id, text) for id, text in rows]


_PERSON_OF = Statement(
    """
SELECT r.id, r.content::text FROM resources r
WHERE r.resource_type = 'Person' AND NOT r.deleted AND r.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'Person' AND x.code = 'link'
      AND x.target_type = 'Patient' AND x.target_id = %(id)s)
ORDER BY r.id
LIMIT 1
"""
)


async def person_of(conn: Connection, patient_id: str) -> tuple[str, str] | None:
    """`(id, content)` of the live Person that links to `Patient/patient_id` (the first by id),
    or None."""
    rows = await fetch_all(conn, _PERSON_OF, {"id": patient_id})
    return (rows[0][0], rows[0][1]) if rows else None


_COVERAGE_OF = Statement(
    """
SELECT r.id, r.version_id, r.content::text FROM resources r
WHERE r.resource_type = 'Coverage' AND NOT r.deleted AND r.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'Coverage' AND x.code = 'beneficiary'
      AND x.target_type = 'Patient' AND x.target_id = %(id)s)
ORDER BY r.id
"""
)


async def coverage_of(conn: Connection, patient_id: str) -> list[tuple[str, int, str]]:
    """`(id, version, content)` of every live Coverage whose beneficiary is `Patient/patient_id`."""
    rows = await fetch_all(conn, _COVERAGE_OF, {"id": patient_id})
    return [(id, version, text) for id, version, text in rows]
