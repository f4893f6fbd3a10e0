"""Threshold comparators: the integer form of the CGNet gate, one per PE."""

from __future__ import annotations

from amaranth.hdl import Module, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from spec.config import EngineConfig

__all__ = ["ThresholdComparator"]


class ThresholdComparator(wiring.Component):
    """``gate[i] = psum[i] > threshold[i]`` (signed), combinational.

    With int8 operands the gate's ``BN_g(p) > Δ_c`` folds into ``p > τ_c`` with an integer ``τ_c``
    (docs/microarchitecture.md, section 1).

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` and ``acc_width``.

    Members
    -------
    psum_bits, threshold_bits : In(pes × acc_width)
        Partial sums, and the threshold of each one's output channel: flat ports (no wire per PE in the
        Verilog), read and written as the arrays :attr:`psum`, :attr:`threshold`.
    gate : Out(pes)
        One gate decision per PE.
    """

    psum = ArrayPort(In)
    threshold = ArrayPort(In)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        word = data.ArrayLayout(signed(config.acc_width), config.pes)
        self.array_layouts = {"psum": word, "threshold": word}
        super().__init__({**ArrayPort.members(self), "gate": Out(config.pes)})

    def elaborate(self, platform) -> Module:
        m = Module()
        for i in range(self._config.pes):
            m.d.comb += self.gate[i].eq(self.psum[i] > self.threshold[i])
        return m
