"""The search planner: a parsed `SearchQuery` becomes SQL over `resources` and the index tables.

Every query the planner builds carries the caller's `AccessFilter` in its WHERE: the main query,
each chained and `_has` sub-query, `_include` and `_revinclude`, and totals. There is no way to
build a search statement without one (`Everything` is an explicit choice for privileged callers).
Values are always bound parameters.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import cache
from typing import Any, Protocol

from sqlalchemy import (
    ColumnElement,
    FromClause,
    Select,
    String,
    Text,
    and_,
    any_,
    cast,
    exists,
    false,
    func,
    literal,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY

from capability.definitions import resource_types
from fhir_server.errors import BadRequest
from fhir_server.search.fhirpath import result_types
from fhir_server.search.index import DATE_MAX, DATE_MIN, date_range, normalize_string, number_range
from fhir_server.search.parameters import SearchParam
from fhir_server.search.query import Criterion, Include, SearchQuery, split_prefix, split_unescaped
from fhir_server.storage.cursors import decode_cursor
from fhir_server.storage.tables import SEARCH_TABLES, resources


@dataclass(frozen=True, slots=True)
class Grant:
    """Which rows of one resource type the caller may see (DESIGN.md 5.5): everything, or those in
    any of `compartments` or created by one of `creators`; then, if set, only those also in the
    `within` compartment (a `patient/` scope's launch context) and matching one of `criteria`
    (granular scopes such as `Observation.rs?category=laboratory`, each a conjunction)."""

    everything: bool = False
    compartments: frozenset[str] = frozenset()
    creators: frozenset[str] = frozenset()
    within: str | None = None
    criteria: tuple[tuple[Criterion, ...], ...] = ()

    @property
    def unrestricted(self) -> bool:
        return self.everything and self.within is None and not self.criteria


UNRESTRICTED = Grant(everything=True)


class AccessFilter(Protocol):
    """What the caller may see, type by type; `None` for a type it may see nothing of."""

    def grant(self, resource_type: str) -> Grant | None: ...


@dataclass(frozen=True, slots=True)
class Everything:
    """No restriction: for System and Admin callers, and for the server's own work."""

    def grant(self, resource_type: str) -> Grant | None:
        return UNRESTRICTED


@dataclass(frozen=True, slots=True)
class InCompartments:
    """The same grant for every type: resources in these compartments or created by `creator`."""

    compartments: frozenset[str]
    creator: str | None = None

    def grant(self, resource_type: str) -> Grant | None:
        creators = frozenset({self.creator}) if self.creator else frozenset()
        return Grant(compartments=self.compartments, creators=creators)


def access_clause(
    access: AccessFilter, row: FromClause, types: Sequence[str] | None
) -> ColumnElement[bool]:
    """The access filter as a predicate on a `resources` or `resource_history` row that is one of
    `types` (None: any type). Types with the same grant share one branch of the OR."""
    return _Planner(access, ()).access(row, types)


class _Planner:
    def __init__(self, access: AccessFilter, local_bases: Sequence[str]) -> None:
        self.filter = access
        self.local_bases = tuple(b.rstrip("/") for b in local_bases)
        self.aliases = 0

    def alias(self, kind: str) -> FromClause:
        self.aliases += 1
        table = resources if kind == "resources" else SEARCH_TABLES[kind]
        return table.alias(f"{kind[:3]}{self.aliases}")

    # --- criteria -------------------------------------------------------------------------

    def visible(self, row: FromClause, types: Sequence[str]) -> list[ColumnElement[bool]]:
        type_clause = (
            row.c.resource_type == types[0]
            if len(types) == 1
            else row.c.resource_type.in_(list(types))
        )
        return [type_clause, row.c.deleted.is_(False), self.access(row, types)]

    def access(self, row: FromClause, types: Sequence[str] | None) -> ColumnElement[bool]:
        if isinstance(self.filter, Everything):
            return true()
        groups: list[tuple[Grant, list[str]]] = []
        hidden = False
        for resource_type in resource_types() if types is None else types:
            grant = self.filter.grant(resource_type)
            if grant is None:
                hidden = True
                continue
            for known, members in groups:
                if known == grant:
                    members.append(resource_type)
                    break
            else:
                groups.append((grant, [resource_type]))
        if types is not None and len(types) == 1:
            # the caller's WHERE already names the type
            return self.grant_clause(row, groups[0][0]) if groups else false()
        if not hidden and len(groups) == 1 and groups[0][0].unrestricted:
            return true()  # every type, unrestricted: a System or Admin caller
        branches = []
        for grant, members in groups:
            in_types = (
                row.c.resource_type == members[0]
                if len(members) == 1
                else row.c.resource_type.in_(members)
            )
            branches.append(and_(in_types, self.grant_clause(row, grant)))
        return or_(false(), *branches)

    def grant_clause(self, row: FromClause, grant: Grant) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = []
        if not grant.everything:
            visible: list[ColumnElement[bool]] = []
            if grant.compartments:
                visible.append(row.c.compartments.overlap(sorted(grant.compartments)))
            if grant.creators:
                visible.append(row.c.created_by.in_(sorted(grant.creators)))
            conditions.append(or_(false(), *visible))
        if grant.within is not None:
            conditions.append(row.c.compartments.contains([grant.within]))
        if grant.criteria:
            conditions.append(
                or_(*(and_(*(self.criterion(row, c) for c in alt)) for alt in grant.criteria))
            )
        return and_(true(), *conditions)

    def criterion(self, row: FromClause, c: Criterion) -> ColumnElement[bool]:
        param = c.param
        if c.parts:
            return or_(*(and_(*(self.criterion(row, p) for p in part)) for part in c.parts))
        if c.has_type is not None:
            return self.has(row, c)
        if c.chain:
            return self.chain(row, c)
        if c.modifier == "missing":
            present = self.index_exists(row, param, true())
            return not_(present) if c.values[0] == "true" else present
        if c.modifier == "not":
            # R4: `:not` also matches resources that have no value at all
            return not_(self.index_exists_any(row, param, _without_modifier(c)))
        return self.index_exists_any(row, param, c)

    def index_exists(
        self,
        row: FromClause,
        param: SearchParam,
        condition: ColumnElement[bool],
        index: FromClause | None = None,
    ) -> ColumnElement[bool]:
        index = index if index is not None else self.alias(param.type)
        return exists().where(
            index.c.resource_type == row.c.resource_type,
            index.c.id == row.c.id,
            index.c.code == param.code,
            condition,
        )

    def index_exists_any(
        self, row: FromClause, param: SearchParam, c: Criterion
    ) -> ColumnElement[bool]:
        index = self.alias(param.type)
        build = getattr(self, param.type)
        alternatives = [build(value, c.modifier, index, param) for value in c.values]
        return self.index_exists(row, param, or_(*alternatives), index)

    # One method per parameter type: the condition on one index row for one value of `param`.

    def string(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        normalized = normalize_string(value)
        if modifier == "exact":
            return and_(ix.c.value == normalized, ix.c.exact == value)
        if modifier == "contains":
            return ix.c.value.contains(normalized, autoescape=True)
        return starts_with(ix.c.value, normalized)

    def token(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        if modifier == "text":
            return starts_with(ix.c.text, normalize_string(value))
        parts = split_unescaped(value, "|")
        if len(parts) == 1:
            return ix.c.value == parts[0]
        system, code = parts[0], "|".join(parts[1:])
        if system == "":
            return and_(ix.c.value == code, ix.c.system.is_(None))
        if code == "":
            return ix.c.system == system
        if _implicit_system(param):
            # a plain `code` element is indexed without the system its binding implies
            return and_(ix.c.value == code, or_(ix.c.system == system, ix.c.system.is_(None)))
        return and_(ix.c.value == code, ix.c.system == system)

    def uri(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        if modifier == "below":
            return starts_with(ix.c.value, value)
        if modifier == "above":
            return func.starts_with(literal(value), ix.c.value)
        return ix.c.value == value

    def reference(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        if modifier == "identifier":
            parts = split_unescaped(value, "|")
            if len(parts) == 1:
                return ix.c.identifier_value == parts[0]
            system, code = parts[0], "|".join(parts[1:])
            conditions = []
            if system:
                conditions.append(ix.c.identifier_system == system)
            else:
                conditions.append(ix.c.identifier_system.is_(None))
            if code:
                conditions.append(ix.c.identifier_value == code)
            return and_(*conditions)
        local = self.local_reference(value)
        if local is not None:
            target_type, target_id = local
            if modifier is not None and target_type is not None and target_type != modifier:
                return false()
            target_type = target_type or modifier
            if target_type is None:
                return ix.c.target_id == target_id
            return and_(ix.c.target_id == target_id, ix.c.target_type == target_type)
        return ix.c.url == value.split("|")[0]

    def local_reference(self, value: str) -> tuple[str | None, str] | None:
        """`Type/id`, `id`, or `<this server's base>/Type/id` (a version suffix is ignored)."""
        text = value
        for base in self.local_bases:
            if text.startswith(base + "/"):
                text = text[len(base) + 1 :]
                break
        else:
            if "://" in text or text.startswith("urn:"):
                return None
        parts = text.split("/")
        if len(parts) >= 4 and parts[2] == "_history":
            parts = parts[:2]
        if len(parts) == 1:
            return None, parts[0]
        if len(parts) == 2:
            return parts[0], parts[1]
        return None

    def date(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        prefix, text = split_prefix(value)
        found = date_range(text)
        if found is None:
            raise BadRequest(f"`{text}` is not a FHIR date", code="value")
        low, high = found
        return range_condition(
            prefix, low, high, ix.c.low, ix.c.high, approximate=_date_slack(low, high)
        )

    def number(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        prefix, text = split_prefix(value)
        found = number_range(text)
        if found is None:
            raise BadRequest(f"`{text}` is not a number", code="value")
        exact, low, high = found
        return number_condition(prefix, exact, low, high, ix.c.value)

    def quantity(
        self, value: str, modifier: str | None, ix: FromClause, param: SearchParam
    ) -> ColumnElement[bool]:
        prefix, text = split_prefix(value)
        parts = split_unescaped(text, "|")
        found = number_range(parts[0])
        if found is None:
            raise BadRequest(f"`{parts[0]}` is not a number", code="value")
        exact, low, high = found
        conditions = [number_condition(prefix, exact, low, high, ix.c.value)]
        system = parts[1] if len(parts) > 1 else ""
        code = "|".join(parts[2:]) if len(parts) > 2 else ""
        if system:
            conditions.append(ix.c.system == system)
        if code:
            conditions.append(
                ix.c.unit_code == code if system else or_(ix.c.unit_code == code, ix.c.unit == code)
            )
        return and_(*conditions)

    # --- chains, reverse chains -----------------------------------------------------------

    def chain(self, row: FromClause, c: Criterion) -> ColumnElement[bool]:
        ref = self.alias("reference")
        alternatives = []
        for inner in c.chain:
            target = self.alias("resources")
            alternatives.append(
                exists().where(
                    target.c.resource_type == ref.c.target_type,
                    target.c.id == ref.c.target_id,
                    *self.visible(target, [inner.resource_type]),
                    self.criterion(target, inner),
                )
            )
        return exists().where(
            ref.c.resource_type == row.c.resource_type,
            ref.c.id == row.c.id,
            ref.c.code == c.param.code,
            or_(*alternatives),
        )

    def has(self, row: FromClause, c: Criterion) -> ColumnElement[bool]:
        assert c.has_type is not None
        ref = self.alias("reference")
        source = self.alias("resources")
        return exists().where(
            ref.c.resource_type == c.has_type,
            ref.c.code == c.param.code,
            ref.c.target_type == row.c.resource_type,
            ref.c.target_id == row.c.id,
            source.c.resource_type == ref.c.resource_type,
            source.c.id == ref.c.id,
            *self.visible(source, [c.has_type]),
            self.criterion(source, c.chain[0]),
        )

    # --- the main query ---------------------------------------------------------------------

    def where(self, row: FromClause, query: SearchQuery) -> list[ColumnElement[bool]]:
        conditions = self.visible(row, query.resource_types)
        if query.compartment is not None:
            conditions.append(row.c.compartments.contains([query.compartment]))
        for ids in query.ids:
            conditions.append(row.c.id.in_(list(ids)))
        for values in query.last_updated:
            alternatives = []
            for value in values:
                prefix, text = split_prefix(value)
                found = date_range(text)
                assert found is not None  # the parser checked it
                low, high = found
                alternatives.append(
                    range_condition(
                        prefix,
                        low,
                        high,
                        row.c.last_updated,
                        row.c.last_updated + timedelta(microseconds=1),
                        approximate=_date_slack(low, high),
                    )
                )
            conditions.append(or_(*alternatives))
        conditions.extend(self.criterion(row, c) for c in query.criteria)
        return conditions

    def sort_expressions(
        self, row: FromClause, query: SearchQuery
    ) -> list[tuple[ColumnElement[Any], bool]]:
        keys: list[tuple[ColumnElement[Any], bool]] = []
        for key in query.sort:
            code, descending = key.param.code, key.descending
            if code == "_id":
                keys.append((row.c.id, descending))
                continue
            if code == "_lastUpdated":
                keys.append((row.c.last_updated, descending))
                continue
            ix = self.alias(key.param.type)
            if key.param.type == "date":
                column = ix.c.high if descending else ix.c.low
            elif key.param.type == "reference":
                column = ix.c.target_id
            else:
                column = ix.c.value
            aggregate = func.max(column) if descending else func.min(column)
            keys.append(
                (
                    select(aggregate)
                    .where(
                        ix.c.resource_type == row.c.resource_type,
                        ix.c.id == row.c.id,
                        ix.c.code == code,
                    )
                    .scalar_subquery(),
                    descending,
                )
            )
        return keys


@cache
def _implicit_system(param: SearchParam) -> bool:
    """Whether the parameter selects plain `code` (or boolean) elements, whose system is implied."""
    assert param.expression is not None
    return set(result_types(param.expression, context_types=(param.resource_type,))) <= {
        "code",
        "boolean",
    }


def starts_with(column: ColumnElement[Any], prefix: str) -> ColumnElement[bool]:
    """`column` starts with `prefix`, as a range a B-tree serves even in a generic plan."""
    if prefix == "":
        return column.is_not(None)
    last = ord(prefix[-1])
    if last >= 0x10FFFF:
        return column.startswith(prefix, autoescape=True)
    return and_(column >= prefix, column < prefix[:-1] + chr(last + 1))


def range_condition(
    prefix: str,
    low: Any,
    high: Any,
    r_low: ColumnElement[Any],
    r_high: ColumnElement[Any],
    *,
    approximate: Any,
) -> ColumnElement[bool]:
    """R4 search prefixes on ranges: the parameter is [low, high), the resource [r_low, r_high)."""
    result: ColumnElement[bool]
    equal = and_(r_low >= low, r_high <= high)
    if prefix == "eq":
        return equal
    if prefix == "ne":
        return not_(equal)
    if prefix == "gt":
        result = r_high > high
        return result
    if prefix == "lt":
        result = r_low < low
        return result
    if prefix == "ge":
        return or_(r_high > high, equal)
    if prefix == "le":
        return or_(r_low < low, equal)
    if prefix == "sa":
        result = r_low >= high
        return result
    if prefix == "eb":
        result = r_high <= low
        return result
    # ap: the ranges overlap once the parameter's is widened by the slack
    return and_(r_low < high + approximate, r_high > low - approximate)


def number_condition(
    prefix: str, exact: Decimal, low: Decimal, high: Decimal, value: ColumnElement[Any]
) -> ColumnElement[bool]:
    """R4 number prefixes: `eq` means within the precision of the value given."""
    if prefix == "eq":
        return and_(value >= low, value < high)
    if prefix == "ne":
        return or_(value < low, value >= high)
    if prefix in {"gt", "sa"}:
        return value > exact
    if prefix in {"lt", "eb"}:
        return value < exact
    if prefix == "ge":
        return value >= exact
    if prefix == "le":
        return value <= exact
    slack = abs(exact) / 10
    return and_(value >= exact - slack, value <= exact + slack)


def _date_slack(low: datetime, high: datetime) -> timedelta:
    """`ap` on dates: 10 % of the distance from now, at least the value's own precision."""
    now = datetime.now(UTC)
    distance = abs(now - low) if DATE_MIN < low < DATE_MAX else timedelta(0)
    return max(distance / 10, high - low)


def _without_modifier(c: Criterion) -> Criterion:
    return Criterion(c.resource_type, c.param, None, c.values)


def _after(
    keys: Sequence[tuple[ColumnElement[Any], bool]], last: Sequence[Any]
) -> ColumnElement[bool]:
    """Rows strictly after `last` in the order of `keys` (NULLs last in both directions)."""
    alternatives = []
    for i, (expression, descending) in enumerate(keys):
        prior = [_same(keys[j][0], last[j]) for j in range(i)]
        value = last[i]
        if value is None:
            continue  # nothing sorts after NULL at this position
        later = expression < value if descending else expression > value
        alternatives.append(and_(*prior, or_(later, expression.is_(None))))
    return or_(*alternatives) if alternatives else false()


def _same(expression: ColumnElement[Any], value: Any) -> ColumnElement[bool]:
    return expression.is_(None) if value is None else expression == value


# --- entry points ----------------------------------------------------------------------------


def search_statement(
    query: SearchQuery, access: AccessFilter, *, local_bases: Sequence[str] = ()
) -> tuple[Select[Any], int]:
    """The page query: rows of (resource_type, id, content, sort keys...), `count + 1` of them
    so the caller knows whether there is a next page. Returns it and the number of keys."""
    planner = _Planner(access, local_bases)
    row = resources.alias("r")
    conditions = planner.where(row, query)
    sort = planner.sort_expressions(row, query)
    keys = [*sort, (row.c.resource_type, False), (row.c.id, False)]
    columns = [expression.label(f"k{i}") for i, (expression, _) in enumerate(keys)]
    matches = select(row.c.resource_type, row.c.id, *columns).where(*conditions).subquery("matches")
    keyed = [(matches.c[f"k{i}"], descending) for i, (_, descending) in enumerate(keys)]
    page = select(*matches.c)
    if query.cursor is not None:
        page = page.where(_after(keyed, decode_cursor(query.cursor, len(keyed))))
    page_keys = page.order_by(*_order(keyed)).limit(query.count + 1).subquery("page")
    # The content of the page's rows only: turning jsonb into text is the costly part of a row.
    content = resources.alias("content")
    paged = [(page_keys.c[f"k{i}"], descending) for i, (_, descending) in enumerate(keys)]
    statement = (
        select(
            page_keys.c.resource_type,
            page_keys.c.id,
            cast(content.c.content, Text).label("content"),
            *(k for k, _ in paged),
        )
        .join(
            content,
            and_(
                content.c.resource_type == page_keys.c.resource_type,
                content.c.id == page_keys.c.id,
            ),
        )
        .order_by(*_order(paged))
    )
    return statement, len(keyed)


def _order(keys: Sequence[tuple[ColumnElement[Any], bool]]) -> list[Any]:
    return [k.desc().nulls_last() if descending else k.asc().nulls_last() for k, descending in keys]


def count_statement(
    query: SearchQuery, access: AccessFilter, *, local_bases: Sequence[str] = ()
) -> Select[Any]:
    planner = _Planner(access, local_bases)
    row = resources.alias("r")
    return select(func.count()).select_from(row).where(*planner.where(row, query))


def include_statement(
    include: Include,
    sources: Sequence[tuple[str, str]],
    access: AccessFilter,
) -> Select[Any]:
    """Resources the page's resources refer to (`_include`) or that refer to them
    (`_revinclude`), visible to the caller."""
    planner = _Planner(access, ())
    ref = planner.alias("reference")
    target = resources.alias("t")
    by_type: dict[str, list[str]] = {}
    for resource_type, id in sources:
        by_type.setdefault(resource_type, []).append(id)
    if include.reverse:
        assert include.param is not None
        # the page's resources, as targets of the source type's reference parameter
        pages = [
            and_(ref.c.target_type == t, ref.c.target_id == any_(literal(ids, ARRAY(String))))
            for t, ids in by_type.items()
        ]
        link = [
            ref.c.resource_type == include.source_type,
            ref.c.code == include.param.code,
            or_(*pages),
            target.c.resource_type == ref.c.resource_type,
            target.c.id == ref.c.id,
        ]
        if include.target_type:
            link.append(ref.c.target_type == include.target_type)
        types = [include.source_type]
    else:
        pages = [
            and_(ref.c.resource_type == t, ref.c.id == any_(literal(ids, ARRAY(String))))
            for t, ids in by_type.items()
            if include.param is None or t == include.source_type
        ]
        link = [
            or_(*pages),
            target.c.resource_type == ref.c.target_type,
            target.c.id == ref.c.target_id,
        ]
        if include.param is not None:
            link.append(ref.c.code == include.param.code)
        if include.target_type:
            link.append(ref.c.target_type == include.target_type)
        types = list(include.param.targets) if include.param is not None else []
        if include.target_type:
            types = [include.target_type]
    visible = [target.c.deleted.is_(False), planner.access(target, types or None)]
    if include.reverse:
        visible.append(target.c.resource_type == types[0])
    return (
        select(target.c.resource_type, target.c.id, cast(target.c.content, Text).label("content"))
        .where(exists().where(*link), *visible)
        .order_by(target.c.resource_type, target.c.id)
    )
