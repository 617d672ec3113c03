"""One fuzz request as data: what to send, as whom, and how to show it to a person.

A body is kept as a JSON document plus *raw* splices (placeholders replaced by text that Python's
JSON encoder cannot write: numbers beyond a float, 100,000 nested brackets, invalid UTF-8), so the
shrinker can cut the document and the reproducer can still say exactly which bytes went out.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import quote

# Marks a string in a document that is replaced by `Case.raws[n]` when the body is written.
RAW = "\x00raw:"


def raw_marker(n: int) -> str:
    return f"{RAW}{n}\x00"


@dataclass(frozen=True)
class Body:
    """A request body: a JSON document with raw splices, or opaque bytes."""

    doc: Any = None
    raws: tuple[str, ...] = ()
    # "ascii": every non-ASCII character escaped (lone surrogates become `\\ud800`);
    # "utf8": written as UTF-8, lone surrogates as the bytes a lenient encoder would make.
    encoding: str = "ascii"
    opaque: bytes | None = None

    def render(self) -> bytes:
        if self.opaque is not None:
            return self.opaque
        text = json.dumps(self.doc, ensure_ascii=self.encoding == "ascii", separators=(",", ":"))
        for n, raw in enumerate(self.raws):
            marker = json.dumps(raw_marker(n), ensure_ascii=self.encoding == "ascii")
            text = text.replace(marker, raw)
        return text.encode("utf-8", "surrogatepass")


@dataclass(frozen=True)
class Case:
    """One request. `query` holds decoded pairs (percent-encoded when sent, lone surrogates as
    the UTF-8 bytes they would have); `raw_query` is sent as it is."""

    kind: str
    method: str
    path: str
    role: str = "System"
    query: tuple[tuple[str, str], ...] = ()
    raw_query: str | None = None
    headers: tuple[tuple[str, str], ...] = ()
    body: Body | None = None
    # For hostile HTTP at the socket: "truncate", "slow", "disconnect", "garbage".
    transport: str | None = None
    note: str = ""
    extra: dict[str, Any] = field(default_factory=dict, compare=False)

    def query_string(self) -> str:
        if self.raw_query is not None:
            return self.raw_query
        return "&".join(f"{_quote(k)}={_quote(v)}" for k, v in self.query)

    def target(self) -> str:
        qs = self.query_string()
        return f"{self.path}?{qs}" if qs else self.path

    def body_bytes(self) -> bytes | None:
        return None if self.body is None else self.body.render()

    def with_query(self, query: tuple[tuple[str, str], ...]) -> Case:
        return replace(self, query=query)


def _quote(text: str) -> str:
    return quote(text.encode("utf-8", "surrogatepass"), safe=":|,$*")


# A run of one short unit repeated this many times or more is written as `unit * n`.
_RUN = re.compile(r"(.{1,8}?)\1{15,}", re.DOTALL)


def compact(data: bytes | str, limit: int = 600) -> str:
    """`data` as a Python expression with long repetitions folded (`b'[' * 5000`)."""
    text = data.decode("latin-1") if isinstance(data, bytes) else data

    def show(part: str) -> str:
        return repr(part.encode("latin-1")) if isinstance(data, bytes) else repr(part)

    parts: list[str] = []
    pos = 0
    for match in _RUN.finditer(text):
        if match.start() > pos:
            parts.append(show(text[pos : match.start()]))
        unit = match.group(1)
        parts.append(f"{show(unit)} * {len(match.group(0)) // len(unit)}")
        pos = match.end()
    if pos < len(text):
        parts.append(show(text[pos:]))
    shown = " + ".join(parts) if parts else show("")
    if len(shown) > limit:
        shown = (
            shown[:limit]
            + f" ... ({len(data)} {'bytes' if isinstance(data, bytes) else 'characters'} in all)"
        )
    return shown


def reproducer(case: Case, base: str) -> str:
    """A few lines a person can paste into Python (with `token(role)` from the test helpers)."""
    lines = [f"# {case.kind}: {case.note}" if case.note else f"# {case.kind}"]
    if case.transport:
        lines.append(f"# at the socket: {case.transport}")
    headers = dict(case.headers)
    auth = "" if case.role == "Anonymous" else f"Authorization: Bearer <token as {case.role}>"
    target = case.target()
    if len(target) > 200:
        lines.append(f"{case.method} {base!r} + {compact(target, limit=2_000)}")
    else:
        lines.append(f"{case.method} {base}{target}")
    if auth:
        lines.append(f"  {auth}")
    lines.extend(f"  {k}: {v[:200]!r}" for k, v in headers.items())
    data = case.body_bytes()
    if data is not None:
        lines.append(f"  body = {compact(data)}")
    return "\n".join(lines)
