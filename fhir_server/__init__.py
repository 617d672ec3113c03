"""FHIR R4 server on PostgreSQL with compartment-based access control."""
