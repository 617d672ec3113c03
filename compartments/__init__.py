"""The compartment validator engine: pure policy and decisions, no web framework, no database,
no clock (the time is a fact like any other).

`policy` reads and checks the policy file's rules; `engine.decide` turns a request and the
caller's facts into a Decision with its reason and evidence; `facts` reads those facts out of
stored resources, `consent` reads R4 Consents, `periods` reads periods as instants, `references`
reads literal references against this server's base URLs, and `ids` holds the R4 id.
"""
