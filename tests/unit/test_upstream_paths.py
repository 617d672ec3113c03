"""`next` of an upstream sign-in is a path of this server, or nothing (web/upstream.py)."""

from __future__ import annotations

import pytest

from fhir_server.web.upstream import local_path


@pytest.mark.parametrize(
    "next",
    [
        "/",
        "/signin",
        "/oauth/authorize?client_id=a&redirect_uri=https%3A%2F%2Fapp.example%2Fcb",
        "/%5Cevil.example",  # an escaped backslash is a character of the path, not a separator
    ],
)
def test_a_local_path_is_kept(next: str) -> None:
    assert local_path(next) == next


@pytest.mark.parametrize(
    "next",
    [
        "",
        "//evil.example",
        "///evil.example",
        "/\\evil.example",
        "https://evil.example/",
        "http:/evil.example",
        "evil.example/x",
        "javascript:alert(1)",
        "/a\tb",
        "/a\nb",
        "/a b",
        "/" + "a" * 2_000,
    ],
)
def test_anything_else_is_refused(next: str) -> None:
    assert local_path(next) is None
