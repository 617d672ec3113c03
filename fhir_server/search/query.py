"""Search URLs, parsed: which parameters, modifiers, prefixes and result parameters a query asks for.

Pure: no database. The planner (``fhir_server/storage/search_sql.py``) turns a ``SearchQuery`` into
SQL. Anything the server cannot do exactly is refused here with a 400 naming it, unless the client
asked for ``Prefer: handling=lenient``, in which case it is dropped (and left out of the self link).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

from capability.definitions import compartment_definition, resource_types
from fhir_server.errors import BadRequest
from fhir_server.search.index import date_range, number_range
from fhir_server.search.parameters import SearchParam, search_params

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_PREFIXED_TYPES = frozenset({"number", "date", "quantity"})
# Modifiers each parameter type supports here (a subset of what R4 defines; the others get 400).
SUPPORTED_MODIFIERS: Mapping[str, frozenset[str]] = {
    "string": frozenset({"missing", "exact", "contains"}),
    "token": frozenset({"missing", "not", "text"}),
    "date": frozenset({"missing"}),
    "reference": frozenset({"missing", "identifier"}),  # plus `:[type]`
    "number": frozenset({"missing"}),
    "quantity": frozenset({"missing"}),
    "uri": frozenset({"missing", "below", "above"}),
}
SUPPORTED_TYPES = frozenset(SUPPORTED_MODIFIERS)
# `_id` and `_lastUpdated` are columns of the resource row, not index rows (search/index.py
# NOT_INDEXED, the same codes): the modifiers that mean something for a value every resource has. `:missing=true`
# matches nothing, `:missing=false` everything; `_id:not` every other resource.
ROW_MODIFIERS: Mapping[str, frozenset[str]] = {
    "_id": frozenset({"missing", "not"}),
    "_lastUpdated": frozenset({"missing"}),
}
# Result parameters, and those only the server writes into links.
RESULT_PARAMETERS = frozenset(
    {
        "_count",
        "_sort",
        "_total",
        "_summary",
        "_elements",
        "_include",
        "_revinclude",
        "_format",
        "_pretty",
        "_page",
    }
)
# AuditEvents live in a table of their own (storage/tables.py `audit_events`, docs/scaling.md "The
# audit stream"), searched by columns rather than the generic index: these parameters, with these
# modifiers (None: none; `[type]`: a reference's target type), and these sort keys. Anything else
# about AuditEvent (other parameters, chains, `_has:AuditEvent`, `_include`/`_revinclude` of
# AuditEvent) is refused like any unsupported search, or dropped with `Prefer: handling=lenient`.
AUDIT_EVENT = "AuditEvent"
AUDIT_EVENT_SEARCH: Mapping[str, frozenset[str | None]] = {
    "patient": frozenset({None, "[type]"}),
    "agent": frozenset({None, "[type]"}),
    "entity": frozenset({None, "[type]"}),
    "date": frozenset({None}),
    "type": frozenset({None}),
    "subtype": frozenset({None}),
    "action": frozenset({None}),
    "outcome": frozenset({None}),
    "policy": frozenset({None}),
    "_tag": frozenset({None}),
}
AUDIT_EVENT_SORT = frozenset({"date", "_lastUpdated", "_id"})
SUMMARY_MODES = frozenset({"true", "false", "count", "data", "text"})
TOTAL_MODES = frozenset({"none", "estimate", "accurate"})
MAX_CHAIN_DEPTH = 3
MAX_INCLUDE_DEPTH = 3
MAX_VALUES = 1000  # OR-ed values in one parameter, and parameters in one query

# What maintained clients send in the names of other servers, as R4 spells it (docs/search.md,
# "Aliases"): fhirpy's `count()` sends Aidbox's `_totalMethod`.
TOTAL_METHODS = {"count": "accurate", "estimate": "estimate", "none": "none"}
# fhirclient's `$gt`, `$lt`, `$gte`, `$lte` operators are DSTU1's comparison prefixes.
_OPERATORS = ((">=", "ge"), ("<=", "le"), (">", "gt"), ("<", "lt"))
_UNESCAPED_COMMA = re.compile(r"(?<!\\),")
_PREFIX = re.compile(rf"^({'|'.join(PREFIXES)})(?=[-+0-9.])")


@dataclass(frozen=True, slots=True)
class Criterion:
    """One parameter of the query: the values are OR-ed; criteria of a query are AND-ed."""

    resource_type: str
    param: SearchParam
    modifier: str | None = None
    values: tuple[str, ...] = ()
    # A chained reference (`subject:Patient.name=x`): the target types and, for each, the
    # criterion on the target.
    chain: tuple[Criterion, ...] = ()
    # `_has:Observation:patient:code=x`: a resource of `has_type` refers to this one by its
    # reference parameter `param` and satisfies `chain[0]`.
    has_type: str | None = None
    # A composite parameter: alternatives (OR), each the AND of one criterion per component.
    parts: tuple[tuple[Criterion, ...], ...] = ()

    @property
    def name(self) -> str:
        return self.param.code if self.modifier is None else f"{self.param.code}:{self.modifier}"


@dataclass(frozen=True, slots=True)
class SortKey:
    param: SearchParam
    descending: bool


@dataclass(frozen=True, slots=True)
class Include:
    """`_include=Source:param[:Target]` or `_revinclude=...`, optionally `:iterate`."""

    source_type: str  # `*` for `_include=*`
    param: SearchParam | None  # None for `*`
    target_type: str | None
    iterate: bool
    reverse: bool


@dataclass(frozen=True, slots=True)
class SearchQuery:
    resource_types: tuple[str, ...]
    criteria: tuple[Criterion, ...] = ()
    ids: tuple[tuple[str, ...], ...] = ()  # `_id`: each tuple OR-ed, tuples AND-ed
    last_updated: tuple[tuple[str, ...], ...] = ()
    compartment: str | None = None  # "Patient/123" for a compartment search
    count: int = 20
    sort: tuple[SortKey, ...] = ()
    total: str = "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    includes: tuple[Include, ...] = ()
    cursor: str | None = None
    # The parameters as understood, in order, for the self and next links.
    echo: tuple[tuple[str, str], ...] = field(default=())


def split_values(text: str) -> tuple[str, ...]:
    """OR-ed values: split at unescaped commas, then `\\,` is a comma."""
    return tuple(v.replace("\\,", ",") for v in _UNESCAPED_COMMA.split(text))


def split_prefix(value: str) -> tuple[str, str]:
    match = _PREFIX.match(value)
    if match:
        return match.group(1), value[2:]
    if value[:1] in {">", "<"}:
        for symbol, prefix in _OPERATORS:
            if value.startswith(symbol):
                return prefix, value[len(symbol) :]
    return "eq", value


def client_alias(name: str, value: str) -> tuple[str, str]:
    """A parameter as a maintained client sends it in another server's (or an older FHIR
    version's) spelling, as R4 spells it; any other parameter as it is."""
    if name[:1] not in {"_", "i"}:
        return name, value
    if name == "_totalMethod":
        total = TOTAL_METHODS.get(value)
        if total is None:
            raise BadRequest(
                f"`_totalMethod={value}`: use count, estimate or none", expression=[name]
            )
        return "_total", total
    if name == "_sort:asc":  # fhirclient's `$asc` (DSTU2)
        return "_sort", value
    if name == "_sort:desc":  # fhirclient's `$desc`
        return "_sort", ",".join(v if v.startswith("-") else f"-{v}" for v in value.split(","))
    if name in {"_include:recursive", "_revinclude:recursive"}:  # fhirpy's `recursive=True`
        return name.replace(":recursive", ":iterate"), value
    if name == "id":  # fhirclient's `resource.search()`; R4 defines no parameter `id`
        return "_id", value
    return name, value


def split_unescaped(value: str, separator: str) -> list[str]:
    """`a|b` into parts at unescaped separators, unescaping `\\|`, `\\$` and `\\\\`."""
    parts, current, i = [], [], 0
    while i < len(value):
        char = value[i]
        if char == "\\" and i + 1 < len(value):
            current.append(value[i + 1])
            i += 2
            continue
        if char == separator:
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return parts


@cache
def compartment_types(compartment: str) -> Mapping[str, tuple[str, ...]]:
    """For a compartment type (`Patient`), each member resource type and the parameters that
    put a resource of that type in the compartment."""
    definition = compartment_definition(compartment)
    return {
        entry["code"]: tuple(entry["param"])
        for entry in definition.get("resource", [])
        if entry.get("param")
    }


@dataclass(slots=True)
class _Options:
    count: int
    total: str = "none"
    summary: str | None = None
    elements: tuple[str, ...] = ()
    cursor: str | None = None


class _Parser:
    def __init__(
        self,
        types: tuple[str, ...],
        *,
        strict: bool,
        default_count: int,
        max_count: int,
        max_parameters: int = MAX_VALUES,
    ):
        self.types = types
        self.max_parameters = max_parameters
        self.values_seen = 0
        self.strict = strict
        self.default_count = default_count
        self.max_count = max_count

    def refuse(self, message: str, name: str) -> None:
        if self.strict:
            raise BadRequest(
                message,
                code="not-supported" if "support" in message else "invalid",
                expression=[name],
            )

    def parse(self, params: Iterable[tuple[str, str]]) -> SearchQuery:
        criteria: list[Criterion] = []
        ids: list[tuple[str, ...]] = []
        last_updated: list[tuple[str, ...]] = []
        echo: list[tuple[str, str]] = []
        options = _Options(count=self.default_count)
        includes: list[Include] = []
        sort: tuple[SortKey, ...] = ()
        seen = 0
        for given, raw in params:
            name, value = client_alias(given, raw)
            seen += 1
            if "\x00" in name or "\x00" in value:
                raise BadRequest(
                    f"search parameter `{name[:50]!r}` holds a NUL character", code="value"
                )
            if seen > self.max_parameters:
                raise BadRequest(
                    f"a search takes at most {self.max_parameters} parameters", code="too-costly"
                )
            if name in RESULT_PARAMETERS or name.split(":")[0] in {"_include", "_revinclude"}:
                kept = self.result_parameter(name, value, options, includes)
                if name == "_sort":
                    sort = self.sort(value)
                if kept:
                    echo.append((name, value))
                continue
            if name == "_id":
                ids.append(split_values(value))
                if "" in ids[-1]:  # as every other parameter (`criterion`)
                    raise BadRequest(
                        f"`{name}` has an empty value", code="value", expression=[name]
                    )
                echo.append((name, value))
                continue
            if name == "_lastUpdated":
                last_updated.append(split_values(value))
                self.check_dates(name, last_updated[-1])
                echo.append((name, value))
                continue
            criterion = self.criterion(self.types, name, value, depth=0)
            if criterion is not None:
                criteria.append(criterion)
                echo.append((name, value))
        return SearchQuery(
            resource_types=self.types,
            criteria=tuple(criteria),
            ids=tuple(ids),
            last_updated=tuple(last_updated),
            count=options.count,
            sort=sort,
            total=options.total,
            summary=options.summary,
            elements=options.elements,
            includes=tuple(includes),
            cursor=options.cursor,
            echo=tuple(echo),
        )

    def result_parameter(
        self, name: str, value: str, options: _Options, includes: list[Include]
    ) -> bool:
        if name in {"_format", "_pretty"}:
            return False
        if name == "_page":
            options.cursor = value
            return False
        if name == "_count":
            if not value.isdigit() or len(value) > 9:
                raise BadRequest(f"`_count={value}` is not a whole number", expression=[name])
            options.count = min(int(value), self.max_count)
            return True
        if name == "_total":
            if value not in TOTAL_MODES:
                raise BadRequest(
                    f"`_total={value}`: use none, estimate or accurate", expression=[name]
                )
            options.total = value
            return True
        if name == "_summary":
            if value not in SUMMARY_MODES:
                raise BadRequest(
                    f"`_summary={value}`: use true, false, count, data or text", expression=[name]
                )
            options.summary = None if value == "false" else value
            return True
        if name == "_elements":
            elements = tuple(e.strip() for e in value.split(",") if e.strip())
            excluded = [e for e in elements if e.startswith("-")]
            if excluded and len(excluded) != len(elements):
                raise BadRequest(
                    f"`_elements={value}` mixes elements to keep and (`-`) to leave out",
                    expression=[name],
                )
            options.elements = elements
            return True
        if name == "_sort":
            return True
        include = self.include(name, value)
        if include is None:
            return False
        includes.append(include)
        return True

    def include(self, name: str, value: str) -> Include | None:
        reverse = name.split(":")[0] == "_revinclude"
        parts = value.split(":")
        iterate = False
        if name.endswith(":iterate") or name.endswith(":recurse"):
            iterate = True
            name = name.rsplit(":", 1)[0]
        if value == "*":
            if self.types == (AUDIT_EVENT,):
                self.refuse(f"`{name}=*`: AuditEvents are not supported in `{name}`", name)
                return None
            if reverse:
                self.refuse("`_revinclude=*` is not supported", name)
                return None
            return Include("*", None, None, iterate, reverse)
        if len(parts) not in (2, 3):
            raise BadRequest(
                f"`{name}={value}` must be `Type:parameter` or `Type:parameter:TargetType`",
                expression=[name],
            )
        source, code = parts[0], parts[1]
        target = parts[2] if len(parts) == 3 else None
        if AUDIT_EVENT in {source, target} or (not reverse and self.types == (AUDIT_EVENT,)):
            self.refuse(f"`{name}={value}`: AuditEvents are not supported in `{name}`", name)
            return None
        if source not in resource_types():
            raise BadRequest(
                f"`{name}={value}`: `{source}` is not a resource type", expression=[name]
            )
        param = search_params(source).get(code)
        if param is None or param.type != "reference":
            raise BadRequest(
                f"`{name}={value}`: `{code}` is not a reference parameter of `{source}`",
                expression=[name],
            )
        if target is not None and target not in param.targets:
            raise BadRequest(
                f"`{name}={value}`: `{code}` cannot refer to a `{target}`", expression=[name]
            )
        if not reverse and not iterate and source not in self.types:
            raise BadRequest(
                f"`{name}={value}`: the search is for `{','.join(self.types)}`, not `{source}`",
                expression=[name],
            )
        return Include(source, param, target, iterate, reverse)

    def sort(self, value: str) -> tuple[SortKey, ...]:
        keys = []
        for part in value.split(","):
            descending = part.startswith("-")
            code = part[1:] if descending else part
            param = self.common_param(code, "_sort")
            if param is None:
                continue
            if self.types == (AUDIT_EVENT,) and code not in AUDIT_EVENT_SORT:
                self.refuse(f"sorting AuditEvents by `{code}` is not supported", "_sort")
                continue
            if param.type not in {
                "string",
                "token",
                "date",
                "number",
                "quantity",
                "uri",
                "reference",
            } and code not in {"_id", "_lastUpdated"}:
                self.refuse(f"sorting by `{code}` is not supported", "_sort")
                continue
            keys.append(SortKey(param, descending))
        return tuple(keys)

    def common_param(self, code: str, name: str) -> SearchParam | None:
        found = [search_params(t).get(code) for t in self.types]
        if any(p is None for p in found):
            self.refuse(f"unknown search parameter `{code}` for `{','.join(self.types)}`", name)
            return None
        first = found[0]
        assert first is not None
        return first

    def check_dates(self, name: str, values: tuple[str, ...]) -> None:
        for value in values:
            _prefix, text = split_prefix(value)
            if date_range(text) is None:
                raise BadRequest(
                    f"`{name}={value}`: `{text}` is not a FHIR date",
                    code="value",
                    expression=[name],
                )

    def criterion(
        self, types: tuple[str, ...], name: str, value: str, *, depth: int
    ) -> Criterion | None:
        if name.startswith("_has:"):
            return self.has(types, name, value, depth=depth)
        head, dot, rest = name.partition(".")
        code, _, modifier = head.partition(":")
        resource_type = types[0]
        param = search_params(resource_type).get(code)
        if param is None:
            self.refuse(f"unknown search parameter `{code}` for `{resource_type}`", name)
            return None
        if len(types) > 1 and any(
            (other := search_params(t).get(code)) is None or other.url != param.url
            for t in types[1:]
        ):
            self.refuse(
                f"`{name}`: a search over several types takes only parameters they all share "
                "(_id, _lastUpdated, _tag, _profile, _security, _source)",
                name,
            )
            return None
        if resource_type == AUDIT_EVENT and not self.audit_event_criterion(
            param, modifier or None, dot, name, depth
        ):
            return None
        if param.type == "composite" and not dot and not modifier and is_simple_composite(param):
            return self.composite(resource_type, param, value, name)
        row_parameter = code in ROW_MODIFIERS
        if not row_parameter and (param.type not in SUPPORTED_TYPES or param.accessor is None):
            self.refuse(f"search parameter `{code}` ({param.type}) is not supported", name)
            return None
        if dot:
            return self.chain(resource_type, param, modifier or None, rest, value, name, depth)
        if modifier:
            if param.type == "reference" and modifier in param.targets:
                pass
            elif modifier not in (
                ROW_MODIFIERS[code] if row_parameter else SUPPORTED_MODIFIERS[param.type]
            ):
                self.refuse(
                    f"modifier `:{modifier}` is not supported for `{code}` ({param.type})", name
                )
                return None
        values = split_values(value)
        if len(values) > MAX_VALUES:
            raise BadRequest(
                f"`{name}` has more than {MAX_VALUES} values", code="too-costly", expression=[name]
            )
        # each value becomes SQL to compile and run: the whole query, not only one parameter,
        # is held to MAX_VALUES
        self.values_seen += len(values)
        if self.values_seen > MAX_VALUES:
            raise BadRequest(
                f"the search has more than {MAX_VALUES} values in all",
                code="too-costly",
                expression=[name],
            )
        if modifier == "missing":
            if value not in {"true", "false"}:
                raise BadRequest(
                    f"`{name}={value}`: use true or false", code="value", expression=[name]
                )
        elif any(v == "" for v in values):
            raise BadRequest(f"`{name}` has an empty value", code="value", expression=[name])
        elif param.type in _PREFIXED_TYPES:
            self.check_prefixed(param, name, values)
        return Criterion(resource_type, param, modifier or None, values)

    def audit_event_criterion(
        self, param: SearchParam, modifier: str | None, dot: str, name: str, depth: int
    ) -> bool:
        """Whether an AuditEvent criterion is one its table answers (`AUDIT_EVENT_SEARCH`)."""
        allowed = AUDIT_EVENT_SEARCH.get(param.code)
        if allowed is None or depth > 0 or dot:
            self.refuse(
                f"search parameter `{param.code}` is not supported for AuditEvent"
                + (" in a chain" if allowed is not None else ""),
                name,
            )
            return False
        if modifier in param.targets and "[type]" in allowed:
            return True
        if modifier not in allowed:
            self.refuse(
                f"modifier `:{modifier}` is not supported for AuditEvent `{param.code}`", name
            )
            return False
        return True

    def composite(
        self, resource_type: str, param: SearchParam, value: str, name: str
    ) -> Criterion | None:
        """`code-value-quantity=http://loinc.org|8480-6$gt100`: each component's value after
        `$`, the components AND-ed; comma-separated alternatives OR-ed."""
        by_url = {p.url: p for p in search_params(resource_type).values()}
        components = [by_url[c.definition] for c in param.components]
        alternatives = []
        for alternative in split_values(value):
            pieces = split_unescaped(alternative, "$")
            if len(pieces) != len(components):
                raise BadRequest(
                    f"`{name}={value}`: give {len(components)} values separated by `$`",
                    code="value",
                    expression=[name],
                )
            parts = []
            for component, piece in zip(components, pieces, strict=True):
                if piece == "":
                    raise BadRequest(
                        f"`{name}` has an empty component", code="value", expression=[name]
                    )
                if component.type in _PREFIXED_TYPES:
                    self.check_prefixed(component, name, (piece,))
                parts.append(Criterion(resource_type, component, None, (piece,)))
            alternatives.append(tuple(parts))
        return Criterion(resource_type, param, None, split_values(value), parts=tuple(alternatives))

    def check_prefixed(self, param: SearchParam, name: str, values: tuple[str, ...]) -> None:
        for value in values:
            _prefix, text = split_prefix(value)
            if param.type == "date":
                ok = date_range(text) is not None
            else:
                number = split_unescaped(text, "|")[0] if param.type == "quantity" else text
                ok = number_range(number) is not None
            if not ok:
                kind = "date" if param.type == "date" else "number"
                raise BadRequest(
                    f"`{name}={value}`: `{text}` is not a {kind}", code="value", expression=[name]
                )

    def chain(
        self,
        resource_type: str,
        param: SearchParam,
        modifier: str | None,
        rest: str,
        value: str,
        name: str,
        depth: int,
    ) -> Criterion | None:
        if param.type != "reference":
            raise BadRequest(
                f"`{name}`: only reference parameters can be chained", expression=[name]
            )
        if depth >= MAX_CHAIN_DEPTH:
            raise BadRequest(
                f"`{name}`: chains go at most {MAX_CHAIN_DEPTH} deep",
                code="too-costly",
                expression=[name],
            )
        if modifier is not None and modifier not in param.targets:
            raise BadRequest(
                f"`{name}`: `{param.code}` cannot refer to a `{modifier}`", expression=[name]
            )
        targets = (modifier,) if modifier else param.targets
        next_code = rest.partition(".")[0].partition(":")[0]
        candidates = [
            t
            for t in targets
            if t in resource_types() and (next_code in search_params(t) or rest.startswith("_has:"))
        ]
        if not candidates:
            self.refuse(
                f"`{name}`: no type `{param.code}` refers to has a parameter `{next_code}`", name
            )
            return None
        links = []
        for target in candidates:
            inner = self.criterion((target,), rest, value, depth=depth + 1)
            if inner is not None:
                links.append(inner)
        if not links:
            return None
        return Criterion(resource_type, param, modifier, (), chain=tuple(links))

    def has(self, types: tuple[str, ...], name: str, value: str, *, depth: int) -> Criterion | None:
        # _has:Observation:patient:code=1234 ; _has:Observation:patient:_has:AuditEvent:entity:agent=x
        parts = name.split(":", 3)
        if len(parts) != 4:
            raise BadRequest(f"`{name}` must be `_has:Type:reference:parameter`", expression=[name])
        _, source, code, rest = parts
        if depth >= MAX_CHAIN_DEPTH:
            raise BadRequest(
                f"`{name}`: `_has` goes at most {MAX_CHAIN_DEPTH} deep",
                code="too-costly",
                expression=[name],
            )
        if source not in resource_types():
            raise BadRequest(f"`{name}`: `{source}` is not a resource type", expression=[name])
        if source == AUDIT_EVENT:
            self.refuse(f"`{name}`: `_has:AuditEvent` is not supported", name)
            return None
        param = search_params(source).get(code)
        if param is None or param.type != "reference":
            raise BadRequest(
                f"`{name}`: `{code}` is not a reference parameter of `{source}`", expression=[name]
            )
        if len(types) != 1 or types[0] not in param.targets:
            raise BadRequest(
                f"`{name}`: `{source}.{code}` does not refer to `{','.join(types)}`",
                expression=[name],
            )
        inner = self.criterion((source,), rest, value, depth=depth + 1)
        if inner is None:
            return None
        return Criterion(types[0], param, None, (), chain=(inner,), has_type=source)


def parse_search(
    resource_types_: tuple[str, ...],
    params: Iterable[tuple[str, str]],
    *,
    strict: bool = True,
    default_count: int = 20,
    max_count: int = 1000,
    compartment: str | None = None,
    max_parameters: int = MAX_VALUES,
) -> SearchQuery:
    """The query for `GET [base]/{type}?params` (or several types, for a compartment `*`)."""
    parser = _Parser(
        resource_types_,
        strict=strict,
        default_count=default_count,
        max_count=max_count,
        max_parameters=max_parameters,
    )
    query = parser.parse(params)
    return query if compartment is None else replace(query, compartment=compartment)


def is_simple_composite(param: SearchParam) -> bool:
    """A composite over the resource itself (R4's Observation `code-value-*`): its components
    are ordinary parameters of the resource, so it is their AND. Composites over repeating
    elements (`component-code-value-quantity`, `useContext`) would need the components to match
    within the same element, which the index does not record."""
    if param.expression != param.resource_type:
        return False
    urls = {p.url for p in search_params(param.resource_type).values()}
    return all(c.definition in urls for c in param.components)


@cache
def capabilities(resource_type: str) -> dict[str, list[Any]]:
    """What a CapabilityStatement says of searching `resource_type`: its parameters with the
    modifiers that work, and its `_include` and `_revinclude` values."""
    if resource_type == AUDIT_EVENT:
        return _audit_event_capabilities()
    params = []
    for code, param in search_params(resource_type).items():
        if code in ROW_MODIFIERS:
            documentation = "modifiers: " + ", ".join(f":{m}" for m in sorted(ROW_MODIFIERS[code]))
            if code == "_lastUpdated":
                documentation += "; prefixes eq ne gt lt ge le sa eb ap"
            documentation += "; in chains and _has"
        elif param.type == "composite" and is_simple_composite(param):
            documentation = "components separated by `$`"
        elif param.type not in SUPPORTED_TYPES or param.accessor is None:
            continue
        else:
            modifiers = sorted(SUPPORTED_MODIFIERS[param.type])
            if param.type == "reference":
                modifiers.append("[type]")
            documentation = "modifiers: " + ", ".join(f":{m}" for m in modifiers)
            if param.type in _PREFIXED_TYPES:
                documentation += "; prefixes eq ne gt lt ge le sa eb ap"
            if param.type == "reference":
                documentation += "; chains and _has"
        entry = {"name": code, "definition": param.url, "type": param.type}
        params.append({**entry, "documentation": documentation} if documentation else entry)
    includes = [
        f"{resource_type}:{code}"
        for code, param in search_params(resource_type).items()
        if param.type == "reference"
    ]
    return {
        "searchParam": params,
        "searchInclude": ["*", *includes],
        "searchRevInclude": _revincludes()[resource_type],
    }


def _audit_event_capabilities() -> dict[str, list[Any]]:
    """AuditEvent's own table answers `AUDIT_EVENT_SEARCH` and nothing else."""
    params = []
    for code, param in search_params(AUDIT_EVENT).items():
        allowed = AUDIT_EVENT_SEARCH.get(code)
        if code in {"_id", "_lastUpdated"}:
            documentation = "prefixes eq ne gt lt ge le sa eb ap" if code == "_lastUpdated" else ""
        elif allowed is None:
            continue
        else:
            documentation = "no modifiers" if allowed == {None} else "modifiers: :[type]"
            if param.type == "date":
                documentation += "; prefixes eq ne gt lt ge le sa eb ap"
        if code in AUDIT_EVENT_SORT:
            documentation += ("; " if documentation else "") + "_sort"
        entry = {"name": code, "definition": param.url, "type": param.type}
        params.append({**entry, "documentation": documentation} if documentation else entry)
    return {"searchParam": params, "searchInclude": [], "searchRevInclude": []}


@cache
def _revincludes() -> Mapping[str, list[str]]:
    found: dict[str, list[str]] = {t: [] for t in resource_types()}
    for source in sorted(resource_types()):
        if source == AUDIT_EVENT:
            continue  # AuditEvents are not in the generic reference index
        for code, param in search_params(source).items():
            if param.type == "reference":
                for target in param.targets:
                    if target in found:
                        found[target].append(f"{source}:{code}")
    return found
