"""`make fuzz`: seeded, bounded fuzzing of a real server (docs/fuzz.md).

`schemas` cuts finite R4 JSON Schemas for hypothesis-jsonschema, `strategies` generates hostile
requests, `case` holds one request as data, `runner` sends, judges, shrinks and reports,
`deploy` starts a throw-away embedded PostgreSQL and `fhir-server serve`.
"""
