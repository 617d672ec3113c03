"""The search planner: a parsed `SearchQuery` becomes SQL over `resources` and the index tables.

Every query the planner builds carries the caller's `Grants` (search/grants.py) in its WHERE: the
main query, each chained and `_has` sub-query, `_include` and `_revinclude`, and totals. There is
no way to build a search statement without them (`Everything` is an explicit choice for privileged
callers). They are values, computed by the caller before it calls (`search_types` and
`include_types` name the types a statement needs): the planner asks nobody anything.
Values are always bound parameters.

The planner works in two steps, because building a SQLAlchemy statement and compiling it cost
2 to 3 ms per search, more than the rest of a search request together:

1. A walk of the query and the caller's grants (`_Planner`, plain Python) gives the statement's
   *shape*: a tree of tuples that says which conditions on which columns, with every value
   replaced by the name of a parameter (`p0`, `p1`, ...), and the values by name.
2. The SQL text is built from the shape alone (`_Builder`, SQLAlchemy Core) and kept in a bounded
   LRU cache keyed by the shape. Searches of the same shape with other values get the same text
   and their own values, sent to PostgreSQL as parameters of an unprepared statement, so each
   search is still planned for its values (`sql._server_side`).

Indexed texts are bounded keys (storage/search_index.py): a search compares the key where it
decides alone and the whole text beside it where the key may be the start of a longer text, so
results stay exact for values of any length.

The builder never sees a value, and every parameter of the SQL it compiles must be one the shape
names, so one request's values cannot reach another's SQL. Lists of values (`_id`, the
compartments and creators of a grant, the page's ids of an `_include`) are one array parameter
(`= ANY(...)`, `&&`), so their length is not part of the shape.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from functools import cache, lru_cache
from typing import Any, TypeAlias

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    FromClause,
    Integer,
    Interval,
    String,
    Text,
    and_,
    any_,
    bindparam,
    case,
    cast,
    exists,
    false,
    func,
    literal_column,
    not_,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.types import NULLTYPE, TypeEngine

from capability.definitions import resource_types
from compartments.ids import is_id
from fhir_server.errors import BadRequest
from fhir_server.search.fhirpath import result_types
from fhir_server.search.grants import Everything, Grant, Grants
from fhir_server.search.index import (
    DATE_MAX,
    DATE_MIN,
    NOT_INDEXED,
    date_range,
    normalize_string,
    number_range,
)
from fhir_server.search.parameters import SearchParam
from fhir_server.search.query import Criterion, Include, SearchQuery, split_prefix, split_unescaped
from fhir_server.storage.cursors import decode_cursor
from fhir_server.storage.search_index import (
    KEY_BYTES,
    KEY_DIGITS,
    UNAMBIGUOUS_BYTES,
    index_key,
    key_prefix,
    unambiguous,
)
from fhir_server.storage.sql import Query, compile_named
from fhir_server.storage.tables import SEARCH_TABLES, audit_events, resources

# --- shapes ----------------------------------------------------------------------------------
#
# A shape is a tree of tuples, each starting with its operator:
#   ("col", alias, column)           a column of a table alias ("r", "t", "tok2", "res3", ...)
#   ("value", name, kind)            a parameter; kind None: typed like what it is compared with,
#                                    else a key of _TYPES
#   ("true",) ("false",)             constants
#   ("and"|"or", node...) ("not", node)
#   ("=" | "<" | "<=" | ">" | ">=", left, right)
#   ("null"|"not null"|"is false", node)
#   ("any", node, value)             node = ANY(value)
#   ("overlap"|"contains", node, value)   arrays: && and @>
#   ("like contains"|"like prefix", node, value)   LIKE with `/` as the escape character
#   ("starts_with", node, node)      the SQL function starts_with(text, prefix)
#   ("coalesce", node, node)
#   ("+", node, value)
#   ("exists", condition...)
#   ("aggregate", "min"|"max", column, condition...)   a scalar subquery
#   ("whole", kind, code value, descending)   a sort key only: the whole text of the bounded-key
#                                    sort value before it (`_Builder.whole_keys`)
# and the statements: ("search", conditions, sort keys, keyset condition, limit),
# ("count", conditions), ("include", link conditions, visibility conditions, limit).

Node: TypeAlias = tuple[Any, ...]
TRUE: Node = ("true",)
FALSE: Node = ("false",)
_ESCAPE = "/"  # LIKE's escape character, as SQLAlchemy's `autoescape` uses it


def _col(alias: str, column: str) -> Node:
    return ("col", alias, column)


def _like_escaped(text: str) -> str:
    """`text` matched literally by LIKE with `/` as the escape character."""
    return (
        text.replace(_ESCAPE, _ESCAPE * 2).replace("%", _ESCAPE + "%").replace("_", _ESCAPE + "_")
    )


def access_clause(
    grants: Grants, row: FromClause, types: Sequence[str] | None
) -> ColumnElement[bool]:
    """The access filter as a predicate on a `resources` or `resource_history` row that is one of
    `types` (None: any type). Types with the same grant share one branch of the OR. Its values
    are bound to it (it goes into statements built elsewhere)."""
    planner = _Planner(grants, ())
    shape = planner.access("row", types)
    clause: ColumnElement[bool] = _Builder(_bound_values(planner.values), {"row": row}).expression(
        shape
    )
    return clause


class _Planner:
    """The shape of a statement for one query and caller, and its values by parameter name."""

    def __init__(
        self, grants: Grants, local_bases: Sequence[str], now: datetime | None = None
    ) -> None:
        self.grants = grants
        self.local_bases = tuple(b.rstrip("/") for b in local_bases)
        # the request's clock (Context.clock): `ap` on dates is relative to it
        self.now = now
        self.aliases = 0
        self.values: dict[str, Any] = {}

    def alias(self, kind: str) -> str:
        self.aliases += 1
        return f"{kind[:3]}{self.aliases}"

    def value(self, value: Any, kind: str | None = None) -> Node:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return ("value", name, kind)

    def date_slack(self, low: datetime, high: datetime) -> timedelta:
        # only the search and count statements plan date criteria, and they are given `now`
        assert self.now is not None, "a date criterion needs the request's clock"
        return _date_slack(low, high, self.now)

    def query(self, shape: Node) -> Query:
        """The statement of `shape` with this planner's values."""
        if len(self.values) > MAX_CACHED_VALUES:
            return Query(_compile(shape), self.values)  # rare and huge: not worth a cache entry
        return Query(_compile_cached(shape), self.values)

    # --- criteria -------------------------------------------------------------------------

    def visible(self, row: str, types: Sequence[str]) -> list[Node]:
        type_clause = (
            ("=", _col(row, "resource_type"), self.value(types[0]))
            if len(types) == 1
            else ("any", _col(row, "resource_type"), self.value(list(types), "varchar[]"))
        )
        return [type_clause, ("is false", _col(row, "deleted")), self.access(row, types)]

    def access(self, row: str, types: Sequence[str] | None) -> Node:
        if isinstance(self.grants, Everything):
            return TRUE
        groups: list[tuple[Grant, list[str]]] = []
        hidden = False
        for resource_type in resource_types() if types is None else types:
            grant = self.grant_of(resource_type)
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
            return self.grant_clause(row, groups[0][0]) if groups else FALSE
        if not hidden and len(groups) == 1 and groups[0][0].unrestricted:
            return TRUE  # every type, unrestricted: a System or Admin caller
        branches = []
        for grant, members in groups:
            in_types = (
                ("=", _col(row, "resource_type"), self.value(members[0]))
                if len(members) == 1
                else ("any", _col(row, "resource_type"), self.value(members, "varchar[]"))
            )
            branches.append(("and", in_types, self.grant_clause(row, grant)))
        return ("or", FALSE, *branches)

    def grant_of(self, resource_type: str) -> Grant | None:
        try:
            return self.grants[resource_type]
        except KeyError:
            # the caller computes the grants of every type `search_types` names: a type missing
            # is a planner the caller does not know about, never a type to show
            raise LookupError(f"no grant was computed for `{resource_type}`") from None

    def grant_clause(self, row: str, grant: Grant) -> Node:
        conditions: list[Node] = []
        if not grant.everything:
            visible: list[Node] = []
            if grant.compartments:
                compartments = self.value(sorted(grant.compartments))
                visible.append(("overlap", _col(row, "compartments"), compartments))
            if grant.creators:
                creators = self.value(sorted(grant.creators), "text[]")
                visible.append(("any", _col(row, "created_by"), creators))
            for part in grant.parts:
                inside: Node = (
                    "contains",
                    _col(row, "compartments"),
                    self.value([part.compartment]),
                )
                where = tuple(self.criterion(row, c) for c in part.criteria)
                if part.ids:
                    listed: Node = ("any", _col(row, "id"), self.value(list(part.ids), "text[]"))
                    visible.append(
                        ("and", inside, ("not", listed) if part.every else listed, *where)
                    )
                elif part.every:
                    visible.append(("and", inside, *where))
            conditions.append(("or", FALSE, *visible))
        if grant.within is not None:
            conditions.append(("contains", _col(row, "compartments"), self.value([grant.within])))
        if grant.criteria:
            conditions.append(
                ("or", *(("and", *(self.criterion(row, c) for c in alt)) for alt in grant.criteria))
            )
        return ("and", TRUE, *conditions)

    def criterion(self, row: str, c: Criterion) -> Node:
        param = c.param
        if c.parts:
            return ("or", *(("and", *(self.criterion(row, p) for p in part)) for part in c.parts))
        if c.has_type is not None:
            return self.has(row, c)
        if c.chain:
            return self.chain(row, c)
        if param.code in NOT_INDEXED:
            return self.row_criterion(row, c)
        if c.modifier == "missing":
            present = self.index_exists(row, param, TRUE)
            return ("not", present) if c.values[0] == "true" else present
        if c.modifier == "not":
            # R4: `:not` also matches resources that have no value at all
            return ("not", self.index_exists_any(row, param, _without_modifier(c)))
        return self.index_exists_any(row, param, c)

    def row_criterion(self, row: str, c: Criterion) -> Node:
        """`_id` and `_lastUpdated` (with the modifiers search/query.py ROW_MODIFIERS admits),
        on the resource row itself: they are never in the index tables."""
        if c.modifier == "missing":
            # every resource has an id and a lastUpdated
            return FALSE if c.values[0] == "true" else TRUE
        if c.param.code == "_id":
            listed = self.ids(row, c.values)
            return ("not", listed) if c.modifier == "not" else listed
        return self.last_updated(row, c.values)

    def ids(self, row: str, ids: Sequence[str]) -> Node:
        return ("any", _col(row, "id"), self.value(list(ids), "varchar[]"))

    def last_updated(self, row: str, values: Sequence[str]) -> Node:
        alternatives = []
        for value in values:
            prefix, text = split_prefix(value)
            found = date_range(text)
            assert found is not None  # the parser checked it
            low, high = found
            moment = _col(row, "last_updated")
            # the end of the resource's range; `lt` and `sa` compare only its start, and a
            # value bound but not in the SQL would fail the check in `query`
            end = (
                moment
                if prefix in {"lt", "sa"}
                else ("+", moment, self.value(timedelta(microseconds=1), "interval"))
            )
            alternatives.append(
                self.range_condition(
                    prefix, low, high, moment, end, approximate=self.date_slack(low, high)
                )
            )
        return ("or", *alternatives)

    def index_exists(
        self, row: str, param: SearchParam, condition: Node, index: str | None = None
    ) -> Node:
        index = index if index is not None else self.alias(param.type)
        return (
            "exists",
            ("=", _col(index, "resource_type"), _col(row, "resource_type")),
            ("=", _col(index, "id"), _col(row, "id")),
            ("=", _col(index, "code"), self.value(param.code)),
            condition,
        )

    def index_exists_any(self, row: str, param: SearchParam, c: Criterion) -> Node:
        index = self.alias(param.type)
        build = getattr(self, param.type)
        alternatives = [build(value, c.modifier, index, param) for value in c.values]
        return self.index_exists(row, param, ("or", *alternatives), index)

    # One method per parameter type: the condition on one index row for one value of `param`.

    def string(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        normalized = normalize_string(value)
        if modifier == "exact":
            # `exact` holds the whole text: it settles a key that is only the start of one
            return (
                "and",
                ("=", _col(ix, "value"), self.value(index_key(normalized)[0])),
                ("=", _col(ix, "exact"), self.value(value)),
            )
        if modifier == "contains":
            # the whole normalized text, where the key is only its start
            whole = ("coalesce", _col(ix, "value_full"), _col(ix, "value"))
            return ("like contains", whole, self.value(_like_escaped(normalized)))
        return self.key_starts_with(ix, "value", normalized)

    def token(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        if modifier == "text":
            return self.starts_with(_col(ix, "text"), normalize_string(value))
        parts = split_unescaped(value, "|")
        if len(parts) == 1:
            return self.key_equals(ix, "value", parts[0])
        system, code = parts[0], "|".join(parts[1:])
        if system == "":
            return ("and", self.key_equals(ix, "value", code), ("null", _col(ix, "system")))
        if code == "":
            return self.key_equals(ix, "system", system)
        if _implicit_system(param):
            # a plain `code` element is indexed without the system its binding implies
            return (
                "and",
                self.key_equals(ix, "value", code),
                ("or", self.key_equals(ix, "system", system), ("null", _col(ix, "system"))),
            )
        return ("and", self.key_equals(ix, "value", code), self.key_equals(ix, "system", system))

    def uri(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        if modifier == "below":
            return self.key_starts_with(ix, "value", value)
        if modifier == "above":
            whole = ("coalesce", _col(ix, "value_full"), _col(ix, "value"))
            return ("starts_with", self.value(value, "str"), whole)
        return self.key_equals(ix, "value", value)

    def reference(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        if modifier == "identifier":
            parts = split_unescaped(value, "|")
            if len(parts) == 1:
                return ("=", _col(ix, "identifier_value"), self.value(parts[0]))
            system, code = parts[0], "|".join(parts[1:])
            conditions: list[Node] = []
            if system:
                conditions.append(("=", _col(ix, "identifier_system"), self.value(system)))
            else:
                conditions.append(("null", _col(ix, "identifier_system")))
            if code:
                conditions.append(("=", _col(ix, "identifier_value"), self.value(code)))
            return ("and", *conditions)
        local = self.local_reference(value)
        if local is not None and not is_id(local[1]):
            # no id of a resource here (such references are indexed by their text)
            text = value if local[0] is not None or modifier is None else f"{modifier}/{value}"
            return ("=", _col(ix, "url"), self.value(text.split("|")[0]))
        if local is not None:
            target_type, target_id = local
            if modifier is not None and target_type is not None and target_type != modifier:
                return FALSE
            target_type = target_type or modifier
            if target_type is None:
                return ("=", _col(ix, "target_id"), self.value(target_id))
            return (
                "and",
                ("=", _col(ix, "target_id"), self.value(target_id)),
                ("=", _col(ix, "target_type"), self.value(target_type)),
            )
        return ("=", _col(ix, "url"), self.value(value.split("|")[0]))

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

    def date(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        prefix, text = split_prefix(value)
        found = date_range(text)
        if found is None:
            raise BadRequest(f"`{text}` is not a FHIR date", code="value")
        low, high = found
        return self.range_condition(
            prefix,
            low,
            high,
            _col(ix, "low"),
            _col(ix, "high"),
            approximate=self.date_slack(low, high),
        )

    def number(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        prefix, text = split_prefix(value)
        exact, low, high = _search_number(text)
        return self.number_condition(prefix, exact, low, high, _col(ix, "value"))

    def key_equals(self, ix: str, column: str, text: str) -> Node:
        """The bounded-key `column` (storage/search_index.py) holds `text`."""
        key = _col(ix, column)
        if unambiguous(text):
            return ("=", key, self.value(text))
        whole = ("coalesce", _col(ix, f"{column}_full"), key)
        return ("and", ("=", key, self.value(index_key(text)[0])), ("=", whole, self.value(text)))

    def key_starts_with(self, ix: str, column: str, prefix: str) -> Node:
        """The text of the bounded-key `column` starts with `prefix`."""
        key = _col(ix, column)
        if unambiguous(prefix):
            return self.starts_with(key, prefix)
        whole = ("coalesce", _col(ix, f"{column}_full"), key)
        return (
            "and",
            self.starts_with(key, key_prefix(prefix)),
            ("starts_with", whole, self.value(prefix, "str")),
        )

    def quantity(self, value: str, modifier: str | None, ix: str, param: SearchParam) -> Node:
        prefix, text = split_prefix(value)
        parts = split_unescaped(text, "|")
        exact, low, high = _search_number(parts[0])
        conditions = [self.number_condition(prefix, exact, low, high, _col(ix, "value"))]
        system = parts[1] if len(parts) > 1 else ""
        code = "|".join(parts[2:]) if len(parts) > 2 else ""
        if system:
            conditions.append(("=", _col(ix, "system"), self.value(system)))
        if code:
            unit_code = ("=", _col(ix, "unit_code"), self.value(code))
            conditions.append(
                unit_code
                if system
                else ("or", unit_code, ("=", _col(ix, "unit"), self.value(code)))
            )
        return ("and", *conditions)

    def starts_with(self, column: Node, prefix: str) -> Node:
        """`column` starts with `prefix`, as a range a B-tree serves even in a generic plan."""
        if prefix == "":
            return ("not null", column)
        last = ord(prefix[-1])
        if last >= 0x10FFFF:
            return ("like prefix", column, self.value(_like_escaped(prefix)))
        return (
            "and",
            (">=", column, self.value(prefix)),
            ("<", column, self.value(prefix[:-1] + chr(last + 1))),
        )

    def range_condition(
        self, prefix: str, low: Any, high: Any, r_low: Node, r_high: Node, *, approximate: Any
    ) -> Node:
        """R4 search prefixes on ranges: the parameter is [low, high), the resource
        [r_low, r_high)."""
        if prefix == "ap":
            # the ranges overlap once the parameter's is widened by the slack
            return (
                "and",
                ("<", r_low, self.value(_widened(high, approximate))),
                (">", r_high, self.value(_widened(low, -approximate))),
            )
        if prefix in {"gt", "lt", "sa", "eb"}:
            column, operator, bound = {
                "gt": (r_high, ">", high),
                "lt": (r_low, "<", low),
                "sa": (r_low, ">=", high),
                "eb": (r_high, "<=", low),
            }[prefix]
            return (operator, column, self.value(bound))
        low_value, high_value = self.value(low), self.value(high)
        equal = ("and", (">=", r_low, low_value), ("<=", r_high, high_value))
        if prefix == "ne":
            return ("not", equal)
        if prefix == "ge":
            return ("or", (">", r_high, high_value), equal)
        if prefix == "le":
            return ("or", ("<", r_low, low_value), equal)
        return equal  # eq

    def number_condition(
        self, prefix: str, exact: Decimal, low: Decimal, high: Decimal, value: Node
    ) -> Node:
        """R4 number prefixes: `eq` means within the precision of the value given."""
        if prefix == "eq":
            return ("and", (">=", value, self.value(low)), ("<", value, self.value(high)))
        if prefix == "ne":
            return ("or", ("<", value, self.value(low)), (">=", value, self.value(high)))
        if prefix in {"gt", "sa"}:
            return (">", value, self.value(exact))
        if prefix in {"lt", "eb"}:
            return ("<", value, self.value(exact))
        if prefix == "ge":
            return (">=", value, self.value(exact))
        if prefix == "le":
            return ("<=", value, self.value(exact))
        slack = abs(exact) / 10
        return (
            "and",
            (">=", value, self.value(exact - slack)),
            ("<=", value, self.value(exact + slack)),
        )

    # --- chains, reverse chains -----------------------------------------------------------

    def chain(self, row: str, c: Criterion) -> Node:
        ref = self.alias("reference")
        alternatives = []
        for inner in c.chain:
            target = self.alias("resources")
            alternatives.append(
                (
                    "exists",
                    ("=", _col(target, "resource_type"), _col(ref, "target_type")),
                    ("=", _col(target, "id"), _col(ref, "target_id")),
                    *self.visible(target, [inner.resource_type]),
                    self.criterion(target, inner),
                )
            )
        return (
            "exists",
            ("=", _col(ref, "resource_type"), _col(row, "resource_type")),
            ("=", _col(ref, "id"), _col(row, "id")),
            ("=", _col(ref, "code"), self.value(c.param.code)),
            ("or", *alternatives),
        )

    def has(self, row: str, c: Criterion) -> Node:
        assert c.has_type is not None
        ref = self.alias("reference")
        source = self.alias("resources")
        return (
            "exists",
            ("=", _col(ref, "resource_type"), self.value(c.has_type)),
            ("=", _col(ref, "code"), self.value(c.param.code)),
            ("=", _col(ref, "target_type"), _col(row, "resource_type")),
            ("=", _col(ref, "target_id"), _col(row, "id")),
            ("=", _col(source, "resource_type"), _col(ref, "resource_type")),
            ("=", _col(source, "id"), _col(ref, "id")),
            *self.visible(source, [c.has_type]),
            self.criterion(source, c.chain[0]),
        )

    # --- the main query ---------------------------------------------------------------------

    def where(self, row: str, query: SearchQuery) -> list[Node]:
        conditions = self.visible(row, query.resource_types)
        if query.compartment is not None:
            compartment = self.value([query.compartment])
            conditions.append(("contains", _col(row, "compartments"), compartment))
        conditions.extend(self.ids(row, ids) for ids in query.ids)
        conditions.extend(self.last_updated(row, values) for values in query.last_updated)
        conditions.extend(self.criterion(row, c) for c in query.criteria)
        return conditions

    def sort_expressions(self, row: str, query: SearchQuery) -> list[tuple[Node, bool]]:
        keys: list[tuple[Node, bool]] = []
        for key in query.sort:
            code, descending = key.param.code, key.descending
            if code == "_id":
                keys.append((_col(row, "id"), descending))
                continue
            if code == "_lastUpdated":
                keys.append((_col(row, "last_updated"), descending))
                continue
            ix = self.alias(key.param.type)
            if key.param.type == "date":
                column = _col(ix, "high" if descending else "low")
            elif key.param.type == "reference":
                column = _col(ix, "target_id")
            else:
                column = _col(ix, "value")
            code_value = self.value(code)
            aggregate = (
                "aggregate",
                "max" if descending else "min",
                column,
                ("=", _col(ix, "resource_type"), _col(row, "resource_type")),
                ("=", _col(ix, "id"), _col(row, "id")),
                ("=", _col(ix, "code"), code_value),
            )
            keys.append((aggregate, descending))
            if key.param.type in _BOUNDED_KEYS:
                # texts whose keys are equal and may be the start of longer ones: by the whole
                keys.append((("whole", key.param.type, code_value, descending), descending))
        return keys

    def whole_of(self, key: Node, resource_type: str, id: str) -> Node:
        """The whole text that a `("whole", ...)` sort key has for the resource `type/id` (for
        a cursor, which carries no text longer than a key). The cursor comes from the client:
        only a resource the caller may see answers, so that no cursor reads another's values."""
        _, kind, code_value, descending = key
        ix = self.alias(kind)
        target = self.alias("resources")
        return (
            "aggregate",
            "max" if descending else "min",
            ("coalesce", _col(ix, "value_full"), _col(ix, "value")),
            ("=", _col(ix, "resource_type"), self.value(resource_type)),
            ("=", _col(ix, "id"), self.value(id)),
            ("=", _col(ix, "code"), code_value),
            (
                "exists",
                ("=", _col(target, "resource_type"), _col(ix, "resource_type")),
                ("=", _col(target, "id"), _col(ix, "id")),
                *self.visible(target, [resource_type]),
            ),
        )

    def after(
        self,
        keys: Sequence[tuple[Node, bool]],
        last: Sequence[Any],
        looked_up: Mapping[int, Node] | None = None,
    ) -> Node:
        """Rows strictly after `last` in the order of `keys` (NULLs last in both directions).
        `looked_up`: positions whose value is a node rather than the one in `last`."""
        found = looked_up or {}
        values: list[Node | None] = [
            found[i] if i in found else None if value is None else self.value(value)
            for i, value in enumerate(last)
        ]
        alternatives = []
        for i, (expression, descending) in enumerate(keys):
            prior = [self.same(keys[j][0], values[j]) for j in range(i)]
            value = values[i]
            if value is None:
                continue  # nothing sorts after NULL at this position
            later = ("<" if descending else ">", expression, value)
            alternatives.append(("and", *prior, ("or", later, ("null", expression))))
        return ("or", *alternatives) if alternatives else FALSE

    def same(self, expression: Node, value: Node | None) -> Node:
        return ("null", expression) if value is None else ("=", expression, value)


# Index kinds whose sort value is a bounded key (storage/search_index.py), then the whole text.
_BOUNDED_KEYS = frozenset({"string", "token", "uri"})


def _search_number(text: str) -> tuple[Decimal, Decimal, Decimal]:
    """A number of a search and its range; the index compares KEY_DIGITS significant digits
    (storage/search_index.py), so a number with more is refused rather than rounded."""
    found = number_range(text)
    if found is None:
        raise BadRequest(f"`{text}` is not a number", code="value")
    if len(found[0].as_tuple().digits) >= KEY_DIGITS:
        raise BadRequest(
            f"`{text[:20]}...` has more than {KEY_DIGITS - 1} significant digits", code="value"
        )
    return found


@cache
def _implicit_system(param: SearchParam) -> bool:
    """Whether the parameter selects plain `code` (or boolean) elements, whose system is implied."""
    assert param.expression is not None
    return set(result_types(param.expression, context_types=(param.resource_type,))) <= {
        "code",
        "boolean",
    }


def _date_slack(low: datetime, high: datetime, now: datetime) -> timedelta:
    """`ap` on dates: 10 % of the distance from now, at least the value's own precision."""
    distance = abs(now - low) if DATE_MIN < low < DATE_MAX else timedelta(0)
    return max(distance / 10, high - low)


def _widened(bound: Any, slack: Any) -> Any:
    """`bound + slack`; a date held to the calendar's ends (`ap9999-12-31` would leave it)."""
    try:
        return bound + slack
    except OverflowError:
        return DATE_MAX if slack > timedelta(0) else DATE_MIN


def _without_modifier(c: Criterion) -> Criterion:
    return Criterion(c.resource_type, c.param, None, c.values)


# --- from a shape to SQL ------------------------------------------------------------------------

# Shapes whose SQL is kept; a shape with more values than MAX_CACHED_VALUES is compiled each time,
# so a cached entry stays small (its SQL is a few kB) whatever a client sends.
STATEMENT_CACHE_SIZE = 1024
MAX_CACHED_VALUES = 100

_TABLES: Mapping[str, FromClause] = {
    "aud": audit_events,
    "r": resources,
    "t": resources,
    "res": resources,
    **{kind[:3]: table for kind, table in SEARCH_TABLES.items()},
}
_TYPES: Mapping[str, TypeEngine[Any]] = {
    "str": String(),
    "varchar[]": ARRAY(String),
    "text[]": ARRAY(Text),
    "interval": Interval(),
    "int": Integer(),
}
_COMPARE: Mapping[str, Callable[[Any, Any], ColumnElement[bool]]] = {
    "=": lambda a, b: a == b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
}

Binder: TypeAlias = Callable[[str, TypeEngine[Any]], BindParameter[Any]]


def _placeholder(name: str, type_: TypeEngine[Any]) -> BindParameter[Any]:
    return bindparam(name, type_=type_)


def _bound_values(values: Mapping[str, Any]) -> Binder:
    """Parameters that carry their values, for a clause that goes into another statement."""

    def bind(name: str, type_: TypeEngine[Any]) -> BindParameter[Any]:
        return bindparam(name, values[name], type_=type_, unique=True)

    return bind


class _Builder:
    """SQLAlchemy Core for a shape. It sees parameter names only, never values."""

    def __init__(self, bind: Binder, froms: Mapping[str, FromClause] | None = None) -> None:
        self.bind = bind
        self.froms: dict[str, FromClause] = dict(froms or {})
        self.params: dict[str, BindParameter[Any]] = {}

    def table(self, alias: str) -> FromClause:
        found = self.froms.get(alias)
        if found is None:
            table = _TABLES[alias if alias in _TABLES else alias.rstrip("0123456789")]
            found = self.froms[alias] = table.alias(alias)
        return found

    def value(self, name: str, kind: str | None) -> BindParameter[Any]:
        found = self.params.get(name)
        if found is None:
            found = self.params[name] = self.bind(name, NULLTYPE if kind is None else _TYPES[kind])
        return found

    def expression(self, node: Node) -> Any:
        op = node[0]
        if op == "col":
            return self.table(node[1]).c[node[2]]
        if op == "value":
            return self.value(node[1], node[2])
        if op == "true":
            return true()
        if op == "false":
            return false()
        if op == "and":
            return and_(*self.all(node[1:]))
        if op == "or":
            return or_(*self.all(node[1:]))
        if op == "not":
            return not_(self.expression(node[1]))
        if op in _COMPARE:
            return _COMPARE[op](self.expression(node[1]), self.expression(node[2]))
        if op == "null":
            return self.expression(node[1]).is_(None)
        if op == "not null":
            return self.expression(node[1]).is_not(None)
        if op == "is false":
            return self.expression(node[1]).is_(False)
        if op == "any":
            return self.expression(node[1]) == any_(self.expression(node[2]))
        if op == "overlap":
            return self.expression(node[1]).overlap(self.expression(node[2]))
        if op == "any id":
            # an element of the array (`Type/id`) whose id is one of the values
            elements = (
                func.unnest(self.expression(node[1]))
                .table_valued("element")
                .render_derived(name="elements")
            )
            return exists(
                select(literal_column("1"))
                .select_from(elements)
                .where(
                    func.split_part(elements.c.element, literal_column("'/'"), literal_column("2"))
                    == any_(self.expression(node[2]))
                )
            )
        if op == "contains":
            return self.expression(node[1]).contains(self.expression(node[2]))
        if op == "like contains":
            return self.expression(node[1]).contains(self.expression(node[2]), escape=_ESCAPE)
        if op == "like prefix":
            return self.expression(node[1]).startswith(self.expression(node[2]), escape=_ESCAPE)
        if op == "starts_with":
            return func.starts_with(self.expression(node[1]), self.expression(node[2]))
        if op == "coalesce":
            return func.coalesce(self.expression(node[1]), self.expression(node[2]))
        if op == "+":
            return self.expression(node[1]) + self.expression(node[2])
        if op == "exists":
            return exists().where(*self.all(node[1:]))
        if op == "aggregate":
            column = self.expression(node[2])
            aggregate = func.max(column) if node[1] == "max" else func.min(column)
            return select(aggregate).where(*self.all(node[3:])).scalar_subquery()
        raise AssertionError(f"no such shape: {op!r}")

    def all(self, nodes: Sequence[Node]) -> list[Any]:
        return [self.expression(n) for n in nodes]

    def statement(self, shape: Node) -> Any:
        kind = shape[0]
        if kind == "search":
            return self.search(*shape[1:])
        if kind == "count":
            row = self.table("r")
            return select(func.count()).select_from(row).where(*self.all(shape[1]))
        if kind == "audit count":
            row = self.table("aud")
            return select(func.count()).select_from(row).where(*self.all(shape[1]))
        if kind == "audit search":
            return self.audit_search(*shape[1:])
        if kind == "audit read":
            row = self.table("aud")
            return select(
                row.c.last_updated, cast(row.c.content, Text).label("content"), row.c.compartments
            ).where(*self.all(shape[1]))
        assert kind == "include"
        _, link, visible, limit = shape
        target = self.table("t")
        statement = (
            select(
                target.c.resource_type,
                target.c.id,
                cast(target.c.content, Text).label("content"),
                target.c.compartments,
            )
            .where(exists().where(*self.all(link)), *self.all(visible))
            .order_by(target.c.resource_type, target.c.id)
        )
        return statement if limit is None else statement.limit(self.expression(limit))

    def search(
        self,
        conditions: Sequence[Node],
        sort: Sequence[tuple[Node, bool]],
        after: Node | None,
        limit: Node,
    ) -> Any:
        row = self.table("r")
        whole = {i for i, (k, _) in enumerate(sort) if k[0] == "whole"}
        keys = [
            *((None if i in whole else self.expression(k), d) for i, (k, d) in enumerate(sort)),
            (row.c.resource_type, False),
            (row.c.id, False),
        ]
        columns = [
            expression.label(f"k{i}")
            for i, (expression, _) in enumerate(keys)
            if expression is not None
        ]
        matches = (
            select(row.c.resource_type, row.c.id, *columns)
            .where(*self.all(conditions))
            .subquery("matches")
        )
        if whole:
            matches = self.whole_keys(matches, sort, whole, len(keys))
        self.froms["matches"] = matches
        keyed = [(matches.c[f"k{i}"], descending) for i, (_, descending) in enumerate(keys)]
        page = select(*matches.c)
        if after is not None:
            page = page.where(self.expression(after))
        page_keys = page.order_by(*_order(keyed)).limit(self.expression(limit)).subquery("page")
        # The content of the page's rows only: turning jsonb into text is the costly part of a row.
        content = resources.alias("content")
        paged = [(page_keys.c[f"k{i}"], descending) for i, (_, descending) in enumerate(keys)]
        # a whole text longer than a key stays out of the cursor (whole_of looks it up)
        returned = [
            case((func.octet_length(k) <= literal_column(str(KEY_BYTES)), k)) if i in whole else k
            for i, (k, _) in enumerate(paged)
        ]
        return (
            select(
                page_keys.c.resource_type,
                page_keys.c.id,
                cast(content.c.content, Text).label("content"),
                content.c.compartments,
                *returned,
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

    def audit_search(
        self,
        conditions: Sequence[Node],
        sort: Sequence[tuple[Node, bool]],
        after: Node | None,
        limit: Node,
    ) -> Any:
        """The page of an AuditEvent search: one table, its rows in key order, then the id."""
        row = self.table("aud")
        keys = [*((self.expression(k), d) for k, d in sort), (row.c.id, False)]
        conditions = [*conditions, *([after] if after is not None else [])]
        return (
            select(
                literal_column("'AuditEvent'").label("resource_type"),
                row.c.id,
                cast(row.c.content, Text).label("content"),
                row.c.compartments,
                *(k.label(f"k{i}") for i, (k, _) in enumerate(keys)),
            )
            .where(*self.all(conditions))
            .order_by(*_order(keys))
            .limit(self.expression(limit))
        )

    def whole_keys(
        self, matches: Any, sort: Sequence[tuple[Node, bool]], whole: set[int], count: int
    ) -> Any:
        """`matches` with the `("whole", ...)` sort keys added after the key before each: that
        key itself when it is too short to be the start of a longer text, else the whole text,
        looked up only then. `OFFSET 0` keeps PostgreSQL from computing the keys twice."""
        fenced = matches.element.offset(literal_column("0")).subquery("keyed")
        columns: list[Any] = [fenced.c.resource_type, fenced.c.id]
        for i in range(count):
            if i not in whole:
                columns.append(fenced.c[f"k{i}"].label(f"k{i}"))
                continue
            _, kind, code_value, descending = sort[i][0]
            table = SEARCH_TABLES[kind].alias(f"whole{i}")
            text = func.coalesce(table.c.value_full, table.c.value)
            looked_up = (
                select(func.max(text) if descending else func.min(text))
                .where(
                    table.c.resource_type == fenced.c.resource_type,
                    table.c.id == fenced.c.id,
                    table.c.code == self.expression(code_value),
                )
                .scalar_subquery()
            )
            key = fenced.c[f"k{i - 1}"]
            columns.append(
                case(
                    (func.octet_length(key) > literal_column(str(UNAMBIGUOUS_BYTES)), looked_up),
                    else_=key,
                ).label(f"k{i}")
            )
        return select(*columns).subquery("matches")


def _order(keys: Sequence[tuple[ColumnElement[Any], bool]]) -> list[Any]:
    return [k.desc().nulls_last() if descending else k.asc().nulls_last() for k, descending in keys]


def _compile(shape: Node) -> str:
    """The SQL of a shape. Every parameter in it must be one the shape names: a value that got
    into the statement any other way would be cached with it and serve other requests."""
    builder = _Builder(_placeholder)
    sql, names = compile_named(builder.statement(shape))
    stray = names - builder.params.keys()
    if stray:
        raise AssertionError(f"values outside the search's shape: {sorted(stray)}")
    return sql


_compile_cached = lru_cache(maxsize=STATEMENT_CACHE_SIZE)(_compile)


def clear_statement_cache() -> None:
    _compile_cached.cache_clear()


def statement_cache_info() -> Any:
    """Hits, misses and size of the statement cache (`functools` cache info)."""
    return _compile_cached.cache_info()


# --- entry points ----------------------------------------------------------------------------


def sort_keys(row: Sequence[Any]) -> tuple[Any, ...]:
    """The sort keys of a row of `search_statement`, what a cursor after it holds: the columns
    after (resource_type, id, content, compartments)."""
    return tuple(row[4:])


def search_statement(
    query: SearchQuery, grants: Grants, *, local_bases: Sequence[str] = (), now: datetime
) -> tuple[Query, int]:
    """The page query: rows of (resource_type, id, content, compartments, sort keys...), `count + 1` of them
    so the caller knows whether there is a next page. Returns it and the number of keys.
    `now` is the request's clock (the base of `ap` on dates)."""
    if query.resource_types == ("AuditEvent",):
        return audit_search_statement(query, grants, local_bases=local_bases, now=now)
    planner = _Planner(grants, local_bases, now)
    conditions = planner.where("r", query)
    sort = planner.sort_expressions("r", query)
    keys = len(sort) + 2  # then type and id
    after = None
    if query.cursor is not None:
        last = decode_cursor(query.cursor, keys)
        descending = [d for _, d in sort] + [False, False]
        keyed = [(_col("matches", f"k{i}"), d) for i, d in enumerate(descending)]
        # a whole text longer than a key is not in the cursor: the last row's is looked up
        if last[-2] not in query.resource_types or not isinstance(last[-1], str):
            raise BadRequest("`_page` does not belong to this search", code="value")
        looked_up = {
            i: planner.whole_of(node, str(last[-2]), str(last[-1]))
            for i, (node, _) in enumerate(sort)
            if node[0] == "whole" and last[i] is None and last[i - 1] is not None
        }
        after = planner.after(keyed, last, looked_up)
    limit = planner.value(query.count + 1, "int")
    return planner.query(("search", tuple(conditions), tuple(sort), after, limit)), keys


def count_statement(
    query: SearchQuery, grants: Grants, *, local_bases: Sequence[str] = (), now: datetime
) -> Query:
    if query.resource_types == ("AuditEvent",):
        return audit_count_statement(query, grants, local_bases=local_bases, now=now)
    planner = _Planner(grants, local_bases, now)
    return planner.query(("count", tuple(planner.where("r", query))))


def include_statement(
    include: Include,
    sources: Sequence[tuple[str, str]],
    grants: Grants,
    *,
    limit: int | None = None,
) -> Query:
    """Resources the page's resources refer to (`_include`) or that refer to them
    (`_revinclude`), visible to the caller; at most `limit` of them."""
    planner = _Planner(grants, ())
    ref = planner.alias("reference")
    target = "t"
    by_type: dict[str, list[str]] = {}
    for resource_type, id in sources:
        by_type.setdefault(resource_type, []).append(id)
    link: list[Node]
    if include.reverse:
        assert include.param is not None
        # the page's resources, as targets of the source type's reference parameter
        pages = [
            (
                "and",
                ("=", _col(ref, "target_type"), planner.value(t)),
                ("any", _col(ref, "target_id"), planner.value(ids, "varchar[]")),
            )
            for t, ids in by_type.items()
        ]
        link = [
            ("=", _col(ref, "resource_type"), planner.value(include.source_type)),
            ("=", _col(ref, "code"), planner.value(include.param.code)),
            ("or", *pages),
            ("=", _col(target, "resource_type"), _col(ref, "resource_type")),
            ("=", _col(target, "id"), _col(ref, "id")),
        ]
        if include.target_type:
            link.append(("=", _col(ref, "target_type"), planner.value(include.target_type)))
    else:
        pages = [
            (
                "and",
                ("=", _col(ref, "resource_type"), planner.value(t)),
                ("any", _col(ref, "id"), planner.value(ids, "varchar[]")),
            )
            for t, ids in by_type.items()
            if include.param is None or t == include.source_type
        ]
        link = [
            ("or", *pages),
            ("=", _col(target, "resource_type"), _col(ref, "target_type")),
            ("=", _col(target, "id"), _col(ref, "target_id")),
        ]
        if include.param is not None:
            link.append(("=", _col(ref, "code"), planner.value(include.param.code)))
        if include.target_type:
            link.append(("=", _col(ref, "target_type"), planner.value(include.target_type)))
    types = include_types(include)
    visible = [("is false", _col(target, "deleted")), planner.access(target, types)]
    if include.reverse:
        visible.append(("=", _col(target, "resource_type"), planner.value(include.source_type)))
    bound = None if limit is None else planner.value(limit, "int")
    return planner.query(("include", tuple(link), tuple(visible), bound))


def search_types(query: SearchQuery) -> frozenset[str]:
    """The resource types whose grants a search (or count) statement of `query` needs: its own,
    and those its chains and `_has` criteria look into. The caller computes them first."""
    types = set(query.resource_types)
    pending = list(query.criteria)
    while pending:
        criterion = pending.pop()
        if criterion.has_type is not None:
            types.add(criterion.has_type)
        types.update(inner.resource_type for inner in criterion.chain)
        pending.extend(criterion.chain)
        for alternative in criterion.parts:
            pending.extend(alternative)
    return frozenset(types)


def include_types(include: Include) -> list[str] | None:
    """The resource types whose grants an `include_statement` of `include` needs (None: every
    type, an `_include=*` or a parameter of any target type)."""
    if include.reverse:
        return [include.source_type]
    if include.target_type:
        return [include.target_type]
    types = list(include.param.targets) if include.param is not None else []
    return types or None


# --- AuditEvents ---------------------------------------------------------------------------------
#
# AuditEvents are rows of their own table (`audit_events`, partitioned by month of `recorded`),
# whose searched values are columns of the row (storage/audit_events.py `row_of`): a criterion is
# a condition on the row, never a join with the index tables. The parser lets through only what
# these columns answer (search/query.py AUDIT_EVENT_SEARCH). Conditions on `recorded` are plain
# comparisons with the column, so PostgreSQL leaves out the months a `date=` excludes.

_AUDIT_ROW = "aud"
# reference parameters: the array column of the row that holds their references
_AUDIT_REFERENCES = {"patient": "patients", "agent": "agents", "entity": "entities"}
# token parameters kept as arrays of `code`, `system|code`, `system|` (storage/audit_events.py)
_AUDIT_TOKENS = {"type": "types", "subtype": "subtypes", "_tag": "tags"}
# codes whose system is implied (R4 `code` elements): a column of the code alone
_AUDIT_CODES = {"action": "action", "outcome": "outcome"}


class _AuditPlanner(_Planner):
    """The shape of an AuditEvent statement: the same grants, as conditions on one row."""

    def visible(self, row: str, types: Sequence[str]) -> list[Node]:
        return [self.access(row, types)]

    def grant_clause(self, row: str, grant: Grant) -> Node:
        # no account creates an AuditEvent (audit/trail.py): a creator grant admits none
        return super().grant_clause(row, replace(grant, creators=frozenset()))

    def where(self, row: str, query: SearchQuery) -> list[Node]:
        conditions = self.visible(row, query.resource_types)
        if query.compartment is not None:
            compartment = self.value([query.compartment])
            conditions.append(("contains", _col(row, "compartments"), compartment))
        for ids in query.ids:
            conditions.append(("any", _col(row, "id"), self.value(list(ids), "varchar[]")))
        for values in query.last_updated:
            conditions.append(("or", *(self.moment(_col(row, "last_updated"), v) for v in values)))
        conditions.extend(self.criterion(row, c) for c in query.criteria)
        return conditions

    def moment(self, column: Node, value: str) -> Node:
        """A date search on an instant column: the resource's range is [t, t + 1 µs), so each
        prefix is one comparison with the column itself (which partition pruning needs)."""
        prefix, text = split_prefix(value)
        found = date_range(text)
        if found is None:
            raise BadRequest(f"`{text}` is not a FHIR date", code="value")
        low, high = found
        if prefix == "ap":
            slack = self.date_slack(low, high)
            return (
                "and",
                (">=", column, self.value(_widened(low, -slack))),
                ("<", column, self.value(_widened(high, slack))),
            )
        if prefix in {"gt", "sa"}:
            return (">=", column, self.value(high))
        if prefix in {"lt", "eb"}:
            return ("<", column, self.value(low))
        if prefix == "ge":
            return (">=", column, self.value(low))
        if prefix == "le":
            return ("<", column, self.value(high))
        equal = ("and", (">=", column, self.value(low)), ("<", column, self.value(high)))
        return ("not", equal) if prefix == "ne" else equal

    def criterion(self, row: str, c: Criterion) -> Node:
        code = c.param.code
        if code == "date":
            return ("or", *(self.moment(_col(row, "recorded"), v) for v in c.values))
        if code in _AUDIT_REFERENCES:
            return self.references(_col(row, _AUDIT_REFERENCES[code]), c)
        if code in _AUDIT_TOKENS:
            tokens = [v.replace("\\|", "|").replace("\\,", ",") for v in c.values]
            return ("overlap", _col(row, _AUDIT_TOKENS[code]), self.value(tokens, "text[]"))
        if code in _AUDIT_CODES:
            column = _col(row, _AUDIT_CODES[code])
            alternatives: list[Node] = []
            for value in c.values:
                _system, bar, rest = value.rpartition("|")
                if bar and rest == "":
                    alternatives.append(("not null", column))  # `system|`: any code
                else:
                    alternatives.append(("=", column, self.value(rest)))
            return ("or", *alternatives)
        if code == "policy":
            return ("overlap", _col(row, "policies"), self.value(list(c.values), "text[]"))
        # the parser admits nothing else (search/query.py AUDIT_EVENT_SEARCH)
        raise BadRequest(f"search parameter `{code}` is not supported for AuditEvent")

    def references(self, column: Node, c: Criterion) -> Node:
        """`Type/id`, `id` with a `:Type` modifier or alone (any type), or an absolute URL (this
        server's base stripped), matched against the references as the event names them."""
        wanted: list[str] = []
        any_type: list[str] = []
        for value in c.values:
            local = self.local_reference(value)
            if local is None:
                wanted.append(value.split("|")[0])
                continue
            target_type, target_id = local
            if c.modifier is not None and target_type is not None and target_type != c.modifier:
                continue
            target_type = target_type or c.modifier
            if target_type is None:
                any_type.append(target_id)
            else:
                wanted.append(f"{target_type}/{target_id}")
        alternatives: list[Node] = []
        if wanted:
            alternatives.append(("overlap", column, self.value(wanted, "text[]")))
        if any_type:
            # rare (a bare id names any type): not served by the index
            alternatives.append(("any id", column, self.value(any_type, "text[]")))
        return ("or", FALSE, *alternatives)

    def sort_expressions(self, row: str, query: SearchQuery) -> list[tuple[Node, bool]]:
        columns = {"date": "recorded", "_lastUpdated": "last_updated", "_id": "id"}
        return [(_col(row, columns[k.param.code]), k.descending) for k in query.sort]


def audit_search_statement(
    query: SearchQuery, grants: Grants, *, local_bases: Sequence[str] = (), now: datetime
) -> tuple[Query, int]:
    """`search_statement` of an AuditEvent search: rows of ('AuditEvent', id, content,
    compartments, sort keys..., id), `count + 1` of them."""
    planner = _AuditPlanner(grants, local_bases, now)
    conditions = planner.where(_AUDIT_ROW, query)
    sort = [*planner.sort_expressions(_AUDIT_ROW, query), (_col(_AUDIT_ROW, "id"), False)]
    after = None
    if query.cursor is not None:
        last = decode_cursor(query.cursor, len(sort))
        if not isinstance(last[-1], str) or any(
            v is None or isinstance(v, str) != (node[2] == "id")
            for (node, _), v in zip(sort, last, strict=True)
        ):
            raise BadRequest("`_page` does not belong to this search", code="value")
        after = planner.after(sort, last)
    limit = planner.value(query.count + 1, "int")
    shape = ("audit search", tuple(conditions), tuple(sort[:-1]), after, limit)
    return planner.query(shape), len(sort)


def audit_count_statement(
    query: SearchQuery, grants: Grants, *, local_bases: Sequence[str] = (), now: datetime
) -> Query:
    planner = _AuditPlanner(grants, local_bases, now)
    return planner.query(("audit count", tuple(planner.where(_AUDIT_ROW, query))))


def audit_read_statement(
    id: str, grants: Grants, window: tuple[datetime, datetime] | None = None
) -> Query:
    """The AuditEvent `id` if the caller may see it: (last_updated, content, compartments). `window`: the
    instants its `recorded` lies in (from the id, storage/audit_events.py), which leaves every
    other partition out."""
    planner = _AuditPlanner(grants, ())
    conditions: list[Node] = [
        ("=", _col(_AUDIT_ROW, "id"), planner.value(id, "str")),
        *planner.visible(_AUDIT_ROW, ["AuditEvent"]),
    ]
    if window is not None:
        conditions.append((">=", _col(_AUDIT_ROW, "recorded"), planner.value(window[0])))
        conditions.append(("<", _col(_AUDIT_ROW, "recorded"), planner.value(window[1])))
    return planner.query(("audit read", tuple(conditions)))
