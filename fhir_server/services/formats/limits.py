"""The input limits every client body is held to (docs/limits.md), checked once, right after
parsing, so that nothing deeper in the server (validation, index extraction, JSON Patch, the
encoder, PostgreSQL) ever meets a value it cannot handle.

A body beyond a limit is refused with 400 naming the limit and where in the body it was met.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from fhir_server.errors import BadRequest
from fhir_server.settings import Settings


@dataclass(frozen=True, slots=True)
class InputLimits:
    max_depth: int = 100
    max_string_length: int = 4 * 1024 * 1024
    max_array_length: int = 10_000
    # NUL is refused where values may reach storage; GraphQL answers it as a GraphQL error
    refuse_nul: bool = True

    @classmethod
    def of(cls, settings: Settings) -> InputLimits:
        return cls(
            max_depth=settings.max_json_depth,
            max_string_length=settings.max_string_length,
            max_array_length=settings.max_array_length,
        )


@cache
def input_limits(settings: Settings) -> InputLimits:
    """The limits of `settings` (one value per settings value)."""
    return InputLimits.of(settings)


class _Step:
    """Where a value sits: its parent's step and its key or index (the path is built only when
    a limit is met, so checking costs no string work per value)."""

    __slots__ = ("key", "parent")

    def __init__(self, parent: _Step | None, key: str | int) -> None:
        self.parent = parent
        self.key = key


def _where(step: _Step | None, root: Any) -> str:
    keys: list[str | int] = []
    while step is not None:
        keys.append(step.key)
        step = step.parent
    head = root.get("resourceType") if isinstance(root, dict) else None
    text = head if isinstance(head, str) and head.isidentifier() else ""
    for key in reversed(keys):
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else key)
    return text or "$"


def check_value(value: Any, limits: InputLimits, *, surrogates: bool = False) -> None:
    """400 when `value` (parsed JSON) breaks a limit, holds a NUL character (PostgreSQL's JSON
    cannot store it), or, with `surrogates`, a lone UTF-16 surrogate (no UTF-8 encoding exists;
    `json` lets `"\\ud800"` through, orjson does not)."""
    max_depth, max_string, max_array, nul = (
        limits.max_depth,
        limits.max_string_length,
        limits.max_array_length,
        limits.refuse_nul,
    )
    stack: list[tuple[Any, int, _Step | None]] = [(value, 1, None)]
    pop, push = stack.pop, stack.append
    while stack:
        item, depth, step = pop()
        if isinstance(item, str):
            _check_string(item, max_string, nul, surrogates, step, value)
        elif isinstance(item, dict):
            if depth > max_depth:
                _refuse(f"the body nests deeper than {max_depth} levels", step, value)
            for key, child in item.items():
                _check_string(key, max_string, nul, surrogates, step, value)
                if isinstance(child, dict | list | str):
                    push((child, depth + 1, _Step(step, key)))
        elif isinstance(item, list):
            if depth > max_depth:
                _refuse(f"the body nests deeper than {max_depth} levels", step, value)
            if len(item) > max_array:
                _refuse(
                    f"an array holds {len(item)} items; at most {max_array} are accepted",
                    step,
                    value,
                )
            for index, child in enumerate(item):
                if isinstance(child, dict | list | str):
                    push((child, depth + 1, _Step(step, index)))


def _check_string(
    text: str, max_length: int, nul: bool, surrogates: bool, step: _Step | None, root: Any
) -> None:
    if len(text) > max_length:
        _refuse(
            f"a string of {len(text)} characters; at most {max_length} are accepted", step, root
        )
    if nul and "\x00" in text:
        _refuse("NUL characters are not allowed (`\\u0000` in a string)", step, root, "value")
    if surrogates and not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            _refuse("a string holds a lone UTF-16 surrogate (no character)", step, root, "value")


def _refuse(message: str, step: _Step | None, root: Any, code: str = "too-costly") -> None:
    where = _where(step, root)
    raise BadRequest(f"{message} at `{where}`", code=code, expression=[where])
