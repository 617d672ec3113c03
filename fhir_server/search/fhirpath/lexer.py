"""FHIRPath tokens: the lexer and the unescaping of quoted text."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

from fhir_server.search.fhirpath.base import FhirPathUnsupported

_TOKEN = re.compile(
    r"""
     (?P<ws>\s+|//[^\n]*|/\*.*?\*/)
    |(?P<string>'(?:[^'\\]|\\.)*')
    |(?P<delimited>`(?:[^`\\]|\\.)*`)
    |(?P<date>@[0-9T:.+\-Z]*)
    |(?P<number>[0-9]+(?:\.[0-9]+)?)
    |(?P<var>%(?:[A-Za-z_][A-Za-z0-9_]*|`(?:[^`\\]|\\.)*`|'(?:[^'\\]|\\.)*'))
    |(?P<special>\$(?:this|index|total))
    |(?P<ident>[A-Za-z_][A-Za-z0-9_]*)
    |(?P<op><=|>=|!=|!~|[.()\[\],|=<>~+\-*/&{}])
    """,
    re.VERBOSE | re.DOTALL,
)

_ESCAPES: Final[Mapping[str, str]] = {
    "'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n", "r": "\r", "t": "\t",
}  # fmt: skip


@dataclass(frozen=True, slots=True)
class _Token:
    kind: str
    text: str
    start: int
    end: int


def _unescape(body: str, expression: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(body):
        ch = body[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        nxt = body[i + 1 : i + 2]
        if nxt == "u" and re.fullmatch(r"[0-9A-Fa-f]{4}", body[i + 2 : i + 6]):
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif nxt in _ESCAPES:
            out.append(_ESCAPES[nxt])
            i += 2
        else:
            raise FhirPathUnsupported(f"bad escape `\\{nxt}` in `{expression}`")
    return "".join(out)


def _tokenize(expression: str) -> list[_Token]:
    tokens: list[_Token] = []
    pos = 0
    while pos < len(expression):
        match = _TOKEN.match(expression, pos)
        if match is None:
            raise FhirPathUnsupported(
                f"unexpected character `{expression[pos]}` at {pos} in `{expression}`"
            )
        kind = match.lastgroup or ""
        if kind != "ws":
            tokens.append(_Token(kind, match.group(), match.start(), match.end()))
        pos = match.end()
    return tokens
