"""What the server does in the caller's name, without HTTP: access (the Guard and its checks),
interactions (one module per FHIR interaction), workflows built on them, and the FHIR JSON
formats they share (docs/architecture.md)."""
