"""ETags of resource versions and the `If-Match` values that name one (R4 http.html#versioning),
written once for the FHIR API, its Bundles and the Patient Service API: one format, one parser,
one limit. What a surface answers to a value that names no version is its own (FHIR: 412 with an
OperationOutcome; the Patient Service API: 412 `version_mismatch`).
"""

from __future__ import annotations

from typing import Final

# A version id is an `integer` column (int4): nine digits always fit, and no resource gets near
# a billion versions. A longer value names no version rather than reaching a comparison.
MAX_VERSION_DIGITS: Final = 9
# `If-Match: *` (RFC 9110 13.1.1): any current version. Version ids start at 1, so 0 names none.
ANY_VERSION: Final = 0


def etag(version_id: int) -> str:
    """The weak ETag of a version: `W/"3"`."""
    return f'W/"{version_id}"'


def version_of(value: str) -> int | None:
    """The version an `If-Match` value (or an ETag) names, or None when it names none.

    Accepted: `W/"3"`, `"3"` and a bare `3`, with whitespace around the whole value. Refused:
    anything but ASCII digits inside the quotes (a sign, a space, `*`, another script's digits),
    no digits, and more than `MAX_VERSION_DIGITS` of them.
    """
    tag = value.strip().removeprefix("W/").strip('"')
    if not (0 < len(tag) <= MAX_VERSION_DIGITS and tag.isascii() and tag.isdigit()):
        return None
    return int(tag)
