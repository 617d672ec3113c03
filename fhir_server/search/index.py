"""The search-index rows of a resource, and the value normalization that search queries share.

:func:`index_rows` turns a stored resource into the rows of the typed search tables
(``storage/tables.py``: ``search_string``, ``search_token``, ``search_date``, ``search_reference``,
``search_number``, ``search_quantity``, ``search_uri``), following the R4 search page for each
parameter type. It runs on every write, so the work that depends only on the resource type (which
parameters, their accessors, how to read their values) is planned once per type and cached;
parameters with the same type and expression (Patient ``name`` and ``phonetic``) are evaluated once.

Not indexed here: ``composite`` and ``special`` parameters, parameters without an expression, and
``_id`` and ``_lastUpdated`` (the ``resources`` table has them as columns).

:func:`normalize_string`, :func:`date_range` and :func:`number_range` are what the search planner
applies to query values, so that a query and the index agree on every value.

Pure: no database, no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import MAX_EMAX, MAX_PREC, MIN_EMIN, Context, Decimal
from functools import cache
from typing import Any, Final

from capability.definitions import resource_types
from compartments.ids import is_id
from compartments.references import bases as normalized_bases
from compartments.references import local_reference
from fhir_server.search.fhirpath import Accessor, result_types
from fhir_server.search.parameters import search_params

DATE_MIN: Final = datetime(1, 1, 1, tzinfo=UTC)
"""Stands for an open low end (a Period without ``start``)."""
DATE_MAX: Final = datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC)
"""Stands for an open high end (a Period without ``end``), and caps ranges that would pass it."""

NOT_INDEXED: Final = frozenset({"_id", "_lastUpdated"})
"""Parameter codes the planner answers from the ``resources`` table's own columns."""

_SKIPPED_TYPES: Final = frozenset({"composite", "special"})

StringRow = tuple[str, str, str]
TokenRow = tuple[str, str | None, str | None, str | None]
DateRow = tuple[str, datetime, datetime]
ReferenceRow = tuple[str, str | None, str | None, str | None, str | None, str | None]
NumberRow = tuple[str, Decimal, Decimal, Decimal]
QuantityRow = tuple[str, str | None, str | None, str | None, Decimal, Decimal, Decimal]
UriRow = tuple[str, str]


@dataclass(frozen=True, slots=True)
class IndexRows:
    """The rows of one resource for each search table, unique, in order of first appearance.

    ``resource_type`` and ``id`` are not in the rows: the caller adds them.
    """

    string: list[StringRow]  # (code, normalized value, exact value)
    token: list[TokenRow]  # (code, system, value, normalized text)
    date: list[DateRow]  # (code, low, high): [low, high) in UTC
    reference: list[ReferenceRow]
    # (code, target_type, target_id, url, identifier_system, identifier_value)
    number: list[NumberRow]  # (code, value, low, high)
    quantity: list[QuantityRow]  # (code, system, unit_code, unit, value, low, high)
    uri: list[UriRow]  # (code, value)


# --------------------------------------------------------------------------------------------
# Strings


def normalize_string(text: str) -> str:
    """``text`` for string search: case folded, accents removed, whitespace runs made one space.

    ``"  Élodie\\tMÜLLER "`` gives ``"elodie muller"``; compatibility characters are decomposed
    (NFKD: the ligature U+FB01 gives ``"fi"``, full-width U+FF21 gives ``"a"``) and combining
    marks dropped.
    """
    if text.isascii():
        return " ".join(text.lower().split())
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    stripped = "".join(c for c in decomposed if not unicodedata.combining(c))
    # Decomposition can give upper case (U+210C, black-letter H, is "H"), hence a second fold.
    return " ".join(stripped.casefold().split())


# --------------------------------------------------------------------------------------------
# Dates

_DATE: Final = re.compile(
    r"([0-9]{4})(?:-([0-9]{2})(?:-([0-9]{2})"
    r"(?:T([0-9]{2}):([0-9]{2})(?::([0-9]{2})(?:\.([0-9]+))?)?"
    r"(Z|[+-][0-9]{2}:[0-9]{2})?)?)?)?"
)
_DAY: Final = timedelta(days=1)
_MINUTE: Final = timedelta(minutes=1)
_SECOND: Final = timedelta(seconds=1)
_MICROSECOND: Final = timedelta(microseconds=1)
_ZERO: Final = timedelta(0)


def _utc_plus(moment: datetime, shift: timedelta) -> datetime:
    """``moment + shift``, held to [DATE_MIN, DATE_MAX] where the calendar would end."""
    try:
        return moment + shift
    except OverflowError:
        return DATE_MAX if shift > _ZERO else DATE_MIN


def date_range(text: str) -> tuple[datetime, datetime] | None:
    """The range ``[low, high)``, in UTC, that a FHIR date, dateTime or instant text covers.

    The width is the text's precision: ``"2020"`` is the UTC year 2020, ``"2020-03"`` a month,
    ``"2020-03-04"`` a UTC day, ``"2020-03-04T10:00:00+02:00"`` the second from 08:00:00Z, and
    fractional seconds are as precise as their last digit (``.5`` covers 0.1 s, ``.123`` 1 ms;
    beyond six digits, 1 µs, the finest a datetime holds). Minutes without seconds
    (``T10:00``) cover a minute. A time without a zone, which FHIR does not allow, is read as UTC.
    None for a text that is no FHIR date or time (``"2020-02-30"``, ``"tomorrow"``).
    """
    match = _DATE.fullmatch(text)
    if match is None:
        return None
    year_text, month_text, day_text, hour, minute, second, fraction, zone = match.groups()
    year = int(year_text)
    try:
        if month_text is None:
            low = datetime(year, 1, 1, tzinfo=UTC)
            return low, datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else DATE_MAX
        month = int(month_text)
        if day_text is None:
            low = datetime(year, month, 1, tzinfo=UTC)
            if month == 12:
                return low, datetime(year + 1, 1, 1, tzinfo=UTC) if year < 9999 else DATE_MAX
            return low, datetime(year, month + 1, 1, tzinfo=UTC)
        if hour is None:
            low = datetime(year, month, int(day_text), tzinfo=UTC)
            return low, _utc_plus(low, _DAY)
        start = datetime(year, month, int(day_text), int(hour), int(minute), tzinfo=UTC)
    except ValueError:  # year 0, month 13, day 30 of February, hour 24, minute 60
        return None
    if second is None:
        shift, width = _ZERO, _MINUTE
    else:
        seconds = int(second)
        if seconds > 60:  # 60 is a leap second
            return None
        if fraction is None:
            shift, width = timedelta(seconds=seconds), _SECOND
        else:
            digits = len(fraction)
            micro = int(fraction[:6].ljust(6, "0"))
            shift = timedelta(seconds=seconds, microseconds=micro)
            width = timedelta(microseconds=10 ** (6 - digits)) if digits <= 6 else _MICROSECOND
    if zone is not None and zone != "Z":
        zone_hours, zone_minutes = int(zone[1:3]), int(zone[4:6])
        if zone_minutes > 59 or zone_hours > 14 or (zone_hours == 14 and zone_minutes):
            return None
        offset = timedelta(hours=zone_hours, minutes=zone_minutes)
        shift = shift + offset if zone[0] == "-" else shift - offset
    return _utc_plus(start, shift), _utc_plus(start, shift + width)


# --------------------------------------------------------------------------------------------
# Numbers

_NUMBER: Final = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
# Additions exact at any number of digits (the default context rounds to 28).
_EXACT: Final = Context(prec=MAX_PREC, Emax=MAX_EMAX, Emin=MIN_EMIN)
# What a PostgreSQL `numeric` holds: 131072 digits before the point, 16383 after.
_MAX_ADJUSTED: Final = 131071
_MIN_EXPONENT: Final = -16383


def number_range(text: str) -> tuple[Decimal, Decimal, Decimal] | None:
    """``(value, low, high)``: a decimal text's value and the range its precision implies.

    The range is half a unit of the last digit either side (R4 search, "number"): ``"100"`` gives
    ``(100, 99.5, 100.5)``, ``"1.50"`` gives ``(1.50, 1.495, 1.505)``, ``"1e2"`` (one significant
    figure) gives ``(1E+2, 50, 150)``. The value keeps the text's digits. None for a text that is
    not a JSON number, and for one whose range a PostgreSQL ``numeric`` cannot hold.
    """
    if _NUMBER.fullmatch(text) is None:
        return None
    value = Decimal(text)
    exponent = value.as_tuple().exponent
    assert isinstance(exponent, int)  # finite: the pattern admits no NaN or Infinity
    if value.adjusted() > _MAX_ADJUSTED or exponent <= _MIN_EXPONENT:
        return None
    half = Decimal((0, (5,), exponent - 1))
    return value, _EXACT.subtract(value, half), _EXACT.add(value, half)


def _number_text(value: Any) -> str | None:
    """The JSON text of a number in a parsed resource (a DecimalText keeps its own)."""
    if isinstance(value, float):
        text = getattr(value, "text", None)
        return text if isinstance(text, str) else repr(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _number(value: Any) -> tuple[Decimal, Decimal, Decimal] | None:
    text = _number_text(value)
    return None if text is None else number_range(text)


# --------------------------------------------------------------------------------------------
# Row tails per parameter type: each function maps the values a parameter's expression selects
# to the rows without their leading `code`.

_Tail = tuple[Any, ...]
_Rows = Callable[[list[Any], frozenset[str]], list[_Tail]]

# The string parts of HumanName and Address, in their order in the specification; True: a list.
_HUMAN_NAME: Final = (
    ("family", False), ("given", True), ("prefix", True), ("suffix", True), ("text", False),
)  # fmt: skip
_ADDRESS: Final = (
    ("line", True), ("city", False), ("district", False), ("state", False),
    ("postalCode", False), ("country", False), ("text", False),
)  # fmt: skip


def _string_tail(text: Any, tails: list[_Tail]) -> None:
    if isinstance(text, str) and text:
        normalized = normalize_string(text)
        if normalized:
            tails.append((normalized, text))


def _string_leaves(value: Any, tails: list[_Tail]) -> None:
    if isinstance(value, str):
        _string_tail(value, tails)
    elif isinstance(value, dict):
        for item in value.values():
            _string_leaves(item, tails)
    elif isinstance(value, list):
        for item in value:
            _string_leaves(item, tails)


def _string_fields(
    fields: tuple[tuple[str, bool], ...],
) -> Callable[[dict[str, Any], list[_Tail]], None]:
    def read(value: dict[str, Any], tails: list[_Tail]) -> None:
        for key, many in fields:
            item = value.get(key)
            if item is None:
                continue
            if many:
                if isinstance(item, list):
                    for text in item:
                        _string_tail(text, tails)
            else:
                _string_tail(item, tails)

    return read


_human_name: Final = _string_fields(_HUMAN_NAME)
_address: Final = _string_fields(_ADDRESS)


def _string_rows(kind: str) -> _Rows:
    """Strings; HumanName and Address by their parts; any other complex type by its string leaves."""
    if kind == "HumanName":
        complex_reader: Callable[[dict[str, Any], list[_Tail]], None] = _human_name
    elif kind == "Address":
        complex_reader = _address
    else:
        complex_reader = _string_leaves

    def rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
        tails: list[_Tail] = []
        for value in values:
            if isinstance(value, str):
                _string_tail(value, tails)
            elif isinstance(value, dict):
                complex_reader(value, tails)
        return tails

    return rows


def _text(value: Any) -> str | None:
    """A display or text for :text, normalized; None when there is none."""
    if isinstance(value, str):
        return normalize_string(value) or None
    return None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _coding_tail(coding: Any, tails: list[_Tail]) -> None:
    if isinstance(coding, dict):
        code = _str(coding.get("code"))
        display = _text(coding.get("display"))
        if code is not None or display is not None:
            tails.append((_str(coding.get("system")), code, display))


def _codeable_concept_tail(concept: dict[str, Any], tails: list[_Tail]) -> None:
    codings = concept.get("coding")
    if isinstance(codings, list):
        for coding in codings:
            _coding_tail(coding, tails)
    text = _text(concept.get("text"))
    if text is not None:
        tails.append((None, None, text))


def _identifier_tail(identifier: dict[str, Any], tails: list[_Tail]) -> None:
    value = _str(identifier.get("value"))
    kind = identifier.get("type")
    text = _text(kind.get("text")) if isinstance(kind, dict) else None
    if value is not None or text is not None:
        tails.append((_str(identifier.get("system")), value, text))


def _contact_point_tail(contact: dict[str, Any], tails: list[_Tail]) -> None:
    value = _str(contact.get("value"))
    if value is not None:
        tails.append((None, value, None))


def _guess_token_tail(value: dict[str, Any], tails: list[_Tail]) -> None:
    """A token of a type the expression does not tell: read from the element names it has."""
    if "coding" in value:
        _codeable_concept_tail(value, tails)
    elif "value" in value or "type" in value or "assigner" in value:
        _identifier_tail(value, tails)
    elif "code" in value or "display" in value:
        _coding_tail(value, tails)
    elif "text" in value:
        _codeable_concept_tail(value, tails)


_TOKEN_READERS: Final[Mapping[str, Callable[[dict[str, Any], list[_Tail]], None]]] = {
    "Coding": _coding_tail,
    "CodeableConcept": _codeable_concept_tail,
    "Identifier": _identifier_tail,
    "ContactPoint": _contact_point_tail,
}


def _token_rows(kind: str) -> _Rows:
    """Coding, CodeableConcept, Identifier, ContactPoint, or a code, id, string, uri or boolean."""
    complex_reader = _TOKEN_READERS.get(kind, _guess_token_tail)

    def rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
        tails: list[_Tail] = []
        for value in values:
            if isinstance(value, str):
                if value:
                    tails.append((None, value, None))
            elif isinstance(value, dict):
                complex_reader(value, tails)
            elif value is True:
                tails.append((None, "true", None))
            elif value is False:
                tails.append((None, "false", None))
        return tails

    return rows


def _period_tail(period: dict[str, Any], tails: list[_Tail]) -> None:
    start, end = period.get("start"), period.get("end")
    low = date_range(start) if isinstance(start, str) else None
    high = date_range(end) if isinstance(end, str) else None
    if low is not None or high is not None:
        tails.append((DATE_MIN if low is None else low[0], DATE_MAX if high is None else high[1]))


def _date_rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
    """date, dateTime, instant; Period; Timing (its events and its bounding Period)."""
    tails: list[_Tail] = []
    for value in values:
        if isinstance(value, str):
            found = date_range(value)
            if found is not None:
                tails.append(found)
        elif isinstance(value, dict):
            if "event" in value or "repeat" in value:  # Timing
                events = value.get("event")
                if isinstance(events, list):
                    for event in events:
                        found = date_range(event) if isinstance(event, str) else None
                        if found is not None:
                            tails.append(found)
                repeat = value.get("repeat")
                bounds = repeat.get("boundsPeriod") if isinstance(repeat, dict) else None
                if isinstance(bounds, dict):
                    _period_tail(bounds, tails)
            elif "start" in value or "end" in value:
                _period_tail(value, tails)
            # Age, Range and other choices of onset[x] or performed[x] are no dates
    return tails


_RESOURCE_TYPES: Final = resource_types()


def _reference_text(
    reference: str, bases: frozenset[str], tails: list[_Tail], *, canonical: bool
) -> None:
    if not reference or reference[0] == "#":  # a contained resource has no identity of its own
        return
    local = local_reference(reference, bases, _RESOURCE_TYPES)
    if local is not None:
        tails.append((*local, None, None, None))
        return
    if canonical:
        reference = reference.partition("|")[0]
        if not reference:
            return
    tails.append((None, None, reference, None, None))


def _reference_tails(
    value: Any, bases: frozenset[str], embedded: frozenset[str], tails: list[_Tail]
) -> None:
    if isinstance(value, str):
        _reference_text(value, bases, tails, canonical=True)
        return
    if not isinstance(value, dict):
        return
    reference = value.get("reference")
    identifier = value.get("identifier")
    if isinstance(reference, str):
        _reference_text(reference, bases, tails, canonical=False)
    if isinstance(identifier, dict):
        system = _str(identifier.get("system"))
        identifier_value = _str(identifier.get("value"))
        if system is not None or identifier_value is not None:
            tails.append((None, None, None, system, identifier_value))
    if reference is not None or identifier is not None:
        return
    resource_type = value.get("resourceType")
    if resource_type is None:
        url = value.get("url")  # Consent `source-reference` may be an Attachment
        if isinstance(url, str):
            _reference_text(url, bases, tails, canonical=True)
    elif resource_type in embedded:
        # Bundle `composition` and `message`: the first entry's resource itself, when it is
        # of the parameter's target type
        resource_id = value.get("id")
        if isinstance(resource_id, str) and is_id(resource_id):
            tails.append((resource_type, resource_id, None, None, None))


def _reference_rows(targets: Collection[str]) -> _Rows:
    """Reference (literal, logical or both), canonical and uri; embedded resources; Attachment."""
    embedded = frozenset(targets)

    def rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
        tails: list[_Tail] = []
        for value in values:
            _reference_tails(value, bases, embedded, tails)
        return tails

    return rows


def _number_rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
    """integer and decimal values (a Range, RiskAssessment's other choice, is no number)."""
    tails: list[_Tail] = []
    for value in values:
        found = _number(value)
        if found is not None:
            tails.append(found)
    return tails


def _quantity_rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
    """Quantity and its profiles (Age, Duration, ...), Money, and bare numbers; no Range."""
    tails: list[_Tail] = []
    for value in values:
        if isinstance(value, dict):
            found = _number(value.get("value"))
            if found is None:
                continue  # a Range, a SampledData, or a Quantity without a value
            currency = value.get("currency")
            if isinstance(currency, str):  # Money
                tails.append((None, currency, currency, *found))
            else:
                tails.append(
                    (
                        _str(value.get("system")),
                        _str(value.get("code")),
                        _str(value.get("unit")),
                        *found,
                    )
                )
        else:
            found = _number(value)
            if found is not None:
                tails.append((None, None, None, *found))
    return tails


def _uri_rows(values: list[Any], bases: frozenset[str]) -> list[_Tail]:
    """uri, url, canonical, as written."""
    return [(value,) for value in values if isinstance(value, str) and value]


# --------------------------------------------------------------------------------------------
# The plan per resource type


@dataclass(frozen=True, slots=True)
class _Step:
    codes: tuple[str, ...]  # the parameters whose type and expression are the same
    table: str  # the parameter type, which names the table
    accessor: Accessor
    rows: _Rows


_TABLES: Final = ("string", "token", "date", "reference", "number", "quantity", "uri")


def _static_kind(expression: str, resource_type: str, candidates: Collection[str]) -> str:
    """The one complex type among ``candidates`` that ``expression`` selects, or ``""``."""
    found = [t for t in result_types(expression, context_types=(resource_type,)) if t in candidates]
    return found[0] if len(found) == 1 else ""


@cache
def _plan(resource_type: str) -> tuple[_Step, ...]:
    # Parameters with the same type and expression (and targets) give the same rows.
    groups: dict[tuple[str, str, tuple[str, ...]], list[str]] = {}
    accessors: dict[tuple[str, str, tuple[str, ...]], Accessor] = {}
    for code, param in search_params(resource_type).items():
        if (
            param.type in _SKIPPED_TYPES
            or code in NOT_INDEXED
            or param.accessor is None
            or param.expression is None
        ):
            continue
        key = (param.type, param.expression, param.targets)
        groups.setdefault(key, []).append(code)
        accessors.setdefault(key, param.accessor)
    steps: list[_Step] = []
    for key, codes in groups.items():
        sp_type, expression, targets = key
        rows: _Rows
        if sp_type == "string":
            rows = _string_rows(_static_kind(expression, resource_type, ("HumanName", "Address")))
        elif sp_type == "token":
            rows = _token_rows(_static_kind(expression, resource_type, _TOKEN_READERS))
        elif sp_type == "date":
            rows = _date_rows
        elif sp_type == "reference":
            rows = _reference_rows(targets)
        elif sp_type == "number":
            rows = _number_rows
        elif sp_type == "quantity":
            rows = _quantity_rows
        elif sp_type == "uri":
            rows = _uri_rows
        else:
            raise ValueError(f"search parameter type `{sp_type}` of `{codes[0]}` is not indexable")
        steps.append(_Step(tuple(codes), sp_type, accessors[key], rows))
    return tuple(steps)


def _unique(rows: list[Any]) -> list[Any]:
    return list(dict.fromkeys(rows)) if len(rows) > 1 else rows


def index_rows(resource: Mapping[str, Any], *, local_bases: Collection[str] = ()) -> IndexRows:
    """The search-index rows of ``resource``, per table, unique and in order of first appearance.

    ``local_bases`` are this server's absolute base URLs (``http://127.0.0.1:8080/fhir``): an
    absolute reference under one of them is indexed as the local resource it names, like a
    relative one. Raises ValueError for a resource whose ``resourceType`` is not an R4 type.
    """
    resource_type = resource.get("resourceType")
    if not isinstance(resource_type, str) or resource_type not in _RESOURCE_TYPES:
        raise ValueError(f"unknown resource type `{resource_type}`")
    bases = normalized_bases(local_bases)
    tables: dict[str, list[Any]] = {name: [] for name in _TABLES}
    for step in _plan(resource_type):
        values = step.accessor(resource)
        if not values:
            continue
        tails = step.rows(values, bases)
        if not tails:
            continue
        table = tables[step.table]
        for code in step.codes:
            table.extend([(code, *tail) for tail in tails])
    return IndexRows(
        string=_unique(tables["string"]),
        token=_unique(tables["token"]),
        date=_unique(tables["date"]),
        reference=_unique(tables["reference"]),
        number=_unique(tables["number"]),
        quantity=_unique(tables["quantity"]),
        uri=_unique(tables["uri"]),
    )
