"""Log lines as ``key=value`` pairs (logfmt), for the long-running commands.

One line per record, values quoted only when needed, so the output can be read
as is and parsed by log shippers (Loki, Vector, ``grep``).
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime

_PLAIN = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_./:@,+")


def _value(text: str) -> str:
    if text and all(char in _PLAIN for char in text):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return f'"{escaped}"'


class KeyValueFormatter(logging.Formatter):
    """``ts=... level=info logger=agentic.dispatcher msg="..."`` (UTC, milliseconds)."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
        pairs = [
            ("ts", stamp.replace("+00:00", "Z")),
            ("level", record.levelname.lower()),
            ("logger", record.name),
            ("msg", record.getMessage()),
        ]
        event = getattr(record, "event", None)
        if isinstance(event, dict) and "type" in event:  # set by LoggingEmitter
            pairs.append(("event", str(event["type"])))
        if record.exc_info:
            pairs.append(("exc", self.formatException(record.exc_info)))
        return " ".join(f"{key}={_value(value)}" for key, value in pairs)


def setup_logging(verbose: bool = False, level: int = logging.INFO) -> None:
    """Send log records from ``level`` (DEBUG if verbose) to stderr as key=value lines."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbose else level)
    # httpx logs every request at INFO: far too chatty next to our own lines.
    logging.getLogger("httpx").setLevel(logging.DEBUG if verbose else logging.WARNING)
