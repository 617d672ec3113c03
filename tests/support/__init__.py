"""Helpers the tests share: signed tokens, live servers and server processes, scratch databases,
resource builders, the access world (`make_world`) and the plain-Python search reference.

Test modules import from here; `tests/conftest.py` holds only fixtures, built on these helpers.
"""
