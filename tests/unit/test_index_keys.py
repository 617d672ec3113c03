"""Bounded index keys (storage/search_index.py): what goes into a B-tree stays under its row limit,
and a key decides a comparison alone only where it cannot stand for a longer text."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from fhir_server.storage.search_index import (
    KEY_BYTES,
    KEY_DIGITS,
    UNAMBIGUOUS_BYTES,
    index_key,
    index_number,
    key_prefix,
    stored_rows,
    unambiguous,
)

# texts around the limit, with characters of one to four bytes in UTF-8
_CHARS = st.sampled_from(["a", "z", "é", "€", "😀", " "])
texts = st.one_of(
    st.text(max_size=50),
    st.lists(_CHARS, min_size=200, max_size=1200).map("".join),
)


@given(texts)
def test_a_key_is_a_bounded_start_of_the_text(text: str) -> None:
    key, full = index_key(text)
    assert text.startswith(key)
    assert len(key.encode()) <= KEY_BYTES
    if len(text.encode()) <= KEY_BYTES:
        assert (key, full) == (text, None)
    else:
        assert full == text
        assert len(key.encode()) > KEY_BYTES - 4  # cut inside the last character at most


@given(texts, texts)
def test_an_unambiguous_text_equals_a_key_only_of_itself(text: str, other: str) -> None:
    if unambiguous(text) and index_key(other)[0] == text:
        assert other == text
    if unambiguous(text) and index_key(other)[0].startswith(text):
        assert other.startswith(text)


@given(texts)
def test_a_key_prefix_is_unambiguous(text: str) -> None:
    prefix = key_prefix(text)
    assert text.startswith(prefix)
    assert unambiguous(prefix)
    assert len(prefix.encode()) > UNAMBIGUOUS_BYTES - 4 or prefix == text


def test_numbers_keep_their_digits_up_to_the_bound() -> None:
    assert index_number(Decimal("1.50")) == Decimal("1.50")
    long = Decimal("9" * 2 + "." + "5" * 3000)
    rounded = index_number(long)
    assert len(rounded.as_tuple().digits) == KEY_DIGITS
    assert abs(rounded - long) < Decimal(10) ** -(KEY_DIGITS - 3)


def test_stored_rows_split_long_texts() -> None:
    long = "x" * 3000
    assert stored_rows("string", [("family", "ann", "Ann")]) == [("family", "ann", "Ann", None)]
    [(code, key, exact, full)] = stored_rows("string", [("family", long, long)])
    assert (code, len(key), exact, full) == ("family", KEY_BYTES, long, long)
    [(_, system, value, text, system_full, value_full)] = stored_rows(
        "token", [("identifier", long, "1", None)]
    )
    assert (len(system), value, text, system_full, value_full) == (KEY_BYTES, "1", None, long, None)
