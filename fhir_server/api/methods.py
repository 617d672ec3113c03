"""The methods a path supports, read from the application's route table, the one place that says
what the server answers.

- `HEAD` works wherever `GET` does (RFC 9110 9.3.2): `head_where_get` adds it to every route that
  takes `GET`, once every route is installed (Starlette's own routes do so; FastAPI's do not).
- A `405` lists every method the path supports (RFC 9110 15.5.6 `Allow`, a MUST): `allowed` is
  the union of the methods of every route whose path matches, not only those of the first route
  that matched in part (Starlette's `Allow`). A route whose path values name nothing it serves
  (a `{type}` that is no resource type: `metadata`, `_history`) answers 404 to every method, so
  it is left out: a route says so by a `serves(path_params)` method.
"""

from __future__ import annotations

from collections.abc import Iterable

from starlette.routing import BaseRoute, Match
from starlette.types import Scope

# The order `Allow` lists methods in (any other a route takes follows, sorted).
ORDER = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")


def head_where_get(routes: Iterable[BaseRoute]) -> None:
    """Every route that takes `GET` takes `HEAD` too (its answer without the body: the server,
    uvicorn, sends none for `HEAD`)."""
    for route in routes:
        methods: set[str] | None = getattr(route, "methods", None)
        if methods and "GET" in methods:
            methods.add("HEAD")


def allowed(routes: Iterable[BaseRoute], scope: Scope, *, refused: str | None = None) -> list[str]:
    """The methods the routes take at the request's path, in `ORDER`; `refused`: a method a
    route took but refused for this request (a domain 405), left out (`GET` and `HEAD` together)."""
    probe = {**scope, "path_params": {}}  # the route's own values only, none of a partial match
    methods: set[str] = set()
    for route in routes:
        taken: set[str] | None = getattr(route, "methods", None)
        if not taken:
            continue  # mounts and WebSockets: they answer their methods themselves
        match, child = route.matches(probe)
        if match is Match.NONE:
            continue
        serves = getattr(route, "serves", None)
        if serves is not None and not serves(child.get("path_params", {})):
            continue
        methods |= taken
    if refused in ("GET", "HEAD"):
        methods -= {"GET", "HEAD"}  # one is the other without its body
    elif refused is not None:
        methods.discard(refused)
    return [m for m in ORDER if m in methods] + sorted(methods.difference(ORDER))
