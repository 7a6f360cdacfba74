"""Write agentic/client.py (TaskClient) from agentic/_async_client.py (AsyncTaskClient).

One implementation of the task API client: the async one is the source, and the
synchronous one is made from it by the substitutions below (``async def`` -> ``def``,
``await`` dropped, httpx's async names -> its sync ones), then ``ruff format``.

    python scripts/unasync.py          # rewrite agentic/client.py
    python scripts/unasync.py --check  # exit 1 if agentic/client.py is out of date
"""

from __future__ import annotations

import re
import subprocess
import sys
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
        "import asyncio\nimport contextlib\nimport json\n",
        "import contextlib\nimport json\nimport time\n",
    ),
    (
        '__all__ = ["MAX_CLAIM_BATCH", "AsyncTaskClient", "Claim", "EventPage", "LogEvent",'
        ' "RetryDelay"]',
        '__all__ = ["MAX_CLAIM_BATCH", "Claim", "EventPage", "LogEvent", "RetryDelay",'
        ' "TaskClient"]',
    ),
]

WORDS = [
    (r"\A(\"\"\".*?\"\"\"\n)\n# The source of client\.py's.*?\n\n", r"\1\n"),  # its own note
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


def generate() -> str:
    """The text client.py must have."""
    text = SOURCE.read_text("utf-8")
    for old, new in PASSAGES:
        if old not in text:
            sys.exit(f"unasync: {SOURCE.name} no longer contains {old!r}; update the script")
        text = text.replace(old, new)
    for pattern, replacement in WORDS:
        text = re.sub(pattern, replacement, text, flags=re.MULTILINE | re.DOTALL)
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
