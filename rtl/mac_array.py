"""The MAC array: P processing elements sharing one beat (partial-sum unit and sparse MAC array)."""

from __future__ import annotations

from amaranth.hdl import Module, Signal, signed, unsigned
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
        # The beat's valid lanes as a thermometer code, decoded once for every PE (a case statement: one
        # signal driven as a whole, where a Cat of compares would be an alias of their bits).
        n = self._config.lanes
        lane_en = Signal(n)
        with m.Switch(self.lanes):
            for lanes in range(n):
                with m.Case(lanes):
                    m.d.comb += lane_en.eq((1 << lanes) - 1)
            with m.Default():  # lanes >= L: every lane
                m.d.comb += lane_en.eq((1 << n) - 1)
        for i in range(self._config.pes):
            pe = ProcessingElement(self._config)
            # The inputs every PE shares are the array's signals themselves (one name in the Verilog; a
            # PE port assigned from them would be an alias wire per PE that nothing reads).
            pe.lane_en, pe.first = lane_en, self.first
            m.submodules[f"pe{i}"] = pe
            m.d.comb += [
                pe.x.eq(self.x[i]),
                pe.w.eq(self.w[i]),
                pe.init.eq(self.init[i]),
                pe.inside.eq(self.inside[i]),
                pe.en.eq(self.en[i]),
                self.acc[i].eq(pe.acc),
            ]
        return m
