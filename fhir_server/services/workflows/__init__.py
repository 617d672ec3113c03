"""The workflows built on the interactions: family, relationships, the Patient Service API, explain-access, reindex."""
