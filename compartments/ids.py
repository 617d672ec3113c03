"""The R4 `id` datatype, written once for the whole server: 1 to 64 of `A-Z a-z 0-9 - .`
(R4 datatypes.html#id). Resource ids in paths, references, tokens' `fhirUser`, bundle entry
URLs and the search index are all checked against this one definition.

Pure: a leaf that any layer may import (compartments/ sits below everything in fhir_server/).
"""

from __future__ import annotations

import re
from typing import Final

# The pattern as text, for regexes that embed it (a path convertor, a RESTful URL).
ID_REGEX: Final = r"[A-Za-z0-9\-.]{1,64}"
ID_PATTERN: Final = re.compile(ID_REGEX)
MAX_ID_LENGTH: Final = 64

_ID_CHARS: Final = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-."


def is_id(text: str) -> bool:
    """Whether ``text`` is an R4 id (``ID_PATTERN`` in full, at a third of a regex's cost)."""
    # strip() removes every character when all of them are in the set
    return 0 < len(text) <= MAX_ID_LENGTH and not text.strip(_ID_CHARS)
