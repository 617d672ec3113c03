"""The stylesheets are well formed where a browser would not say so: an unclosed block silently
swallows every rule after it (a merge once left the sharing and activity rules inside a
phone-only `@media` block, so desktops showed those pages unstyled)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

STATIC = Path(__file__).resolve().parents[2] / "fhir_server" / "web" / "static"
SHEETS = sorted(STATIC.glob("*.css"))


def test_there_are_stylesheets() -> None:
    assert SHEETS


@pytest.mark.parametrize("sheet", SHEETS, ids=lambda p: p.name)
def test_every_block_closes_and_only_at_rules_nest(sheet: Path) -> None:
    text = re.sub(r"/\*.*?\*/", "", sheet.read_text(), flags=re.S)
    stack: list[str] = []
    start = 0
    for match in re.finditer(r"[{}]", text):
        if match.group() == "{":
            selector = text[start : match.start()].strip().split(";")[-1].strip()
            assert not stack or stack[-1].startswith("@"), (
                f"{sheet.name}: `{selector}` opens inside `{stack[-1]}`, which is not closed"
            )
            stack.append(selector)
        else:
            assert stack, f"{sheet.name}: a `}}` closes nothing at offset {match.start()}"
            stack.pop()
        start = match.end()
    assert not stack, f"{sheet.name}: `{stack[-1]}` is never closed"
