"""The access facts of one user, in one statement (DESIGN.md 5): the rows that
compartments/facts.py reads into the engine's identities and facts.

For the user (the token's `fhirUser`), and for a Person, the targets of its links: the Persons,
RelatedPersons, the birth dates of the patients they are related to, those patients' Consents,
the Patients whose general practitioner and the CareTeams whose participant the user is, the
RelatedPersons of the patients concerned (relatives), and the access epoch (services/access/guard.py
compares it to decide whether cached facts still hold). Rows are `(kind, id, extra, content)`.

**The epoch.** The statement is a walk along search-index references from the user. Every node it
reads or passes through (the user, the Persons, every Person link target, the RelatedPersons, the
Patients they relate to, those Patients' Consents, the Patients whose general practitioner and
the CareTeams whose participant a target is, the relatives) is a key of `access_epochs`, and so
is `*`; the last row, `epoch`, gives those keys and the sum of their counters, read in the same
snapshot as the facts. A write changes the walk's result only by changing or deleting a node
(it bumps its own key; an edge removed or changed is the content of its source, which the walk
reached), or by adding an edge the walk follows (`WALKED`: it bumps the edge's local target,
which the walk reached if it could reach the edge). So the sum moves whenever the facts may
have, and writes in another family touch no key of this one (docs/scaling.md "Access epochs"
goes through each branch).
"""

from __future__ import annotations

from typing import Any, Final, TypeAlias

import orjson

from fhir_server.storage.sql import Connection, Statement, fetch_all

# The edges the statement walks: (type, reference search parameter) -> the target types it follows
# (None: any). Only these index rows can change which resources it finds.
WALKED: Final[dict[str, tuple[str, frozenset[str] | None]]] = {
    "Person": ("link", None),
    "RelatedPerson": ("patient", frozenset({"Patient"})),
    "Consent": ("patient", frozenset({"Patient"})),
    "Patient": ("general-practitioner", frozenset({"Practitioner"})),
    "CareTeam": ("participant", frozenset({"Practitioner"})),
}

_FACTS = Statement(
    """
WITH persons AS (
    SELECT r.id, r.content FROM resources r
    WHERE r.resource_type = 'Person' AND NOT r.deleted AND (
        r.id = %(person)s OR r.id IN (
            SELECT x.id FROM search_reference x
            WHERE x.resource_type = 'Person' AND x.code = 'link'
              AND x.target_type = %(user_type)s AND x.target_id = %(user_id)s))
),
targets AS (
    SELECT x.target_type AS type, x.target_id AS id FROM search_reference x
    WHERE x.resource_type = 'Person' AND x.code = 'link' AND x.target_type IS NOT NULL
      AND x.id IN (SELECT id FROM persons)
    UNION SELECT %(user_type)s, %(user_id)s
),
related AS (
    SELECT r.id, r.content FROM resources r
    WHERE r.resource_type = 'RelatedPerson' AND NOT r.deleted
      AND r.id IN (SELECT id FROM targets WHERE type = 'RelatedPerson')
),
facts (kind, id, extra, content) AS (
SELECT 'Person', id, NULL, content::text FROM persons
UNION ALL
SELECT 'RelatedPerson', id, NULL, content::text FROM related
UNION ALL
SELECT 'Patient', p.id, NULL, jsonb_build_object('birthDate', p.content -> 'birthDate')::text
FROM resources p
WHERE p.resource_type = 'Patient' AND NOT p.deleted AND p.id IN (
    SELECT x.target_id FROM search_reference x
    WHERE x.resource_type = 'RelatedPerson' AND x.code = 'patient' AND x.target_type = 'Patient'
      AND x.id IN (SELECT id FROM related))
UNION ALL
SELECT 'Consent', c.id, NULL, c.content::text FROM resources c
WHERE c.resource_type = 'Consent' AND NOT c.deleted AND c.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'Consent' AND x.code = 'patient' AND x.target_type = 'Patient'
      AND x.target_id IN (
        SELECT y.target_id FROM search_reference y
        WHERE y.resource_type = 'RelatedPerson' AND y.code = 'patient'
          AND y.target_type = 'Patient' AND y.id IN (SELECT id FROM related)))
UNION ALL
SELECT 'general-practitioner', x.id, x.target_id, NULL FROM search_reference x
JOIN resources p ON p.resource_type = 'Patient' AND p.id = x.id AND NOT p.deleted
WHERE x.resource_type = 'Patient' AND x.code = 'general-practitioner'
  AND x.target_type = 'Practitioner'
  AND x.target_id IN (SELECT id FROM targets WHERE type = 'Practitioner')
UNION ALL
SELECT 'relative', x.id, x.target_id, NULL FROM search_reference x
JOIN resources r ON r.resource_type = 'RelatedPerson' AND r.id = x.id AND NOT r.deleted
WHERE x.resource_type = 'RelatedPerson' AND x.code = 'patient' AND x.target_type = 'Patient'
  AND x.target_id IN (
    SELECT id FROM targets WHERE type = 'Patient'
    UNION
    SELECT y.target_id FROM search_reference y
    WHERE y.resource_type = 'RelatedPerson' AND y.code = 'patient' AND y.target_type = 'Patient'
      AND y.id IN (SELECT id FROM related))
UNION ALL
SELECT 'CareTeam', c.id, NULL, c.content::text FROM resources c
WHERE c.resource_type = 'CareTeam' AND NOT c.deleted AND c.id IN (
    SELECT x.id FROM search_reference x
    WHERE x.resource_type = 'CareTeam' AND x.code = 'participant'
      AND x.target_type = 'Practitioner'
      AND x.target_id IN (SELECT id FROM targets WHERE type = 'Practitioner'))
),
keys (key) AS (
    SELECT '*'
    UNION SELECT type || '/' || id FROM targets
    UNION SELECT kind || '/' || id FROM facts
    WHERE kind IN ('Person', 'RelatedPerson', 'Patient', 'Consent', 'CareTeam')
    UNION SELECT 'Patient/' || id FROM facts WHERE kind = 'general-practitioner'
    UNION SELECT 'RelatedPerson/' || id FROM facts WHERE kind = 'relative'
    UNION SELECT 'Patient/' || extra FROM facts WHERE kind = 'relative'
)
SELECT kind, id, extra, content FROM facts
UNION ALL
SELECT 'epoch', NULL,
    (SELECT coalesce(sum(e.value), 0) FROM access_epochs e WHERE e.key IN (SELECT key FROM keys))::text,
    (SELECT json_build_object('keys', json_agg(key))::text FROM keys)
"""
)


# (kind, id, extra, content), the content's JSON parsed (compartments/facts.py's FactRow)
FactRow: TypeAlias = tuple[str, str | None, str | None, dict[str, Any] | None]


async def fetch_access_facts(conn: Connection, user: str) -> list[FactRow]:
    """The access-facts rows of `user` ("Patient/1", "Person/4", ...), their JSON parsed."""
    user_type, user_id = user.split("/", 1)
    rows = await fetch_all(
        conn,
        _FACTS,
        {
            "person": user_id if user_type == "Person" else None,
            "user_type": user_type,
            "user_id": user_id,
        },
    )
    return [
        (kind, id, extra, orjson.loads(text) if text is not None else None)
        for kind, id, extra, text in rows
    ]
