"""HTTP header values the server formats itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.services.bundles import etag, http_date


@given(
    st.datetimes(min_value=datetime(1900, 1, 1), max_value=datetime(9999, 12, 30)),
    st.integers(min_value=-14 * 60, max_value=14 * 60),
)
def test_http_date_is_the_imf_fixdate_the_standard_library_writes(
    moment: datetime, offset_minutes: int
) -> None:
    aware = moment.replace(tzinfo=timezone(timedelta(minutes=offset_minutes)))
    assert http_date(aware) == format_datetime(aware.astimezone(UTC), usegmt=True)


def test_http_date_example() -> None:
    assert http_date(datetime(2026, 11, 23, 23, 6, 15, 999999, tzinfo=UTC)) == (
        "Mon, 23 Nov 2026 23:06:15 GMT"
    )


def test_etag_is_weak_with_the_version() -> None:
    assert etag(3) == 'W/"3"'
