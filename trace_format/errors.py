"""Refusals of a trace: :class:`TraceError`, and :class:`Where`, the place in the file a refusal names.

Every check of the format (docs/trace-format.md, "Checks") ends in one ``TraceError`` whose one-line
message starts with the file and, when there is one, the layer (``t.npz: layer 'c': metadata field
'kernel' = 12: ...``); the metadata checks, the array checks and the reader all build it through
:class:`Where` so that the messages read alike.
"""

from __future__ import annotations

import json
from typing import Any, NoReturn

from spec.errors import UserError

__all__ = ["TraceError", "Where", "short"]


class TraceError(UserError):
    """A trace file that cannot be used; the message names the file, layer, key and offending value."""


class Where:
    """Message prefix: the file, and the layer when there is one; ``prefix`` qualifies field names.

    Parameters
    ----------
    source : str
        The file (its path as given), or ``"<trace>"`` for arrays in memory.
    layer : str or None
        The layer the refusal is about, if any.
    prefix : str
        Prepended to metadata field names (``"flops."`` names ``flops.dense`` for the key ``dense``).
    """

    def __init__(self, source: str, layer: str | None = None, prefix: str = ""):
        self.source, self.layer, self.prefix = source, layer, prefix

    def fail(self, what: str) -> NoReturn:
        """Raise the :class:`TraceError` ``<source>: [layer '<layer>': ]<what>``."""
        prefix = f"{self.source}: " + (f"layer {self.layer!r}: " if self.layer is not None else "")
        raise TraceError(prefix + what)

    def field_name(self, key: str) -> str:
        return f"metadata field '{self.prefix}{key}'"

    def sub(self, prefix: str) -> Where:
        """The same place, inside the JSON object ``prefix`` names (``"accuracy."``)."""
        return Where(self.source, self.layer, self.prefix + prefix)


def short(value: Any) -> str:
    """A metadata value as a message quotes it: JSON (strings repr'd), cut to 60 characters."""
    text = json.dumps(value) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
