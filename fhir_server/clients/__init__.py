"""Outbound HTTP clients of upstream services (the Client Registry)."""
