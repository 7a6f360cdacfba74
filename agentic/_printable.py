"""Text from tasks made safe to show on a terminal.

A task's log lines are what its command printed, and its title, labels and failure
reason are what someone wrote: any of them may hold control characters and escape
sequences, which a terminal obeys (an OSC sequence sets the window title or writes
the clipboard, others move the cursor or clear the screen and so hide or fake lines)
and bidirectional overrides that show text in another order than it is. Each such
character is shown as its escape (``\\x1b``, ``\\u202e``) instead; tabs and line
breaks stay, and so may colours (SGR sequences, ``ESC [ ... m``), which do nothing
else.
"""

from __future__ import annotations

import re

__all__ = ["is_terminal", "printable"]

_SGR = r"\x1b\[[0-9;:]*m"
_CONTROL = r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069]"
_WITH_COLOURS = re.compile(f"({_SGR})|{_CONTROL}")
_ANY = re.compile(f"(){_CONTROL}")  # the empty group: no colour matched


def _escape(match: re.Match[str]) -> str:
    if match.group(1):
        return match.group(1)  # a colour: kept
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def printable(text: str, *, colours: bool = False) -> str:
    """``text`` with every control character (but tab and line feed) and bidi
    control shown as its escape; with ``colours``, SGR colour sequences are kept."""
    return (_WITH_COLOURS if colours else _ANY).sub(_escape, text)


def is_terminal(stream: object) -> bool:
    """Whether ``stream`` is a terminal (has ``isatty`` and says so)."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed file
        return False
