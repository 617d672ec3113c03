"""Who may do what: the caller's guard, its facts, and the checks every interaction runs (DESIGN.md 5)."""
