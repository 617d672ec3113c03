"""The FHIRPath syntax tree and its Pratt parser."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Final

from fhir_server.search.fhirpath.base import FhirPathUnsupported
from fhir_server.search.fhirpath.lexer import _Token, _tokenize, _unescape

# Binding power of the infix operators, from the FHIRPath N1 precedence table (higher binds
# tighter).
_INFIX: Final[Mapping[str, int]] = {
    "implies": 1,
    "or": 2,
    "xor": 2,
    "and": 3,
    "in": 4,
    "contains": 4,
    "=": 5,
    "~": 5,
    "!=": 5,
    "!~": 5,
    "<": 6,
    ">": 6,
    "<=": 6,
    ">=": 6,
    "|": 7,
    "is": 8,
    "as": 8,
    "+": 9,
    "-": 9,
    "&": 9,
    "*": 10,
    "/": 10,
    "div": 10,
    "mod": 10,
}
_WORD_OPERATORS: Final = frozenset(k for k in _INFIX if k.isalpha())


@dataclass(frozen=True, slots=True)
class _Node:
    start: int
    end: int


@dataclass(frozen=True, slots=True)
class _Literal(_Node):
    value: str | bool | int | float | None  # None is the empty collection `{}`


@dataclass(frozen=True, slots=True)
class _Ident(_Node):
    name: str


@dataclass(frozen=True, slots=True)
class _Var(_Node):
    name: str


@dataclass(frozen=True, slots=True)
class _Member(_Node):
    target: _Node
    name: str


@dataclass(frozen=True, slots=True)
class _Call(_Node):
    target: _Node | None
    name: str
    args: tuple[_Node, ...]


@dataclass(frozen=True, slots=True)
class _Index(_Node):
    target: _Node
    index: _Node


@dataclass(frozen=True, slots=True)
class _Binary(_Node):
    op: str
    left: _Node
    right: _Node


@dataclass(frozen=True, slots=True)
class _TypeOp(_Node):
    op: str
    operand: _Node
    type_name: str


@dataclass(frozen=True, slots=True)
class _Unary(_Node):
    op: str
    operand: _Node


class _Parser:
    """A Pratt parser for FHIRPath: it parses more than the compiler supports, to name what is not."""

    def __init__(self, expression: str) -> None:
        self.expression = expression
        self.tokens = _tokenize(expression)
        self.pos = 0

    def fail(self, what: str) -> FhirPathUnsupported:
        return FhirPathUnsupported(f"{what} in `{self.expression}`")

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def take(self) -> _Token:
        token = self.peek()
        if token is None:
            raise self.fail("unexpected end")
        self.pos += 1
        return token

    def expect(self, text: str) -> _Token:
        token = self.take()
        if token.text != text or token.kind not in ("op", "ident"):
            raise self.fail(f"expected `{text}` at {token.start}, found `{token.text}`")
        return token

    def parse(self) -> _Node:
        if not self.tokens:
            raise self.fail("empty expression")
        node = self.expr(0)
        token = self.peek()
        if token is not None:
            raise self.fail(f"unexpected `{token.text}` at {token.start}")
        return node

    def expr(self, min_power: int) -> _Node:
        left = self.unary()
        while True:
            token = self.peek()
            if token is None or token.kind not in ("op", "ident"):
                return left
            op = token.text
            if token.kind == "ident" and op not in _WORD_OPERATORS:
                return left
            power = _INFIX.get(op)
            if power is None or power < min_power:
                return left
            self.pos += 1
            if op in ("is", "as"):
                type_name, end = self.type_specifier()
                left = _TypeOp(left.start, end, op, left, type_name)
            else:
                right = self.expr(power + 1)
                left = _Binary(left.start, right.end, op, left, right)

    def type_specifier(self) -> tuple[str, int]:
        token = self.take()
        if token.kind not in ("ident", "delimited"):
            raise self.fail(f"expected a type name at {token.start}")
        name, end = self.identifier(token), token.end
        nxt = self.peek()
        if name in ("FHIR", "System") and nxt is not None and nxt.text == ".":
            self.pos += 1
            qualified = self.take()
            name, end = f"{name}.{self.identifier(qualified)}", qualified.end
        return name, end

    def identifier(self, token: _Token) -> str:
        if token.kind == "delimited":
            return _unescape(token.text[1:-1], self.expression)
        if token.kind != "ident":
            raise self.fail(f"expected a name at {token.start}, found `{token.text}`")
        return token.text

    def unary(self) -> _Node:
        token = self.peek()
        if token is not None and token.kind == "op" and token.text in ("+", "-"):
            self.pos += 1
            operand = self.unary()
            return _Unary(token.start, operand.end, token.text, operand)
        return self.postfix(self.term())

    def postfix(self, node: _Node) -> _Node:
        while True:
            token = self.peek()
            if token is None or token.kind != "op" or token.text not in (".", "["):
                return node
            self.pos += 1
            if token.text == "[":
                index = self.expr(0)
                close = self.expect("]")
                node = _Index(node.start, close.end, node, index)
                continue
            name_token = self.take()
            name = self.identifier(name_token)
            if self.at("("):
                args, end = self.arguments()
                node = _Call(node.start, end, node, name, args)
            else:
                node = _Member(node.start, name_token.end, node, name)

    def at(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == text

    def arguments(self) -> tuple[tuple[_Node, ...], int]:
        self.expect("(")
        args: list[_Node] = []
        if not self.at(")"):
            args.append(self.expr(0))
            while self.at(","):
                self.pos += 1
                args.append(self.expr(0))
        close = self.expect(")")
        return tuple(args), close.end

    def term(self) -> _Node:
        token = self.take()
        kind, text = token.kind, token.text
        if kind == "string":
            return _Literal(token.start, token.end, _unescape(text[1:-1], self.expression))
        if kind == "number":
            value: int | float = float(text) if "." in text else int(text)
            nxt = self.peek()
            if nxt is not None and (
                nxt.kind == "string" or (nxt.kind == "ident" and nxt.text not in _WORD_OPERATORS)
            ):
                raise self.fail(f"quantity literals are not supported (at {token.start})")
            return _Literal(token.start, token.end, value)
        if kind == "date":
            raise self.fail(f"date/time literals are not supported (at {token.start})")
        if kind == "var":
            name = text[1:]
            if name[:1] in ("`", "'"):
                name = _unescape(name[1:-1], self.expression)
            return _Var(token.start, token.end, name)
        if kind == "special":
            return _Var(token.start, token.end, text)
        if kind == "op" and text == "(":
            inner = self.expr(0)
            close = self.expect(")")
            return replace(inner, start=token.start, end=close.end)
        if kind == "op" and text == "{":
            close = self.expect("}")
            return _Literal(token.start, close.end, None)
        if kind in ("ident", "delimited"):
            if kind == "ident" and text in ("true", "false"):
                return _Literal(token.start, token.end, text == "true")
            name = self.identifier(token)
            if kind == "ident" and self.at("("):
                args, end = self.arguments()
                return _Call(token.start, end, None, name, args)
            return _Ident(token.start, token.end, name)
        raise self.fail(f"unexpected `{text}` at {token.start}")


def _parse(expression: str) -> _Node:
    return _Parser(expression).parse()
