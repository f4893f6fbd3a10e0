"""How text from the user's files reaches the terminal: escaped and on one line.

Names and paths come from traces, configurations and the command line; a newline or an escape sequence in
one must not break a table, fake a line of output or recolour the terminal. Files (report.json,
layers.csv) keep the exact text.
"""

from __future__ import annotations

__all__ = ["MAX_MESSAGE", "one_line", "printable"]

MAX_MESSAGE = 2000  # characters of an error line; a 100 KB value echoed back helps nobody


def printable(value) -> str:
    """``str(value)`` with control and other non-printable characters escaped the way ``repr`` escapes
    them (``\\n``, ``\\t``, ``\\x1b``), without quotes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(value))


def one_line(message: str, limit: int = MAX_MESSAGE) -> str:
    """A message as one printable line: its lines joined with ``; ``, escaped, cut at ``limit``."""
    line = printable("; ".join(part.strip() for part in str(message).splitlines() if part.strip()))
    return line if len(line) <= limit else line[: limit - 1] + "…"
