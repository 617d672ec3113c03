"""What a compiled expression runs: navigation operations fused into closures, and FHIRPath's
singleton evaluation, equality and three-valued logic."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhir_server.search.fhirpath.base import Resource, _Fn, _Pred
from fhir_server.search.fhirpath.model import _NOT_DOMAIN_RESOURCES

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
