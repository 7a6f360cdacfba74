"""Fitting what a runner sends under the task API's body limit (1 MiB by default).

Sizes are counted as the client sends text: JSON encoded as UTF-8 (``ensure_ascii``
off), where a character takes 1 to 4 bytes and a control character, escaped as
``\\u00XX``, 6. A count of characters says little about the body: 200,000 CJK
characters are 600 KB. Text is also made sendable: a lone surrogate (a Python string
made from bytes with ``surrogateescape``, or a bad ``\\ud800`` escape) is not valid
Unicode, cannot be encoded, and would fail the whole request.
"""

from __future__ import annotations

import json
from collections.abc import Callable

__all__ = ["clean", "head_within", "json_bytes", "tail_within", "within"]

_CUT = "[truncated]\n"


def clean(text: str) -> str:
    """``text`` with each lone surrogate written as its escape (``\\ud800``)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


def json_bytes(text: str) -> int:
    """Bytes of ``text`` (clean) as a JSON string in a request body."""
    return len(json.dumps(text, ensure_ascii=False).encode("utf-8"))


def tail_within(text: str, limit: int) -> str:
    """``text`` (clean) if it fits in ``limit`` bytes of JSON, else its end, marked
    as truncated, that does."""
    if json_bytes(text) <= limit:
        return text
    return _fit(lambda keep: _CUT + (text[-keep:] if keep else ""), len(text), limit)


def head_within(text: str, limit: int, mark: str) -> str:
    """The start of ``text`` (clean) followed by ``mark``, within ``limit`` bytes of
    JSON (``mark`` alone if even one character is too many)."""
    return _fit(lambda keep: text[:keep] + mark, len(text), limit)


def _fit(cut: Callable[[int], str], length: int, limit: int) -> str:
    """``cut(keep)`` for the largest ``keep`` (characters kept, at most ``length``)
    found whose JSON fits in ``limit`` bytes, or ``cut(0)``."""
    keep = min(length, limit)
    while keep > 0 and (size := json_bytes(cut(keep))) > limit:
        # Shrink in proportion to the excess, and by a tenth at least: a few rounds.
        keep = min(keep * limit // size, keep - keep // 10 - 1)
    return cut(max(keep, 0))


def within(items: list[str], limit: int) -> list[str]:
    """The first of ``items`` (clean) that fit in ``limit`` bytes of JSON together,
    and a last one saying how many were left out, if any were (within the limit too:
    the items leave it room)."""
    kept: list[str] = []
    size = 100  # room for the last item
    for number, item in enumerate(items):
        size += json_bytes(item) + 1
        if size > limit:
            return [*kept, f"[agentic: {len(items) - number} more left out: over {limit} bytes]"]
        kept.append(item)
    return kept
