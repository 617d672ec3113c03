"""What the server supports: resource types, interactions, search parameters, operations.

A leaf package: it may use the standard library and its own data files, nothing of the
service. It holds the HL7 R4 definition files (``data/``) and builds the CapabilityStatement.
"""
