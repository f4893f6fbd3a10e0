"""The value types of ``accel``'s options: argparse ``type=`` callables shared by every subcommand.

Each one turns the option's text into its value or raises ``argparse.ArgumentTypeError`` naming what was
expected, so a bad option ends in argparse's usage line and ``accel <command>: error: argument ...``
(exit status 2), before any work.
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable
from pathlib import Path

__all__ = ["float_in", "int_in", "nonempty_arg", "number_arg", "out_path_arg", "path_arg"]


def number_arg(convert: Callable, what: str, accept: Callable, expected: str) -> Callable:
    """``convert`` the text (``int`` or ``float``), refuse it unless ``accept(value)``, naming ``what``.

    Integers are written in plain ASCII digits: ``int()`` would also take ``1_0`` and other scripts' digits.
    """

    def parse(text: str):
        try:
            if convert is int and (not text.strip().lstrip("+-").isascii() or "_" in text):
                raise ValueError(text)
            value = convert(text)
        except (ValueError, OverflowError):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: expected {expected}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"invalid {what} {value}: expected {expected}")
        return value

    return parse


def int_in(what: str, lo: int, hi: int) -> Callable:
    """An integer in ``[lo, hi]``."""
    return number_arg(int, what, lambda v: lo <= v <= hi, f"an integer in [{lo}, {hi}]")


def float_in(what: str, lo: float, hi: float, *, lo_open: bool = False, hi_open: bool = False) -> Callable:
    """A finite number in the interval ``lo .. hi`` (each end open or closed)."""

    def accept(v: float) -> bool:
        return math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v < hi if hi_open else v <= hi)

    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return number_arg(float, what, accept, f"a number in {interval}")


def path_arg(text: str) -> Path:
    """A file or folder name: not empty (``Path("")`` would silently be the current folder), no NUL."""
    if not text.strip() or "\0" in text:
        raise argparse.ArgumentTypeError(f"{text!r}: not a file name")
    return Path(text)


def out_path_arg(text: str) -> Path:
    """``--out``: as :func:`path_arg`, saying that an empty path would have meant the current folder."""
    if not text.strip():
        raise argparse.ArgumentTypeError("empty path: name a folder")
    return path_arg(text)


def nonempty_arg(what: str) -> Callable[[str], str]:
    """Text that is not empty (an empty name or path would silently mean none or the current one)."""

    def parse(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"empty {what}")
        return text

    return parse
