"""AuditEvent records of access decisions (DESIGN.md 5.6)."""
