"""FHIR dates and periods as instants (compartments/periods.py): every precision covers its whole
span, an end is inclusive of its precision, what is not a FHIR date or time covers nothing, and
the intervals agree with the date search index."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from compartments.periods import ALWAYS, Window, format_instant, next_change, span, window
from fhir_server.search.index import date_range

NOW = datetime(2026, 12, 3, 14, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "low", "high"),
    [
        ("2026", datetime(2026, 1, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-02", datetime(2026, 2, 1, tzinfo=UTC), datetime(2026, 3, 1, tzinfo=UTC)),
        ("2026-12", datetime(2026, 12, 1, tzinfo=UTC), datetime(2027, 1, 1, tzinfo=UTC)),
        ("2026-12-03", datetime(2026, 12, 3, tzinfo=UTC), datetime(2026, 12, 4, tzinfo=UTC)),
        (
            "2026-12-03T14:00:00Z",
            datetime(2026, 12, 3, 14, tzinfo=UTC),
            datetime(2026, 12, 3, 14, 0, 1, tzinfo=UTC),
        ),
        (
            "2026-12-03T14:00:00+03:00",
            datetime(2026, 12, 3, 11, tzinfo=UTC),
            datetime(2026, 12, 3, 11, 0, 1, tzinfo=UTC),
        ),
        (
            "2026-12-03T14:00:00.5-01:30",
            datetime(2026, 12, 3, 15, 30, 0, 500000, tzinfo=UTC),
            datetime(2026, 12, 3, 15, 30, 0, 600000, tzinfo=UTC),
        ),
    ],
)
def test_each_precision_covers_its_whole_span(text: str, low: datetime, high: datetime) -> None:
    assert span(text) == (low, high)


@pytest.mark.parametrize(
    "text",
    [
        "2026-12-03T14:00:00",  # a time without a zone: FHIR forbids it
        "2026-12-03T14:00Z",  # no seconds
        "2026-02-30",
        "2026-13",
        "tomorrow",
        "2026-12-03T24:00:00Z",
        "2026-12-03T10:00:00+15:00",
        "",
    ],
)
def test_what_is_not_a_fhir_date_or_time_covers_nothing(text: str) -> None:
    assert span(text) is None
    assert not window({"end": text}).covers(NOW)
    assert not window({"start": text}).covers(NOW)


def test_an_end_is_inclusive_of_its_precision() -> None:
    # an instant an hour ago has ended; a date of today lasts until midnight
    assert not window({"end": format_instant(NOW - timedelta(hours=1))}).covers(NOW)
    assert window({"end": "2026-12-03"}).covers(NOW)
    assert not window({"end": "2026-12-02"}).covers(NOW)
    assert window({"end": "2026-12"}).covers(NOW)
    assert window({"end": "2026-12-03T14:00:00Z"}).covers(NOW + timedelta(milliseconds=999))
    assert not window({"end": "2026-12-03T14:00:00Z"}).covers(NOW + timedelta(seconds=1))
    # the zone counts: 16:59 in Nairobi is 13:59 UTC
    assert not window({"end": "2026-12-03T16:59:59+03:00"}).covers(NOW)
    assert window({"end": "2026-12-03T17:00:00+03:00"}).covers(NOW)


def test_a_start_counts_from_its_first_instant() -> None:
    assert window({"start": "2026-12-03"}).covers(NOW)
    assert window({"start": "2026-12-03T14:00:00Z"}).covers(NOW)
    assert not window({"start": "2026-12-03T14:00:01Z"}).covers(NOW)
    assert not window({"start": "2026-12-04"}).covers(NOW)
    assert window(None) is ALWAYS and ALWAYS.covers(NOW)
    assert not window("2026").covers(NOW)  # not a Period


def test_next_change_is_the_first_boundary_after_now() -> None:
    windows = [
        window({"start": "2026-12-01", "end": "2026-12-03T15:30:00Z"}),
        window({"start": "2026-12-03T14:10:00Z"}),
        Window(valid=False),
    ]
    assert next_change(windows, NOW) == datetime(2026, 12, 3, 14, 10, tzinfo=UTC)
    assert next_change([ALWAYS], NOW) is None


def test_the_last_instant_of_a_window_is_the_last_whole_second() -> None:
    last = window({"end": "2026-12-31"}).last_instant
    assert last is not None and format_instant(last) == "2026-12-31T23:59:59Z"
    last = window({"end": "2026-12-31T18:00:00+02:00"}).last_instant
    assert last is not None and format_instant(last) == "2026-12-31T16:00:00Z"


_TEXTS = st.one_of(
    st.from_regex(r"\A[12][0-9]{3}(-(0[1-9]|1[0-2])(-(0[1-9]|[12][0-9]|3[01]))?)?\Z"),
    st.from_regex(
        r"\A[12][0-9]{3}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9])T([01][0-9]|2[0-3]):[0-5][0-9]:"
        r"[0-5][0-9](\.[0-9]{1,6})?(Z|[+-](0[0-9]|1[0-3]):[0-5][0-9])\Z"
    ),
)


@given(_TEXTS)
def test_access_and_the_date_search_index_agree(text: str) -> None:
    """An access decision and a `date` search read the same text as the same interval."""
    assert span(text) == date_range(text)


@given(_TEXTS, st.datetimes(timezones=st.just(UTC)))
def test_a_period_covers_exactly_the_instants_between_its_bounds(
    text: str, moment: datetime
) -> None:
    found = span(text)
    if found is None:  # `1000-02-30`: no such day, so the period covers nothing
        assert not window({"start": text}).covers(moment)
        assert not window({"end": text}).covers(moment)
        return
    low, high = found
    assert window({"start": text}).covers(moment) == (moment >= low)
    assert window({"end": text}).covers(moment) == (moment < high)


def test_cached_facts_end_at_the_first_boundary_of_their_periods() -> None:
    """The facts cache (services/access/cache.py) never outlives a period that ends within the day."""
    from compartments.engine import Facts
    from fhir_server.services.access.cache import FactsCache

    cache = FactsCache()
    entry = (1, (), Facts(now=NOW), {})
    ends = NOW + timedelta(minutes=30)
    cache.put("RelatedPerson/9", NOW, entry, ends)
    assert cache.get("RelatedPerson/9", NOW + timedelta(minutes=29)) is entry
    assert cache.get("RelatedPerson/9", ends) is None
    assert cache.get("RelatedPerson/9", NOW) is None  # gone, not only hidden
    cache.put("RelatedPerson/9", NOW, entry)
    assert cache.get("RelatedPerson/9", NOW + timedelta(hours=9)) is entry
    assert cache.get("RelatedPerson/9", NOW + timedelta(hours=10)) is None  # the next UTC day
