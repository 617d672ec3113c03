"""The server's own pages (sign-in, picker, approval, account): handlers and Jinja2 templates.
They call services exactly as api/ does, never storage or SQL (DESIGN.md 2.1)."""
