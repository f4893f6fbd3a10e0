"""One processing element: L lanes of signed multiply-accumulate into one accumulator."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import wiring
from amaranth.lib.wiring import In, Out

from spec.config import EngineConfig

__all__ = ["ProcessingElement"]


class ProcessingElement(wiring.Component):
    """L-lane int MAC with an accumulator that is loaded on the first beat of an activation.

    Each cycle with ``en`` high, ``acc`` becomes ``(init if first else acc) + Σ x[l]·w[l]`` over the lanes
    with ``lane_en[l]`` high; the sum is forced to zero when ``inside`` is low (a padding position).

    Parameters
    ----------
    config : EngineConfig
        Supplies ``lanes``, ``act_width``, ``weight_width`` and ``acc_width``.

    Members
    -------
    x : In(lanes × act_width)
        Input word, lane ``l`` at bits ``[l·act_width, (l+1)·act_width)``, two's complement.
    w : In(lanes × weight_width)
        Weight word, same packing.
    lane_en : In(lanes)
        Valid lanes of this beat (a thermometer code, decoded once for all PEs by the MAC array); a lane
        with its bit low contributes nothing.
    inside : In(1)
        Low at a zero-padding position.
    first : In(1)
        First beat of an activation: start from ``init`` instead of ``acc``.
    init : In(signed(acc_width))
        Accumulator start value (0 for a partial sum, the partial sum for the conditional path).
    en : In(1)
        Accumulate this cycle.
    acc : Out(signed(acc_width))
        The accumulator register.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        n = config.lanes
        super().__init__(
            {
                "x": In(unsigned(n * config.act_width)),
                "w": In(unsigned(n * config.weight_width)),
                "lane_en": In(n),
                "inside": In(1),
                "first": In(1),
                "init": In(signed(config.acc_width)),
                "en": In(1),
                "acc": Out(signed(config.acc_width)),
            }
        )
        self.acc = Signal(signed(config.acc_width), reset_less=True, name="acc")  # the accumulator register

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        a, w = cfg.act_width, cfg.weight_width
        products = []
        for lane in range(cfg.lanes):
            xl = self.x[lane * a : (lane + 1) * a].as_signed()
            wl = self.w[lane * w : (lane + 1) * w].as_signed()
            products.append(Mux(self.lane_en[lane], xl * wl, 0))
        # A balanced adder tree: the combinational depth grows with log2(L), as in silicon.
        while len(products) > 1:
            products = [
                products[i] + products[i + 1] if i + 1 < len(products) else products[i]
                for i in range(0, len(products), 2)
            ]
        # The dot product at the accumulator's width, zero at a padding position: assigned under a
        # condition, it is a wire of that width in the Verilog (an operand of the accumulator's adder as
        # wide as the other; a Mux would be a narrower operand that the adder extends).
        dot = Signal(signed(cfg.acc_width))
        with m.If(self.inside):
            m.d.comb += dot.eq(products[0])
        # A datapath register: no reset (loaded at the first beat of every activation). The port is the
        # register (__init__), no second name for it.
        acc = self.acc
        with m.If(self.en):
            m.d.sync += acc.eq(Mux(self.first, self.init, acc) + dot)
        return m
