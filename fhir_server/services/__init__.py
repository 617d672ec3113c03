"""One module per FHIR interaction and per workflow: load facts, validate, call storage."""
