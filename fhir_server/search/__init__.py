"""FHIR search: compiled SearchParameter expressions, index values and compartment membership."""
