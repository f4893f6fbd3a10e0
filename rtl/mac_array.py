"""The MAC array: P processing elements sharing one beat (partial-sum unit and sparse MAC array)."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Signal, signed, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from rtl.pe import ProcessingElement
from spec.config import EngineConfig

__all__ = ["MacArray"]


class MacArray(wiring.Component):
    """P processing elements working in lock-step on the same beat of different activations.

    In phase 1 the array is the partial-sum unit (base-path dot products of P consecutive output
    activations); in phase 2 it is the sparse MAC array (conditional path of P gated-on activations taken
    from the work queue, each PE starting from its activation's partial sum).

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` and the PE parameters.

    Members
    -------
    x_bits, w_bits : In(pes × lanes × width)
        Operand words of each PE (the arrays :attr:`x`, :attr:`w`; flat ports: no wire per PE in the
        Verilog).
    init_bits : In(pes × acc_width)
        Accumulator start value of each PE (the array :attr:`init`).
    inside : In(pes)
        Per PE: the beat's input position is inside the tile (not padding).
    en : In(pes)
        Per PE: it holds a valid activation this beat.
    lanes : In(range(lanes + 1))
        Valid lanes of the beat (shared).
    first : In(1)
        First beat of the round (shared).
    acc_bits : Out(pes × acc_width)
        The accumulators (the array :attr:`acc`).
    """

    x = ArrayPort(In)
    w = ArrayPort(In)
    init = ArrayPort(In)
    acc = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        p, n = config.pes, config.lanes
        self.array_layouts = {
            "x": data.ArrayLayout(unsigned(n * config.act_width), p),
            "w": data.ArrayLayout(unsigned(n * config.weight_width), p),
            "init": data.ArrayLayout(signed(config.acc_width), p),
            "acc": data.ArrayLayout(signed(config.acc_width), p),
        }
        super().__init__(
            {
                **ArrayPort.members(self),
                "inside": In(p),
                "en": In(p),
                "lanes": In(range(n + 1)),
                "first": In(1),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        # The beat's valid lanes as a thermometer code, decoded once for every PE.
        lane_en = Signal(self._config.lanes)
        m.d.comb += lane_en.eq(Cat(self.lanes > lane for lane in range(self._config.lanes)))
        for i in range(self._config.pes):
            pe = ProcessingElement(self._config)
            m.submodules[f"pe{i}"] = pe
            m.d.comb += [
                pe.x.eq(self.x[i]),
                pe.w.eq(self.w[i]),
                pe.init.eq(self.init[i]),
                pe.inside.eq(self.inside[i]),
                pe.en.eq(self.en[i]),
                pe.lane_en.eq(lane_en),
                pe.first.eq(self.first),
                self.acc[i].eq(pe.acc),
            ]
        return m
