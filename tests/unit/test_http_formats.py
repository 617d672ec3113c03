"""HTTP header values the server formats itself."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.services.formats.bundles import http_date
from fhir_server.services.formats.etags import etag


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


def test_new_ids_are_uuid7_in_time_order() -> None:
    import time
    import uuid

    from fhir_server.services.interactions.create import new_id

    first = new_id()
    time.sleep(0.002)
    later = [new_id() for _ in range(100)]
    parsed = uuid.UUID(first)
    assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
    assert all(first < other for other in later)  # ordered by creation time, as text too
    assert len(set(later)) == 100
    millis = uuid.UUID(later[0]).int >> 80
    assert abs(millis - time.time() * 1000) < 60_000
