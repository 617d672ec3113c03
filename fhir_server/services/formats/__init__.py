"""FHIR JSON shapes the services build or read: Bundles, OperationOutcomes, Parameters, input limits."""
