"""FastAPI routers and dependencies: the only layer that knows HTTP."""
