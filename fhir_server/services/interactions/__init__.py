"""One module per FHIR interaction (create, read, update, patch, delete, history, search, batch/transaction) and what they share."""
