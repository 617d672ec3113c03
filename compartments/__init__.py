"""The compartment validator engine: pure policy, no web framework, no database, no clock.

`policy` reads and checks the policy file's rules; the decision logic (issue 4) builds on it.
"""
