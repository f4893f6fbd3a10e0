"""Multiplication by an elaboration constant without a multiplier: shift-and-add."""

from __future__ import annotations

from amaranth.hdl import Const, Value

__all__ = ["const_mul"]


def const_mul(value: Value, constant: int) -> Value:
    """``value · constant`` for an elaboration constant ``constant ≥ 0``, as a sum of shifted copies.

    No ``*`` operator reaches the Verilog (yosys would make a ``$mul`` cell of it); the sum has one adder
    per set bit of ``constant`` beyond the first.
    """
    if not isinstance(constant, int) or constant < 0:
        raise ValueError(f"const_mul: constant must be a non-negative integer, got {constant!r}")
    terms = [value << bit for bit in range(constant.bit_length()) if (constant >> bit) & 1]
    if not terms:
        return Const(0, 1)
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total
