"""Write agentic/client.py (TaskClient) from agentic/_async_client.py (AsyncTaskClient).

One implementation of the task API client: the async one is the source, and the
synchronous one is made from it by the substitutions below (``async def`` -> ``def``,
``await`` dropped, httpx's async names -> its sync ones; lines marked ``# async only``
and blocks between ``# begin async only`` and ``# end async only`` left out), then
``ruff format``.

    python scripts/unasync.py          # rewrite agentic/client.py
    python scripts/unasync.py --check  # exit 1 if agentic/client.py is out of date
"""

from __future__ import annotations

import io
import re
import subprocess
import sys
import tokenize
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SOURCE = ROOT / "agentic" / "_async_client.py"
TARGET = ROOT / "agentic" / "client.py"

HEADER = (
    "# Generated from agentic/_async_client.py by scripts/unasync.py: edit that file and\n"
    "# run the script, not this one (a test checks that they agree).\n"
)

# Whole passages first (they mention async names the word rules would rewrite).
PASSAGES = [
    (
        """
An :class:`AsyncTaskClient` belongs to the event loop of its first call: a call from
another loop (a second ``asyncio.run``) is refused with :class:`ConfigError` before
anything is sent. Make one per loop and keep it (building one takes about 40 ms).
""",
        "",
    ),
    (
        "AsyncTaskClient: the HTTP client of the task API for asyncio (go-agentic's"
        " contract,\nplus ours).",
        "TaskClient: the HTTP client of the task API (go-agentic's contract, plus ours).",
    ),
    (
        '"""An asyncio client of the task API. Use it as an async context manager, or\n'
        '    ``await close()``."""',
        '"""A synchronous client of the task API. Use it as a context manager, or ``close()``."""',
    ),
    (
        "from collections.abc import AsyncIterator, Awaitable, Callable, Iterable,"
        " Iterator, Sequence",
        "from collections.abc import Callable, Iterable, Iterator, Sequence",
    ),
    (
        "Callable[[float], Awaitable[None]] = asyncio.sleep",
        "Callable[[float], None] = time.sleep",
    ),
    (
        'with self._refusals(f"GET {self.base_url}{path}"):\n',
        'with self._refusals(f"GET {self.base_url}{path}"):  # noqa: SIM117 - as the async one\n',
    ),
    (
        "import asyncio\nimport contextlib\nimport time\nimport uuid\n",
        "import contextlib\nimport time\nimport uuid\n",
    ),
    (
        '__all__ = ["MAX_CLAIM_BATCH", "AsyncTaskClient", "Claim", "EventPage", "LogEvent",'
        ' "RetryDelay"]',
        '__all__ = ["MAX_CLAIM_BATCH", "Claim", "EventPage", "LogEvent", "RetryDelay",'
        ' "TaskClient"]',
    ),
]

# Applied to code only, never inside strings or comments (docstrings and messages
# that differ between the two are PASSAGES above).
WORDS = [
    (r"(?<![\w.])\(await (self\.\w+\([^()]*\))\)", r"\1"),  # (await self.x()).y -> self.x().y
    (r"\bAsyncTaskClient\b", "TaskClient"),
    (r"\bAsyncIterator\b", "Iterator"),
    (r"\bhttpx\.AsyncClient\b", "httpx.Client"),
    (r"\bhttpx\.AsyncBaseTransport\b", "httpx.BaseTransport"),
    (r"\basync (def|with|for)\b", r"\1"),
    (r"\bawait ", ""),
    (r"\.aclose\(", ".close("),
    (r"\.aread\(", ".read("),
    (r"\.aiter_lines\(", ".iter_lines("),
    (r"\b__aenter__\b", "__enter__"),
    (r"\b__aexit__\b", "__exit__"),
]


def _segments(text: str) -> list[tuple[bool, str]]:
    """``text`` cut into code and the strings and comments between it (``True`` for
    code), in order, so that the pieces joined are ``text``."""
    lines = text.splitlines(keepends=True)
    starts = [0]
    for line in lines:
        starts.append(starts[-1] + len(line))
    segments: list[tuple[bool, str]] = []
    done = 0
    for token in tokenize.generate_tokens(io.StringIO(text).readline):
        if token.type not in (tokenize.STRING, tokenize.COMMENT):
            continue
        start = starts[token.start[0] - 1] + token.start[1]
        end = starts[token.end[0] - 1] + token.end[1]
        segments += [(True, text[done:start]), (False, text[start:end])]
        done = end
    segments.append((True, text[done:]))
    return segments


def generate() -> str:
    """The text client.py must have."""
    text = SOURCE.read_text("utf-8")
    for old, new in PASSAGES:
        if old not in text:
            sys.exit(f"unasync: {SOURCE.name} no longer contains {old!r}; update the script")
        text = text.replace(old, new)
    # What only an async client needs: lines marked "# async only", and blocks
    # between "# begin async only" and "# end async only" (markers included).
    text = re.sub(
        r"^[ \t]*# begin async only\n.*?^[ \t]*# end async only\n",
        "",
        text,
        flags=re.MULTILINE | re.DOTALL,
    )
    text = re.sub(r"^.*  # async only\n", "", text, flags=re.MULTILINE)
    # Its note on where it comes from: up to the first blank line after it.
    note = text.index("# The source of client.py's")
    text = text[:note] + text[text.index("\n\n", note) + 2 :]
    pieces = []
    for is_code, segment in _segments(text):
        made = segment
        if is_code:
            for pattern, replacement in WORDS:
                made = re.sub(pattern, replacement, made)
        pieces.append(made)
    text = "".join(pieces)
    formatted = subprocess.run(
        [sys.executable, "-m", "ruff", "format", "--stdin-filename", str(TARGET), "-"],
        input=HEADER + text,
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    return formatted.stdout


def main() -> int:
    wanted = generate()
    if "--check" in sys.argv[1:]:
        if TARGET.read_text("utf-8") != wanted:
            print(f"{TARGET} is out of date: run python scripts/unasync.py", file=sys.stderr)
            return 1
        return 0
    TARGET.write_text(wanted, "utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
