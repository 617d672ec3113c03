"""Compile the FHIRPath subset of the R4 SearchParameters into plain Python accessors.

Interpreting FHIRPath per write costs about 30 µs per expression (fhirpathpy, DESIGN.md section 7),
which is more than the whole per-resource indexing budget. The R4 SearchParameter expressions use a
small subset of the language, so each expression is compiled once, at start, into closures that walk
the resource's JSON (dicts and lists) directly.

Supported: paths (``Observation.code.coding``), ``|`` unions, ``.where(criteria)``, ``as T``,
``.as(T)``, ``.ofType(T)``, ``[n]``, ``first()``, ``exists([criteria])``, ``empty()``, ``not()``,
``extension('url')``, ``=``/``!=`` against collections and literals, ``and``/``or``/``xor``/
``implies``, ``$this`` and ``%resource``, and ``resolve() is T`` as a reference-type test. Anything
else raises :class:`FhirPathUnsupported` when the expression is compiled, never a wrong answer
later.

Compilation is type-directed by the official R4 JSON Schema, so that FHIR choice elements work:
``Observation.effective`` reads ``effectiveDateTime``, ``effectivePeriod``, ``effectiveInstant``
and ``effectiveTiming``, and ``Observation.value as Quantity`` reads only ``valueQuantity``.
``as``/``ofType`` accept subtypes as FHIRPath says (``as Quantity`` also reads ``valueAge``;
``as uri`` also reads ``sourceCanonical``), as fhirpathpy and the FHIR type hierarchy do.

Decisions where this differs from a full FHIRPath engine, and why:

- ``resolve()`` never loads anything: ``x.resolve() is T`` is true when the Reference (or canonical)
  ``x`` names a resource of type ``T``: relative ``T/id``, absolute ``http://host/fhir/T/id``,
  versioned ``T/id/_history/v``. ``#id`` looks the type up among the resource's ``contained``
  resources. ``urn:uuid:``/``urn:oid:`` references, conditional references and identifier-only
  references have no type to test, so the test is false for them: a server rewrites transaction
  ``urn:uuid:`` references to ``T/id`` before it stores (and indexes) a resource.
- A System type name in a type test means the FHIR primitive of that name (``as DateTime`` is
  ``as dateTime``): the R4 composite ``Observation-code-value-date`` uses ``value.as(DateTime)`` and
  means ``valueDateTime``; a strict engine would select nothing there.
- ``X as T`` on a collection of several items filters like ``ofType`` instead of failing: R4
  expressions such as ``Observation.component.value as Quantity`` rely on it.
- A union does not remove duplicate values: the search index stores sets anyway, and comparing
  whole JSON objects for equality on every write is cost without benefit.
- Where FHIRPath would signal an error at run time (a boolean operator given several items), the
  accessor returns an empty collection: a stored resource must always be indexable.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from functools import cache
from typing import Any, Final

from capability.definitions import json_schema, resource_types
from compartments import references

Resource = Mapping[str, Any]
Accessor = Callable[[Resource], list[Any]]
"""A compiled expression: the resource in, the JSON values it selects out."""
RelativeAccessor = Callable[[Any, Resource], list[Any]]
"""A compiled expression evaluated on one element (``$this``) of a resource (``%resource``)."""

_Fn = Callable[[list[Any], Resource], list[Any]]
_Pred = Callable[[Any, Resource], bool]


class FhirPathUnsupported(ValueError):
    """An expression outside the compiled subset, or one that can never select anything."""


# --------------------------------------------------------------------------------------------
# FHIR type facts the JSON Schema does not state.

PRIMITIVE_TYPES: Final = frozenset(
    {
        "base64Binary", "boolean", "canonical", "code", "date", "dateTime", "decimal", "id",
        "instant", "integer", "markdown", "oid", "positiveInt", "string", "time", "unsignedInt",
        "uri", "url", "uuid", "xhtml",
    }
)  # fmt: skip

# Specializations by the R4 StructureDefinitions' baseDefinition, so `as`/`ofType` accept subtypes.
_SUBTYPES: Final[Mapping[str, frozenset[str]]] = {
    "Quantity": frozenset(
        {"Age", "Count", "Distance", "Duration", "MoneyQuantity", "SimpleQuantity"}
    ),
    "string": frozenset({"code", "id", "markdown"}),
    "uri": frozenset({"canonical", "oid", "url", "uuid"}),
    "integer": frozenset({"positiveInt", "unsignedInt"}),
}

_SYSTEM_TYPES: Final[Mapping[str, str]] = {
    "Boolean": "boolean",
    "String": "string",
    "Integer": "integer",
    "Decimal": "decimal",
    "Date": "date",
    "DateTime": "dateTime",
    "Time": "time",
    "Quantity": "Quantity",
}

# The JSON Schema has no definitions for the abstract Resource and DomainResource.
_RESOURCE_ELEMENTS: Final[Mapping[str, str]] = {
    "id": "id",
    "meta": "Meta",
    "implicitRules": "uri",
    "language": "code",
}
_DOMAIN_RESOURCE_ELEMENTS: Final[Mapping[str, str]] = {
    **_RESOURCE_ELEMENTS,
    "text": "Narrative",
    "contained": "Resource",
    "extension": "Extension",
    "modifierExtension": "Extension",
}
_NOT_DOMAIN_RESOURCES: Final = frozenset({"Binary", "Bundle", "Parameters"})
_ABSTRACT_RESOURCES: Final = frozenset({"Resource", "DomainResource"})

_RESOURCE_TYPES: Final = resource_types()


# --------------------------------------------------------------------------------------------
# References: read as compartments/references.py reads them for the whole server (the access
# facts too), here for R4 resource types; parameters.reference_targets and the index use it, so
# resolve(), indexing and access agree.


def split_reference(reference: str) -> tuple[str, str, str] | None:
    """``(base, type, id)`` of a literal reference to an R4 resource, or None
    (`compartments.references.split_reference`)."""
    return references.split_reference(reference, _RESOURCE_TYPES)


def reference_type(reference: str, resource: Resource | None = None) -> str | None:
    """The resource type a literal reference names, looking ``#id`` up in ``resource.contained``."""
    if reference[:1] == "#":
        if resource is None:
            return None
        if reference == "#":
            container_type = resource.get("resourceType")
            return container_type if isinstance(container_type, str) else None
        local_id = reference[1:]
        contained = resource.get("contained")
        if isinstance(contained, list):
            for item in contained:
                if isinstance(item, dict) and item.get("id") == local_id:
                    found = item.get("resourceType")
                    return found if isinstance(found, str) else None
        return None
    parsed = split_reference(reference)
    return None if parsed is None else parsed[1]


# --------------------------------------------------------------------------------------------
# Tokens and syntax tree.

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
class _Token:
    kind: str
    text: str
    start: int
    end: int


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


# --------------------------------------------------------------------------------------------
# The type model, read from the JSON Schema.


@dataclass(frozen=True, slots=True)
class _Element:
    key: str  # the JSON property: `effectiveDateTime` for the choice alternative of `effective`
    type: str  # a FHIR type name; "Resource" where any resource may appear


class _Model:
    def __init__(self, definitions: Mapping[str, Any]) -> None:
        self.definitions = definitions
        self.memo: dict[tuple[str, str], tuple[_Element, ...]] = {}

    def is_type(self, name: str) -> bool:
        return (
            name in PRIMITIVE_TYPES
            or name in _ABSTRACT_RESOURCES
            or name in _RESOURCE_TYPES
            or "properties" in self.definitions.get(name, {})
        )

    def elements(self, owner: str, name: str) -> tuple[_Element, ...]:
        """The JSON properties that FHIRPath `owner.name` reads: one, or one per choice type."""
        key = (owner, name)
        found = self.memo.get(key)
        if found is None:
            found = self.memo[key] = self._elements(owner, name)
        return found

    def _elements(self, owner: str, name: str) -> tuple[_Element, ...]:
        if owner in _ABSTRACT_RESOURCES:
            table = _RESOURCE_ELEMENTS if owner == "Resource" else _DOMAIN_RESOURCE_ELEMENTS
            return (_Element(name, table[name]),) if name in table else ()
        if owner in PRIMITIVE_TYPES:
            raise FhirPathUnsupported(
                f"`{name}` of the primitive type `{owner}` (primitive extensions) is not supported"
            )
        properties: Mapping[str, Any] = self.definitions.get(owner, {}).get("properties", {})
        if not properties:
            raise FhirPathUnsupported(f"unknown type `{owner}`")
        if name in properties and name != "resourceType":
            return (_Element(name, self._declared_type(properties[name])),)
        alternatives: list[_Element] = []
        for key, prop in properties.items():
            if len(key) <= len(name) or not key.startswith(name) or not key[len(name)].isupper():
                continue
            suffix = key[len(name) :]
            choice_type = suffix if suffix in self.definitions else suffix[0].lower() + suffix[1:]
            if not self.is_type(choice_type):
                continue
            declared = self._declared_type(prop)
            # An inline schema (pattern only) is how the schema spells some primitive alternatives;
            # a $ref that disagrees with the suffix means `key` is an ordinary element.
            if declared and declared != choice_type:
                continue
            alternatives.append(_Element(key, choice_type))
        return tuple(alternatives)

    @staticmethod
    def _declared_type(prop: Mapping[str, Any]) -> str:
        items: Mapping[str, Any] = prop.get("items", {})
        ref = prop.get("$ref") or items.get("$ref")
        if isinstance(ref, str):
            name = ref.rsplit("/", 1)[-1]
            return "Resource" if name == "ResourceList" else name
        if "enum" in prop or "enum" in items:
            return "code"
        return ""

    def is_subtype(self, actual: str, wanted: str) -> bool:
        if actual == wanted or actual in _SUBTYPES.get(wanted, ()):
            return True
        if actual in _RESOURCE_TYPES:
            return wanted == "Resource" or (
                wanted == "DomainResource" and actual not in _NOT_DOMAIN_RESOURCES
            )
        return actual == "DomainResource" and wanted == "Resource"

    def resolve_type_name(self, spec: str, expression: str) -> str:
        qualifier, _, name = spec.rpartition(".")
        if qualifier == "System" or (not qualifier and not self.is_type(name)):
            mapped = _SYSTEM_TYPES.get(name)
            if mapped is None:
                raise FhirPathUnsupported(f"unknown type `{spec}` in `{expression}`")
            return mapped
        if not self.is_type(name):
            raise FhirPathUnsupported(f"unknown type `{spec}` in `{expression}`")
        return name


@cache
def _model() -> _Model:
    return _Model(json_schema()["definitions"])


# --------------------------------------------------------------------------------------------
# Runtime operations, fused into closures.


@dataclass(frozen=True, slots=True)
class _OpResourceType:
    """Keep the items that are resources of the type (FHIRPath `Observation` at a path's start)."""

    name: str


@dataclass(frozen=True, slots=True)
class _OpMember:
    name: str  # the FHIRPath name: `effective`
    keys: tuple[str, ...]  # its JSON properties: several for the alternatives of a choice element


@dataclass(frozen=True, slots=True)
class _OpFilter:
    pred: _Pred


@dataclass(frozen=True, slots=True)
class _OpIndex:
    index: int


@dataclass(frozen=True, slots=True)
class _OpRoot:
    """Replace the collection by the resource itself (%resource)."""


@dataclass(frozen=True, slots=True)
class _OpApply:
    fn: _Fn


_Op = _OpResourceType | _OpMember | _OpFilter | _OpIndex | _OpRoot | _OpApply


@dataclass(frozen=True, slots=True)
class _Path:
    """A typed navigation from the context collection; a compiled expression is a list of them."""

    ops: tuple[_Op, ...]
    type: str  # "" when not statically known


def _members_fn(chain: tuple[tuple[str, ...], ...]) -> _Fn:
    # The fast loop trusts the schema (every node is a dict); a resource that breaks it, which
    # validation should have refused, falls back to the careful loop instead of failing to index.
    def careful(nodes: list[Any]) -> list[Any]:
        for keys in chain:
            out: list[Any] = []
            for node in nodes:
                if not isinstance(node, dict):
                    continue
                for key in keys:
                    value = node.get(key)
                    if isinstance(value, list):
                        out.extend(v for v in value if v is not None)
                    elif value is not None:
                        out.append(value)
            nodes = out
        return nodes

    if all(len(keys) == 1 for keys in chain):
        flat = tuple(keys[0] for keys in chain)

        if len(flat) == 1:
            only = flat[0]

            def one(nodes: list[Any], root: Resource) -> list[Any]:
                out: list[Any] = []
                try:
                    for node in nodes:
                        value = node.get(only)
                        if value is None:
                            continue
                        if value.__class__ is list:
                            out.extend(value)
                        else:
                            out.append(value)
                except AttributeError:
                    return careful(nodes)
                if None in out:
                    return [v for v in out if v is not None]
                return out

            return one

        def walk(nodes: list[Any], root: Resource) -> list[Any]:
            start = nodes
            try:
                for key in flat:
                    out: list[Any] = []
                    for node in nodes:
                        value = node.get(key)
                        if value is None:
                            continue
                        if value.__class__ is list:
                            out.extend(value)
                        else:
                            out.append(value)
                    if not out:
                        return out
                    nodes = out
            except AttributeError:
                return careful(start)
            if None in nodes:
                return [v for v in nodes if v is not None]
            return nodes

        return walk

    def walk_choices(nodes: list[Any], root: Resource) -> list[Any]:
        start = nodes
        try:
            for keys in chain:
                out: list[Any] = []
                for node in nodes:
                    for key in keys:
                        value = node.get(key)
                        if value is None:
                            continue
                        if value.__class__ is list:
                            out.extend(value)
                        else:
                            out.append(value)
                if not out:
                    return out
                nodes = out
        except AttributeError:
            return careful(start)
        if None in nodes:
            return [v for v in nodes if v is not None]
        return nodes

    return walk_choices


def _resource_type_fn(name: str) -> _Fn:
    if name == "Resource":

        def any_resource(nodes: list[Any], root: Resource) -> list[Any]:
            return [n for n in nodes if isinstance(n, dict) and "resourceType" in n]

        return any_resource
    if name == "DomainResource":

        def domain_resource(nodes: list[Any], root: Resource) -> list[Any]:
            return [
                n
                for n in nodes
                if isinstance(n, dict)
                and n.get("resourceType", "Binary") not in _NOT_DOMAIN_RESOURCES
            ]

        return domain_resource

    def of_type(nodes: list[Any], root: Resource) -> list[Any]:
        if len(nodes) == 1:  # the usual case: the resource itself
            node = nodes[0]
            return nodes if node.__class__ is dict and node.get("resourceType") == name else []
        return [n for n in nodes if isinstance(n, dict) and n.get("resourceType") == name]

    return of_type


def _filter_fn(pred: _Pred) -> _Fn:
    def where(nodes: list[Any], root: Resource) -> list[Any]:
        return [n for n in nodes if pred(n, root)]

    return where


def _index_fn(index: int) -> _Fn:
    def at(nodes: list[Any], root: Resource) -> list[Any]:
        return [nodes[index]] if index < len(nodes) else []

    return at


def _root_fn(nodes: list[Any], root: Resource) -> list[Any]:
    return [root]


def _identity_fn(nodes: list[Any], root: Resource) -> list[Any]:
    return nodes


def _chain(fns: Sequence[_Fn]) -> _Fn:
    if not fns:
        return _identity_fn
    if len(fns) == 1:
        return fns[0]
    if len(fns) == 2:
        first, second = fns

        def two(nodes: list[Any], root: Resource) -> list[Any]:
            return second(first(nodes, root), root)

        return two
    steps = tuple(fns)

    def many(nodes: list[Any], root: Resource) -> list[Any]:
        for step in steps:
            nodes = step(nodes, root)
        return nodes

    return many


def _fuse(ops: tuple[_Op, ...]) -> _Fn:
    fns: list[_Fn] = []
    chain: list[tuple[str, ...]] = []
    for op in ops:
        if isinstance(op, _OpMember):
            chain.append(op.keys)
            continue
        if chain:
            fns.append(_members_fn(tuple(chain)))
            chain = []
        if isinstance(op, _OpResourceType):
            fns.append(_resource_type_fn(op.name))
        elif isinstance(op, _OpFilter):
            fns.append(_filter_fn(op.pred))
        elif isinstance(op, _OpIndex):
            fns.append(_index_fn(op.index))
        elif isinstance(op, _OpRoot):
            fns.append(_root_fn)
        else:
            fns.append(op.fn)
    if chain:
        fns.append(_members_fn(tuple(chain)))
    return _chain(fns)


def _merge_choices(paths: Sequence[_Path]) -> list[_Path]:
    """Join paths that differ only in their last member (choice alternatives) into one walk."""
    merged: list[_Path] = []
    for path in paths:
        if path in merged:
            continue  # the same navigation reached from two context types
        last = merged[-1] if merged else None
        if (
            last is not None
            and last.ops
            and path.ops
            and isinstance(last.ops[-1], _OpMember)
            and isinstance(path.ops[-1], _OpMember)
            and last.ops[-1].name == path.ops[-1].name
            and last.ops[:-1] == path.ops[:-1]
        ):
            # At most one alternative of a choice is present in an element, so one walk over all
            # of them keeps FHIRPath's order.
            name, keys = last.ops[-1].name, last.ops[-1].keys
            keys += tuple(k for k in path.ops[-1].keys if k not in keys)
            same_type = last.type if last.type == path.type else ""
            merged[-1] = _Path((*last.ops[:-1], _OpMember(name, keys)), same_type)
            continue
        merged.append(path)
    return merged


def _union_fn(paths: Sequence[_Path]) -> _Fn:
    fns = tuple(_fuse(p.ops) for p in _merge_choices(paths))
    if not fns:
        return _empty_fn
    if len(fns) == 1:
        return fns[0]

    def union(nodes: list[Any], root: Resource) -> list[Any]:
        out: list[Any] = []
        for fn in fns:
            out += fn(nodes, root)
        return out

    return union


def _empty_fn(nodes: list[Any], root: Resource) -> list[Any]:
    return []


# --------------------------------------------------------------------------------------------
# FHIRPath values: singleton evaluation, equality, three-valued logic.


def _as_boolean(values: list[Any]) -> bool | None:
    """FHIRPath singleton evaluation of a collection as a Boolean; None is the empty collection."""
    if len(values) != 1:
        return None  # empty, or several items (an error in FHIRPath)
    value = values[0]
    return value if value.__class__ is bool else True


def _item_equal(a: Any, b: Any) -> bool:
    # Python says True == 1; FHIRPath says a Boolean never equals an Integer.
    if (a.__class__ is bool) != (b.__class__ is bool):
        return False
    return bool(a == b)


def _equal(left: list[Any], right: list[Any]) -> bool | None:
    if not left or not right:
        return None
    if len(left) != len(right):
        return False
    return all(_item_equal(a, b) for a, b in zip(left, right, strict=True))


def _logic(op: str, left: bool | None, right: bool | None) -> bool | None:
    if op == "and":
        if left is False or right is False:
            return False
        return True if left is True and right is True else None
    if op == "or":
        if left is True or right is True:
            return True
        return False if left is False and right is False else None
    if op == "xor":
        return None if left is None or right is None else left != right
    # implies
    if left is False:
        return True
    if left is True:
        return right
    return True if right is True else None


def _boxed(value: bool | None) -> list[Any]:
    return [] if value is None else [value]


# --------------------------------------------------------------------------------------------
# The compiler.


class _Compiler:
    def __init__(self, model: _Model, expression: str, resource_type: str | None) -> None:
        self.model = model
        self.expression = expression
        self.resource_type = resource_type

    def fail(self, what: str) -> FhirPathUnsupported:
        return FhirPathUnsupported(f"{what} in `{self.expression}`")

    def source(self, node: _Node) -> str:
        return self.expression[node.start : node.end]

    def compile(self, node: _Node, context: tuple[str, ...]) -> list[_Path]:
        if isinstance(node, _Ident):
            return self.identifier(node.name, context)
        if isinstance(node, _Member):
            return self.member(self.compile(node.target, context), node.name)
        if isinstance(node, _Var):
            return self.variable(node.name, context)
        if isinstance(node, _Literal):
            return [self.literal(node.value)]
        if isinstance(node, _TypeOp):
            if node.op == "as":
                return self.narrow(self.compile(node.operand, context), node.type_name)
            return [self.is_type(node, context)]
        if isinstance(node, _Call):
            return self.call(node, context)
        if isinstance(node, _Index):
            index = node.index.value if isinstance(node.index, _Literal) else None
            if not isinstance(index, int) or isinstance(index, bool):
                raise self.fail(
                    f"only integer literal indexes are supported: `{self.source(node)}`"
                )
            return [self.collapse(self.compile(node.target, context), _OpIndex(index))]
        if isinstance(node, _Binary):
            if node.op == "|":
                return self.compile(node.left, context) + self.compile(node.right, context)
            return [self.binary(node, context)]
        raise self.fail(f"`{self.source(node)}` is not supported")

    def identifier(self, name: str, context: tuple[str, ...]) -> list[_Path]:
        if name in _RESOURCE_TYPES or name in _ABSTRACT_RESOURCES:
            return [_Path((_OpResourceType(name),), name)]
        if not context:
            raise self.fail(f"`{name}` needs a context type")
        return self.member([_Path((), t) for t in context], name)

    def member(self, paths: list[_Path], name: str) -> list[_Path]:
        out: list[_Path] = []
        for path in paths:
            if not path.type:
                raise self.fail(f"`{name}` of a value whose type is not known statically")
            for element in self.model.elements(path.type, name):
                out.append(_Path((*path.ops, _OpMember(name, (element.key,))), element.type))
        if not out:
            owners = ", ".join(sorted({p.type for p in paths}))
            raise self.fail(f"unknown element `{name}` of `{owners}`")
        return out

    def variable(self, name: str, context: tuple[str, ...]) -> list[_Path]:
        if name == "$this":
            if not context:
                raise self.fail("`$this` needs a context type")
            return [_Path((), t) for t in context]
        if name == "resource":
            if self.resource_type is None:
                raise self.fail("`%resource` needs a resource type")
            return [_Path((_OpRoot(),), self.resource_type)]
        raise self.fail(f"the variable `%{name}` is not supported")

    def literal(self, value: str | bool | int | float | None) -> _Path:
        if value is None:
            return _Path((_OpApply(_empty_fn),), "")
        constant = [value]

        def const(nodes: list[Any], root: Resource) -> list[Any]:
            return list(constant)

        kind = {bool: "boolean", int: "integer", float: "decimal", str: "string"}[type(value)]
        return _Path((_OpApply(const),), kind)

    def narrow(self, paths: list[_Path], spec: str) -> list[_Path]:
        wanted = self.model.resolve_type_name(spec, self.expression)
        out: list[_Path] = []
        for path in paths:
            if not path.type:
                raise self.fail(f"type test `{spec}` on a value whose type is not known statically")
            if self.model.is_subtype(path.type, wanted):
                out.append(path)
            elif path.type in _ABSTRACT_RESOURCES and self.model.is_subtype(wanted, path.type):
                out.append(_Path((*path.ops, _OpResourceType(wanted)), wanted))
        if not out:
            found = ", ".join(sorted({p.type for p in paths}))
            raise self.fail(f"`{spec}` never matches the types `{found}`")
        return out

    def collapse(self, paths: list[_Path], *then: _Op) -> _Path:
        """One path for operations on the whole collection (indexes, functions, operators)."""
        if len(paths) == 1:
            return _Path((*paths[0].ops, *then), paths[0].type)
        types = {p.type for p in paths}
        common = types.pop() if len(types) == 1 else ""
        return _Path((_OpApply(_union_fn(paths)), *then), common)

    def is_type(self, node: _TypeOp, context: tuple[str, ...]) -> _Path:
        operand = node.operand
        if not (isinstance(operand, _Call) and operand.name == "resolve" and not operand.args):
            raise self.fail(f"`is` is only supported as `resolve() is T`: `{self.source(node)}`")
        if operand.target is None or (
            isinstance(operand.target, _Var) and operand.target.name == "$this"
        ):
            target: _Fn = _identity_fn
            item_types = context
        else:
            paths = self.compile(operand.target, context)
            target = _union_fn(paths)
            item_types = tuple(p.type for p in paths)
        test = _reference_test(self.resource_type_argument(node.type_name), item_types)

        def resolves_to(nodes: list[Any], root: Resource) -> list[Any]:
            items = target(nodes, root)
            if len(items) != 1:
                return []  # `is` takes one item; several is an error in FHIRPath
            return [test(items[0], root)]

        return _Path((_OpApply(resolves_to),), "boolean")

    def resource_type_argument(self, spec: str) -> str:
        wanted = self.model.resolve_type_name(spec, self.expression)
        if wanted not in _RESOURCE_TYPES and wanted not in _ABSTRACT_RESOURCES:
            raise self.fail(f"`{spec}` is not a resource type")
        return wanted

    def call(self, node: _Call, context: tuple[str, ...]) -> list[_Path]:
        name, args = node.name, node.args
        if node.target is None:
            if not context:
                raise self.fail(f"`{name}()` needs a context type")
            target = [_Path((), t) for t in context]
        else:
            target = self.compile(node.target, context)
        arity = {"where": 1, "as": 1, "ofType": 1, "extension": 1, "first": 0, "empty": 0, "not": 0}
        if name in arity and len(args) != arity[name]:
            raise self.fail(f"`{name}()` takes {arity[name]} argument(s): `{self.source(node)}`")
        if name == "where":
            return [
                _Path((*p.ops, _OpFilter(self.predicate(args[0], p.type))), p.type) for p in target
            ]
        if name in ("as", "ofType"):
            return self.narrow(target, self.type_argument(args[0]))
        if name == "first":
            return [self.collapse(target, _OpIndex(0))]
        if name == "extension":
            return self.extension(target, args[0])
        if name in ("exists", "empty"):
            if len(args) > 1:
                raise self.fail(f"`{name}()` takes at most one argument: `{self.source(node)}`")
            if args:
                target = [
                    _Path((*p.ops, _OpFilter(self.predicate(args[0], p.type))), p.type)
                    for p in target
                ]
            fn = _union_fn(target)
            exists = name == "exists"

            def test_exists(nodes: list[Any], root: Resource) -> list[Any]:
                return [bool(fn(nodes, root)) is exists]

            return [_Path((_OpApply(test_exists),), "boolean")]
        if name == "not":
            fn = _union_fn(target)

            def negate(nodes: list[Any], root: Resource) -> list[Any]:
                value = _as_boolean(fn(nodes, root))
                return [] if value is None else [not value]

            return [_Path((_OpApply(negate),), "boolean")]
        if name == "resolve":
            raise self.fail("`resolve()` is only supported as `resolve() is T`")
        raise self.fail(f"the function `{name}()` is not supported")

    def type_argument(self, node: _Node) -> str:
        if isinstance(node, _Ident):
            return node.name
        if (
            isinstance(node, _Member)
            and isinstance(node.target, _Ident)
            and node.target.name in ("FHIR", "System")
        ):
            return f"{node.target.name}.{node.name}"
        raise self.fail(f"expected a type name, found `{self.source(node)}`")

    def extension(self, target: list[_Path], url_node: _Node) -> list[_Path]:
        if not isinstance(url_node, _Literal) or not isinstance(url_node.value, str):
            raise self.fail("`extension()` takes a string literal url")
        url = url_node.value

        def has_url(item: Any, root: Resource) -> bool:
            return isinstance(item, dict) and item.get("url") == url

        return [
            _Path((*p.ops, _OpFilter(has_url)), p.type) for p in self.member(target, "extension")
        ]

    def binary(self, node: _Binary, context: tuple[str, ...]) -> _Path:
        op = node.op
        if op not in ("=", "!=", "and", "or", "xor", "implies"):
            raise self.fail(f"the operator `{op}` is not supported")
        left_fn = _union_fn(self.compile(node.left, context))
        right_fn = _union_fn(self.compile(node.right, context))
        if op in ("=", "!="):
            negated = op == "!="

            def compare(nodes: list[Any], root: Resource) -> list[Any]:
                equal = _equal(left_fn(nodes, root), right_fn(nodes, root))
                return [] if equal is None else [equal is not negated]

            return _Path((_OpApply(compare),), "boolean")

        def logic(nodes: list[Any], root: Resource) -> list[Any]:
            left_value = _as_boolean(left_fn(nodes, root))
            right_value = _as_boolean(right_fn(nodes, root))
            return _boxed(_logic(op, left_value, right_value))

        return _Path((_OpApply(logic),), "boolean")

    def predicate(self, node: _Node, item_type: str) -> _Pred:
        """Compile a `where` criteria, evaluated with one item of `item_type` as `$this`."""
        context = (item_type,) if item_type else ()
        if (
            isinstance(node, _TypeOp)
            and node.op == "is"
            and isinstance(node.operand, _Call)
            and node.operand.name == "resolve"
            and node.operand.target is None
            and not node.operand.args
        ):
            # the item is one Reference: test it directly instead of through a collection
            return _reference_test(self.resource_type_argument(node.type_name), context)
        fast = self.fast_equality(node, context)
        if fast is not None:
            return fast
        fn = _union_fn(self.compile(node, context))

        def criteria(item: Any, root: Resource) -> bool:
            return _as_boolean(fn([item], root)) is True

        return criteria

    def fast_equality(self, node: _Node, context: tuple[str, ...]) -> _Pred | None:
        """`where(system='email')`: one dict lookup instead of the general collection compare."""
        if not (
            isinstance(node, _Binary)
            and node.op == "="
            and isinstance(node.left, _Ident)
            and isinstance(node.right, _Literal)
            and isinstance(node.right.value, str)
        ):
            return None
        paths = _merge_choices(self.compile(node.left, context))
        if len(paths) != 1 or len(paths[0].ops) != 1:
            return None
        op = paths[0].ops[0]
        if not isinstance(op, _OpMember) or len(op.keys) != 1:
            return None
        key, literal = op.keys[0], node.right.value

        def equals(item: Any, root: Resource) -> bool:
            if item.__class__ is not dict:
                return False
            value = item.get(key)
            if value.__class__ is list:
                value = value[0] if len(value) == 1 else None
            return value.__class__ is str and value == literal

        return equals


def _reference_test(wanted: str, item_types: Sequence[str]) -> _Pred:
    """``resolve() is wanted`` on one item whose static type is one of ``item_types``."""
    # A Reference is a dict and a canonical/uri a string; the static type says which to expect, so
    # a string where the schema has a Reference (invalid data) is not taken for a canonical.
    dicts = any(t not in PRIMITIVE_TYPES for t in item_types) or not item_types
    strings = any(t in PRIMITIVE_TYPES or not t for t in item_types) or not item_types

    def accepts(found: str) -> bool:
        if wanted == "Resource":
            return True
        if wanted == "DomainResource":
            return found not in _NOT_DOMAIN_RESOURCES
        return found == wanted

    def test(item: Any, root: Resource) -> bool:
        if item.__class__ is dict and dicts:
            reference = item.get("reference")
        elif item.__class__ is str and strings:
            reference = item
        else:
            return False
        if reference.__class__ is not str or not reference:
            return False
        found = reference_type(reference, root)
        return found is not None and accepts(found)

    return test


# --------------------------------------------------------------------------------------------
# Public entry points.


def compile_expression(expression: str, *, context_type: str | None = None) -> Accessor:
    """Compile ``expression`` into ``(resource) -> list`` of the JSON values it selects.

    ``context_type`` (a resource type) lets the expression start with an element name instead of a
    type (``name`` rather than ``Patient.name``). Raises :class:`FhirPathUnsupported` for anything
    outside the supported subset.
    """
    node = _parse(expression)
    compiler = _Compiler(_model(), expression, context_type)
    context = (context_type,) if context_type else ()
    fn = _union_fn(compiler.compile(node, context))

    def accessor(resource: Resource) -> list[Any]:
        return fn([resource], resource)

    return accessor


def compile_relative(
    expression: str, *, context_types: Sequence[str], resource_type: str
) -> RelativeAccessor:
    """Compile ``expression`` evaluated on one element: a composite SearchParameter's component.

    ``context_types`` are the FHIR types the element may have (``Observation`` and
    ``Observation_Component`` for ``Observation | Observation.component``, in the JSON Schema's
    naming of backbone elements); ``%resource`` is the resource of type ``resource_type``.
    """
    node = _parse(expression)
    compiler = _Compiler(_model(), expression, resource_type)
    fn = _union_fn(compiler.compile(node, tuple(context_types)))

    def accessor(element: Any, resource: Resource) -> list[Any]:
        return fn([element], resource)

    return accessor


def result_types(expression: str, *, context_types: Sequence[str] = ()) -> tuple[str, ...]:
    """The FHIR types an expression selects, statically (``""`` where not known), in order."""
    node = _parse(expression)
    compiler = _Compiler(_model(), expression, None)
    seen: dict[str, None] = {}
    for path in compiler.compile(node, tuple(context_types)):
        seen.setdefault(path.type, None)
    return tuple(seen)


def union_parts(expression: str) -> list[str]:
    """The top-level ``|`` operands of ``expression``, as source text."""
    node = _parse(expression)
    parts: list[_Node] = []

    def flatten(n: _Node) -> None:
        if isinstance(n, _Binary) and n.op == "|":
            flatten(n.left)
            flatten(n.right)
        else:
            parts.append(n)

    flatten(node)
    return [expression[p.start : p.end] for p in parts]


def root_type(expression: str) -> str | None:
    """The type an expression starts from (``Observation`` for ``(Observation.value as X)``)."""
    node: _Node | None = _parse(expression)
    while node is not None:
        if isinstance(node, _Ident):
            name = node.name
            return name if name in _RESOURCE_TYPES or name in _ABSTRACT_RESOURCES else None
        if isinstance(node, _Member | _Index | _Call):
            node = node.target
        elif isinstance(node, _TypeOp | _Unary):
            node = node.operand
        elif isinstance(node, _Binary):
            node = node.left
        else:
            return None
    return None


def restrict_expression(expression: str, resource_type: str) -> str | None:
    """The part of a shared expression that applies to ``resource_type``, or None if none does.

    ``Patient.name | Practitioner.name`` restricted to ``Patient`` is ``Patient.name``; parts that
    start from ``Resource`` (or ``DomainResource``, for domain resources) apply to every type, and
    parts that start from an element name (R4's ``InsurancePlan-name`` is ``name | alias``) are
    relative to the resource, so they apply too.
    """
    kept: list[str] = []
    for part in union_parts(expression):
        start = root_type(part)
        if (
            start is None
            or start == resource_type
            or start == "Resource"
            or (start == "DomainResource" and resource_type not in _NOT_DOMAIN_RESOURCES)
        ):
            kept.append(part)
    return " | ".join(kept) if kept else None
