"""The compiler: a parsed expression and the type model in, closures out; the public entry points."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fhir_server.search.fhirpath.base import (
    Accessor,
    FhirPathUnsupported,
    RelativeAccessor,
    Resource,
    _Fn,
    _Pred,
)
from fhir_server.search.fhirpath.model import (
    _ABSTRACT_RESOURCES,
    _NOT_DOMAIN_RESOURCES,
    _RESOURCE_TYPES,
    PRIMITIVE_TYPES,
    _Model,
    _model,
)
from fhir_server.search.fhirpath.parser import (
    _Binary,
    _Call,
    _Ident,
    _Index,
    _Literal,
    _Member,
    _Node,
    _parse,
    _TypeOp,
    _Unary,
    _Var,
)
from fhir_server.search.fhirpath.references import reference_type
from fhir_server.search.fhirpath.runtime import (
    _as_boolean,
    _boxed,
    _empty_fn,
    _equal,
    _identity_fn,
    _logic,
    _merge_choices,
    _Op,
    _OpApply,
    _OpFilter,
    _OpIndex,
    _OpMember,
    _OpResourceType,
    _OpRoot,
    _Path,
    _union_fn,
)

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
