"""What a write changed, for the audit trail: the JSON Patch (RFC 6902) operations that turn the
old representation into the new one, without their values. The paths say which fields changed;
the values, which are PHI, stay in the resource history where access control guards them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

# Bookkeeping that changes on every write and says nothing about what the writer changed.
BOOKKEEPING = frozenset({"versionId", "lastUpdated"})
# A change touching more paths is told with shorter paths (AuditEvent details stay small).
MAX_OPERATIONS = 50


def _pointer(path: str, key: str | int) -> str:
    return f"{path}/{str(key).replace('~', '~0').replace('/', '~1')}"


def _walk(before: Any, after: Any, path: str, out: list[dict[str, str]]) -> None:
    if before == after:
        return
    if isinstance(before, Mapping) and isinstance(after, Mapping):
        for key in before:
            if key not in after:
                out.append({"op": "remove", "path": _pointer(path, key)})
        for key, value in after.items():
            if key in before:
                _walk(before[key], value, _pointer(path, key), out)
            else:
                out.append({"op": "add", "path": _pointer(path, key)})
        return
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        for i, (old, new) in enumerate(zip(before, after, strict=True)):
            _walk(old, new, _pointer(path, i), out)
        return
    out.append({"op": "replace", "path": path})


def diff(before: Mapping[str, Any] | None, after: Mapping[str, Any] | None) -> list[dict[str, str]]:
    """The value-less JSON Patch from `before` to `after`. None before: a creation, told as the
    fields added; None after: a deletion, the removal of the whole document (`""`)."""
    if after is None:
        return [] if before is None else [{"op": "remove", "path": ""}]
    if before is None:
        return [
            {"op": "add", "path": _pointer("", key)}
            for key in after
            if key not in {"resourceType", "id", "meta"}
        ]
    out: list[dict[str, str]] = []
    _walk(_written(before), _written(after), "", out)
    return out


def _written(document: Mapping[str, Any]) -> Mapping[str, Any]:
    """The document without the server's bookkeeping: a client that sends no `meta` changes
    nothing of it."""
    meta = document.get("meta")
    if not isinstance(meta, Mapping) or not BOOKKEEPING.intersection(meta):
        return document
    rest = {k: v for k, v in meta.items() if k not in BOOKKEEPING}
    return {k: v for k, v in document.items() if k != "meta"} | ({"meta": rest} if rest else {})


def encode(operations: list[dict[str, str]]) -> str:
    """The operations as the AuditEvent keeps them (JSON). More than MAX_OPERATIONS are told
    coarser: each path cut to fewer segments (a replaced `/name/0`, not each of its parts)."""
    depth = max((o["path"].count("/") for o in operations), default=0)
    while len(operations) > MAX_OPERATIONS and depth > 1:
        depth -= 1
        coarser: dict[str, str] = {}
        for o in operations:
            segments = o["path"].split("/")
            if len(segments) > depth + 1:
                coarser["/".join(segments[: depth + 1])] = "replace"
            else:
                coarser.setdefault(o["path"], o["op"])
        operations = [{"op": op, "path": path} for path, op in coarser.items()]
    return orjson.dumps(operations).decode()
