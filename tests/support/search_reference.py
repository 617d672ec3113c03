"""A plain-Python reference evaluator of the FHIR search semantics the server implements.

It answers a search (``[("name", "mul"), ("_sort", "-birthdate")]``) over a list of parsed
resources, the way the server's SQL search is meant to, so a property test can compare the two.
It is deliberately naive: every parameter is evaluated by walking the resource JSON, with the
rules written out one by one; nothing here is shared with ``fhir_server``.

Only the parameters the property test generates are known (:data:`PARAMETERS`); anything else
raises :class:`Unsupported`, so a typo in a test never silently matches everything.

The semantics, as specified for the server:

- a resource matches when, for every AND-ed parameter, one of the comma-separated values matches
  one of the resource's values for that parameter; results are ordered by id (plain string order)
  unless ``_sort`` says otherwise;
- string: ``normalize`` (NFKD, combining marks dropped, casefold, whitespace collapsed and stripped)
  prefix match; ``:exact`` plain equality; ``:contains`` substring of the normalized forms;
- token: ``code``, ``system|code``, ``|code`` (no system), ``system|``; ``:not`` keeps the resources
  with no matching value, including those without the element;
- ``:missing=true|false``: no value / at least one value;
- date: every value is a half-open UTC range at its precision; ``eq ne gt lt ge le sa eb`` compare
  the resource range R with the query range P (see :func:`date_matches`);
- reference: ``Type/id`` or a bare ``id`` naming the target;
- quantity: exact decimal value against the query number's precision range for ``eq``/``ne``, plain
  comparison for the others, and optionally ``|system|code``;
- ``_sort``: ascending by each resource's smallest value, descending by its largest (for dates:
  the smallest low, the largest high), resources without a value last, ties by id ascending.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any

Resource = dict[str, Any]
Instant = int | float  # microseconds since 1970-01-01T00:00:00Z; float only for -inf and +inf

NEG_INF: float = float("-inf")
POS_INF: float = float("inf")

DATE_PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb")
RESULT_PARAMETERS = frozenset({"_count", "_sort"})


class Unsupported(ValueError):
    """A parameter, modifier or value the reference evaluator does not know."""


# --------------------------------------------------------------------------------------- strings


def normalize(text: str) -> str:
    """NFKD, combining marks dropped, casefolded, whitespace collapsed, stripped."""
    decomposed = unicodedata.normalize("NFKD", text)
    bare = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(bare.casefold().split())


def string_matches(modifier: str | None, values: Sequence[str], query: str) -> bool:
    if modifier is None:
        q = normalize(query)
        return any(normalize(v).startswith(q) for v in values)
    if modifier == "exact":
        return any(v == query for v in values)
    if modifier == "contains":
        q = normalize(query)
        return any(q in normalize(v) for v in values)
    raise Unsupported(f"string modifier :{modifier}")


# ---------------------------------------------------------------------------------------- tokens


@dataclass(frozen=True)
class Token:
    system: str | None
    code: str | None


def token_matches(token: Token, query: str) -> bool:
    if "|" not in query:
        return token.code == query
    system, code = query.split("|", 1)
    if system == "":
        return token.system is None and token.code == code
    if code == "":
        return token.system == system
    return token.system == system and token.code == code


# ----------------------------------------------------------------------------------------- dates

_DATE = re.compile(
    r"(?P<year>\d{4})"
    r"(?:-(?P<month>\d{2})"
    r"(?:-(?P<day>\d{2})"
    r"(?:T(?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:\.(?P<fraction>\d{1,6}))?)?"
    r"(?P<zone>Z|[+-]\d{2}:\d{2})?"
    r")?)?)?"
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def micros(moment: datetime) -> int:
    """Microseconds since the epoch of an aware datetime."""
    return (moment - _EPOCH) // _MICROSECOND


def moment(instant: int) -> datetime:
    """The UTC datetime of microseconds since the epoch."""
    return _EPOCH + instant * _MICROSECOND


@dataclass(frozen=True)
class DateRange:
    """The half-open range [low, high) a date, dateTime or Period stands for, in UTC."""

    low: Instant
    high: Instant

    def __str__(self) -> str:
        return f"[{show_instant(self.low)}, {show_instant(self.high)})"


def show_instant(instant: Instant) -> str:
    if isinstance(instant, float):
        return "-inf" if instant < 0 else "+inf"
    return moment(instant).isoformat().replace("+00:00", "Z")


def date_range(text: str) -> DateRange:
    """The range of a FHIR date or dateTime at its precision (a time without a zone is UTC)."""
    match = _DATE.fullmatch(text)
    if match is None:
        raise Unsupported(f"date {text!r}")
    g = match.groupdict()
    year = int(g["year"])
    if g["month"] is None:
        low = datetime(year, 1, 1, tzinfo=UTC)
        return DateRange(micros(low), micros(datetime(year + 1, 1, 1, tzinfo=UTC)))
    month = int(g["month"])
    if g["day"] is None:
        low = datetime(year, month, 1, tzinfo=UTC)
        high = datetime(year + month // 12, month % 12 + 1, 1, tzinfo=UTC)
        return DateRange(micros(low), micros(high))
    day = int(g["day"])
    if g["hour"] is None:
        low = datetime(year, month, day, tzinfo=UTC)
        return DateRange(micros(low), micros(low + timedelta(days=1)))
    zone = g["zone"] or "Z"
    offset = timedelta(0)
    if zone != "Z":
        sign = 1 if zone[0] == "+" else -1
        offset = sign * timedelta(hours=int(zone[1:3]), minutes=int(zone[4:6]))
    local = datetime(year, month, day, int(g["hour"]), int(g["minute"]), tzinfo=UTC)
    start = micros(local - offset)
    if g["second"] is None:
        return DateRange(start, start + 60_000_000)
    start += int(g["second"]) * 1_000_000
    fraction = g["fraction"]
    if fraction is None:
        return DateRange(start, start + 1_000_000)
    start += int(fraction.ljust(6, "0"))
    return DateRange(start, start + 10 ** (6 - len(fraction)))


def period_range(period: dict[str, Any]) -> DateRange:
    low = date_range(period["start"]).low if "start" in period else NEG_INF
    high = date_range(period["end"]).high if "end" in period else POS_INF
    return DateRange(low, high)


def split_prefix(value: str) -> tuple[str, str]:
    if value[:2] in DATE_PREFIXES and len(value) > 2 and (value[2].isdigit() or value[2] in "+-."):
        return value[:2], value[2:]
    if value[:2] == "ap":
        raise Unsupported("the ap prefix")
    return "eq", value


def date_matches(prefix: str, r: DateRange, p: DateRange) -> bool:
    eq = p.low <= r.low and r.high <= p.high
    gt = r.high > p.high
    lt = r.low < p.low
    return {
        "eq": eq,
        "ne": not eq,
        "gt": gt,
        "lt": lt,
        "ge": gt or eq,
        "le": lt or eq,
        "sa": r.low >= p.high,
        "eb": r.high <= p.low,
    }[prefix]


# ------------------------------------------------------------------------------------ quantities


@dataclass(frozen=True)
class Quantity:
    value: Decimal
    system: str | None
    code: str | None
    unit: str | None


def parse_decimal(text: str) -> Decimal:
    try:
        number = Decimal(text)
    except InvalidOperation:
        raise Unsupported(f"number {text!r}") from None
    if not number.is_finite():
        raise Unsupported(f"number {text!r}")
    return number


def precision_range(number: Decimal) -> tuple[Decimal, Decimal]:
    """[n - half a unit of the last digit, n + half a unit): "5" -> [4.5, 5.5)."""
    exponent = number.as_tuple().exponent
    assert isinstance(exponent, int)
    half = Decimal(5).scaleb(exponent - 1)
    return number - half, number + half


def quantity_matches(quantity: Quantity, query: str) -> bool:
    prefix, rest = split_prefix(query)
    parts = rest.split("|")
    if len(parts) == 3:
        number_text, system, code = parts
        if system and quantity.system != system:
            return False
        if code and (
            quantity.code != code if system else code not in (quantity.code, quantity.unit)
        ):
            return False
    elif len(parts) == 1:
        number_text = parts[0]
    else:
        raise Unsupported(f"quantity {query!r}")
    n = parse_decimal(number_text)
    v = quantity.value
    low, high = precision_range(n)
    eq = low <= v < high
    return {
        "eq": eq,
        "ne": not eq,
        "gt": v > n,
        "lt": v < n,
        "ge": v >= n,
        "le": v <= n,
        "sa": v > n,
        "eb": v < n,
    }[prefix]


# ------------------------------------------------------------------------------------ references


@dataclass(frozen=True)
class Reference:
    target_type: str | None
    target_id: str | None


def reference_matches(reference: Reference, query: str) -> bool:
    if "/" in query:
        target_type, target_id = query.rsplit("/", 1)
        return reference.target_type == target_type and reference.target_id == target_id
    return reference.target_id == query


def _reference(value: dict[str, Any], only: str | None = None) -> list[Reference]:
    text = value.get("reference")
    if not isinstance(text, str) or text.count("/") != 1:
        return []
    target_type, target_id = text.split("/")
    if only is not None and target_type != only:
        return []
    return [Reference(target_type, target_id)]


# ------------------------------------------------------------------------------------ parameters


@dataclass(frozen=True)
class Parameter:
    kind: str  # string, token, date, reference, quantity
    values: Callable[[Resource], list[Any]]


def human_name_parts(resource: Resource, parts: Iterable[str]) -> list[str]:
    found: list[str] = []
    for name in resource.get("name", []):
        for part in parts:
            value = name.get(part)
            if isinstance(value, str):
                found.append(value)
            elif isinstance(value, list):
                found.extend(value)
    return found


def _codings(concept: dict[str, Any] | None) -> list[Token]:
    if concept is None:
        return []
    return [Token(c.get("system"), c.get("code")) for c in concept.get("coding", [])]


def _code(value: Any) -> list[Token]:
    if value is None:
        return []
    if isinstance(value, bool):
        return [Token(None, "true" if value else "false")]
    return [Token(None, str(value))]


def _identifiers(resource: Resource) -> list[Token]:
    return [Token(i.get("system"), i.get("value")) for i in resource.get("identifier", [])]


def _tags(resource: Resource) -> list[Token]:
    return [Token(t.get("system"), t.get("code")) for t in resource.get("meta", {}).get("tag", [])]


def _birth_date(resource: Resource) -> list[DateRange]:
    return [date_range(resource["birthDate"])] if "birthDate" in resource else []


def _effective(resource: Resource) -> list[DateRange]:
    if "effectiveDateTime" in resource:
        return [date_range(resource["effectiveDateTime"])]
    if "effectivePeriod" in resource:
        return [period_range(resource["effectivePeriod"])]
    return []


def _value_quantity(resource: Resource) -> list[Quantity]:
    q = resource.get("valueQuantity")
    if q is None or "value" not in q:
        return []
    return [Quantity(Decimal(str(q["value"])), q.get("system"), q.get("code"), q.get("unit"))]


_COMMON: dict[str, Parameter] = {
    "_id": Parameter("token", lambda r: _code(r.get("id"))),
    "_tag": Parameter("token", _tags),
}

PARAMETERS: dict[str, dict[str, Parameter]] = {
    "Patient": {
        **_COMMON,
        "name": Parameter(
            "string",
            lambda r: human_name_parts(r, ("family", "given", "prefix", "suffix", "text")),
        ),
        "family": Parameter("string", lambda r: human_name_parts(r, ("family",))),
        "given": Parameter("string", lambda r: human_name_parts(r, ("given",))),
        "gender": Parameter("token", lambda r: _code(r.get("gender"))),
        "active": Parameter("token", lambda r: _code(r.get("active"))),
        "identifier": Parameter("token", _identifiers),
        "birthdate": Parameter("date", _birth_date),
    },
    "Observation": {
        **_COMMON,
        "status": Parameter("token", lambda r: _code(r.get("status"))),
        "code": Parameter("token", lambda r: _codings(r.get("code"))),
        "subject": Parameter("reference", lambda r: _reference(r.get("subject", {}))),
        "patient": Parameter("reference", lambda r: _reference(r.get("subject", {}), "Patient")),
        "date": Parameter("date", _effective),
        "value-quantity": Parameter("quantity", _value_quantity),
    },
}


def parameter(resource_type: str, name: str) -> Parameter:
    try:
        return PARAMETERS[resource_type][name]
    except KeyError:
        raise Unsupported(f"{resource_type} search parameter {name!r}") from None


def values_of(resource_type: str, name: str, resource: Resource) -> list[Any]:
    """The resource's values for a search parameter (what the matching and sorting look at)."""
    return parameter(resource_type, name).values(resource)


# -------------------------------------------------------------------------------------- matching


def _value_matches(kind: str, modifier: str | None, value: Any, query: str) -> bool:
    if kind == "token":
        if modifier is not None:
            raise Unsupported(f"token modifier :{modifier}")
        return token_matches(value, query)
    if modifier is not None:
        raise Unsupported(f"{kind} modifier :{modifier}")
    if kind == "date":
        prefix, text = split_prefix(query)
        return date_matches(prefix, value, date_range(text))
    if kind == "quantity":
        return quantity_matches(value, query)
    if kind == "reference":
        return reference_matches(value, query)
    raise Unsupported(kind)


def matches(resource_type: str, resource: Resource, name: str, value: str) -> bool:
    """Does the resource satisfy one search parameter ``name[:modifier]=value`` (value may OR)?"""
    code, _, modifier_text = name.partition(":")
    modifier = modifier_text or None
    definition = parameter(resource_type, code)
    found = definition.values(resource)
    if modifier == "missing":
        if value not in ("true", "false"):
            raise Unsupported(f":missing={value}")
        return (not found) == (value == "true")
    alternatives = value.split(",")
    if definition.kind == "string":
        return any(string_matches(modifier, found, q) for q in alternatives)
    if definition.kind == "token" and modifier == "not":
        return not any(token_matches(t, q) for t in found for q in alternatives)
    return any(_value_matches(definition.kind, modifier, v, q) for v in found for q in alternatives)


# --------------------------------------------------------------------------------------- sorting


def sort_value(resource_type: str, resource: Resource, key: str) -> Any:
    """The value a resource sorts by for ``_sort=key`` (``-code`` descending); None if it has none."""
    descending = key.startswith("-")
    code = key.removeprefix("-")
    definition = parameter(resource_type, code)
    found = definition.values(resource)
    if not found:
        return None
    if definition.kind == "date":
        return max(r.high for r in found) if descending else min(r.low for r in found)
    if definition.kind == "string":
        normalized = [normalize(v) for v in found]
        return max(normalized) if descending else min(normalized)
    if definition.kind == "quantity":
        numbers = [q.value for q in found]
        return max(numbers) if descending else min(numbers)
    if definition.kind == "token":
        codes = [t.code for t in found if t.code is not None]
        if not codes:
            return None
        return max(codes) if descending else min(codes)
    raise Unsupported(f"_sort on a {definition.kind} parameter")


def _order(resource_type: str, keys: Sequence[str]) -> Callable[[Resource, Resource], int]:
    def compare(a: Resource, b: Resource) -> int:
        for key in keys:
            va = sort_value(resource_type, a, key)
            vb = sort_value(resource_type, b, key)
            if va is None and vb is None:
                continue
            if va is None:
                return 1
            if vb is None:
                return -1
            if va != vb:
                smaller = va < vb
                if key.startswith("-"):
                    smaller = not smaller
                return -1 if smaller else 1
        return (a["id"] > b["id"]) - (a["id"] < b["id"])

    return compare


# ---------------------------------------------------------------------------------------- search


def search(
    resource_type: str, resources: Iterable[Resource], params: Sequence[tuple[str, str]]
) -> list[Resource]:
    """The resources a search matches, in the server's order (``_count`` is ignored: no paging)."""
    sort_keys: list[str] = []
    filters: list[tuple[str, str]] = []
    for name, value in params:
        if name == "_sort":
            sort_keys.extend(value.split(","))
        elif name not in RESULT_PARAMETERS:
            filters.append((name, value))
    candidates = [r for r in resources if r.get("resourceType") == resource_type]
    found = [r for r in candidates if all(matches(resource_type, r, n, v) for n, v in filters)]
    return sorted(found, key=functools.cmp_to_key(_order(resource_type, sort_keys)))


def search_ids(
    resource_type: str, resources: Iterable[Resource], params: Sequence[tuple[str, str]]
) -> list[str]:
    return [r["id"] for r in search(resource_type, resources, params)]
