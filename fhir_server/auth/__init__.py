"""Authentication: bearer tokens (SMART on FHIR), scopes, and the local development key."""
