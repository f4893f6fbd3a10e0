"""Arithmetic by elaboration constants without multipliers or dividers: shift-and-add and reciprocals."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Value, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

__all__ = ["ConstantDivider", "const_mul", "reciprocal"]


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


def reciprocal(width: int, divisor: int) -> tuple[int, int]:
    """``(M, s)`` with ``floor(x / divisor) = (x · M) >> s`` for every ``0 ≤ x < 2**width``.

    ``s = width + ceil(log2(divisor))`` and ``M = ceil(2**s / divisor)``: the error ``M·divisor − 2**s`` is
    below ``divisor ≤ 2**(s − width)``, too small to reach the next multiple. A power-of-two divisor gives
    ``M = 1`` (a plain shift).
    """
    if not isinstance(width, int) or width < 1:
        raise ValueError(f"reciprocal: width must be a positive integer, got {width!r}")
    if not isinstance(divisor, int) or divisor < 1:
        raise ValueError(f"reciprocal: divisor must be a positive integer, got {divisor!r}")
    if divisor & (divisor - 1) == 0:
        return 1, divisor.bit_length() - 1
    shift = width + (divisor - 1).bit_length()
    return -(-(1 << shift) // divisor), shift


class ConstantDivider(wiring.Component):
    """``floor(x / divisor)`` for an elaboration constant, combinational, without a divider.

    The quotient is ``(x · M) >> s`` (:func:`reciprocal`), the product a sum of shifted copies of ``x``
    (:func:`const_mul`); a power-of-two divisor is a shift. Exact for every ``width``-bit ``x``.

    Parameters
    ----------
    width : int
        Width of the dividend (and of the quotient).
    divisor : int
        The divisor, at least 1.

    Members
    -------
    x : In(width)
        Dividend.
    quotient : Out(width)
        ``floor(x / divisor)``.
    """

    def __init__(self, width: int, divisor: int) -> None:
        try:
            self._multiplier, self._shift = reciprocal(width, divisor)
        except ValueError:
            self._MustUse__silence = True  # refused, not forgotten: no "created but never used" warning
            raise
        super().__init__({"x": In(unsigned(width)), "quotient": Out(unsigned(width))})

    def elaborate(self, platform) -> Module:
        m = Module()
        m.d.comb += self.quotient.eq(const_mul(self.x, self._multiplier) >> self._shift)
        return m
