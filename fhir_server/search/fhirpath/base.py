"""What every part of the FHIRPath compiler shares: the accessor types and its one error."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

Resource = Mapping[str, Any]
Accessor = Callable[[Resource], list[Any]]
"""A compiled expression: the resource in, the JSON values it selects out."""
RelativeAccessor = Callable[[Any, Resource], list[Any]]
"""A compiled expression evaluated on one element (``$this``) of a resource (``%resource``)."""

_Fn = Callable[[list[Any], Resource], list[Any]]
_Pred = Callable[[Any, Resource], bool]


class FhirPathUnsupported(ValueError):
    """An expression outside the compiled subset, or one that can never select anything."""
