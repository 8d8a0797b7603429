"""Filtered pages over chunked lists, and the continue token (no cluster)."""

from __future__ import annotations

from typing import Any

import pytest

from medcloud_api.pagination import Cursor, chunk_size, decode, encode, paginate


class Chunks:
    """A sorted list served in chunks, as the API server serves a list with limit and continue."""

    def __init__(self, names: list[str]) -> None:
        self.names = sorted(names)
        self.calls = 0

    def fetch(self, token: str | None, size: int) -> tuple[list[dict[str, Any]], str | None]:
        self.calls += 1
        start = int(token) if token else 0
        chunk = [{"metadata": {"name": n}} for n in self.names[start : start + size]]
        end = start + size
        return chunk, (str(end) if end < len(self.names) else None)


def names(items: list[dict[str, Any]]) -> list[str]:
    return [i["metadata"]["name"] for i in items]


def every_page(chunks: Chunks, keep: Any, limit: int, scan_limit: int = 10_000) -> list[list[str]]:
    pages, cursor = [], None
    while True:
        items, cursor = paginate(chunks.fetch, keep, limit, cursor, scan_limit)
        pages.append(names(items))
        if cursor is None:
            return pages
        cursor = decode(encode(cursor))


def test_pages_cover_everything_once_in_order() -> None:
    chunks = Chunks([f"h{i:03d}" for i in range(250)])
    pages = every_page(chunks, lambda _: True, limit=40)

    assert [len(p) for p in pages] == [40] * 6 + [10]
    assert [n for page in pages for n in page] == chunks.names


def test_a_filter_resumes_in_the_middle_of_a_chunk_without_skipping_or_repeating() -> None:
    chunks = Chunks([f"h{i:03d}" for i in range(300)])
    odd = lambda item: int(item["metadata"]["name"][1:]) % 2 == 1  # noqa: E731

    pages = every_page(chunks, odd, limit=7)

    assert [n for page in pages for n in page] == [n for n in chunks.names if int(n[1:]) % 2 == 1]
    assert all(len(p) == 7 for p in pages[:-1])


def test_the_last_page_has_no_cursor_even_when_it_is_exactly_full() -> None:
    chunks = Chunks(["a", "b", "c", "d"])
    items, cursor = paginate(chunks.fetch, lambda _: True, 4, None, 100)
    assert names(items) == ["a", "b", "c", "d"]
    assert cursor is None


def test_the_scan_limit_ends_a_page_early_with_a_cursor() -> None:
    chunks = Chunks([f"h{i:03d}" for i in range(500)])
    items, cursor = paginate(chunks.fetch, lambda item: item["metadata"]["name"] == "h450", 10, None, 100)
    assert items == []
    assert cursor is not None
    assert every_page(chunks, lambda item: item["metadata"]["name"] == "h450", 10, 100)[-1] == ["h450"]


def test_chunks_are_large_enough_for_filters_and_small_enough_for_the_server() -> None:
    assert chunk_size(1) == 100
    assert chunk_size(300) == 300
    assert chunk_size(10_000) == 500


def test_tokens_round_trip() -> None:
    cursor = Cursor("opaque-kubernetes-token", "h042")
    assert decode(encode(cursor)) == cursor
    assert decode(encode(Cursor(None, "h1"))) == Cursor(None, "h1")


@pytest.mark.parametrize(
    "token",
    ["", "not base64!", "e30", encode(Cursor(None, None)), "eyJ2IjoyLCJrIjpudWxsLCJhIjoiaCJ9", "x" * 5000],
)
def test_tokens_not_issued_by_the_api_are_refused(token: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        decode(token)
