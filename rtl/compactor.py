"""Gate compactor: turns a round's gate decisions into dense work-queue writes."""

from __future__ import annotations

from amaranth.hdl import Const, Module, Signal
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from spec.config import EngineConfig

__all__ = ["GateCompactor"]


class GateCompactor(wiring.Component):
    """Positions of the gated-on PEs of one round in the work queue (an exclusive prefix sum).

    PE ``i`` with ``valid[i] & gate[i]`` is written at the queue's tail plus
    ``offset[i] = #{j < i : valid[j] & gate[j]}``, so the queue holds the gated-on activations densely and
    in order; the sparse MAC array then reads it P entries at a time, which keeps every PE busy until the
    last round.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes``.

    Members
    -------
    valid : In(pes)
        PEs that finished an activation this cycle.
    gate : In(pes)
        Their gate decisions.
    write : Out(pes)
        PEs whose activation goes into the queue.
    offset_bits : Out(pes × bits of range(pes))
        Position of each such PE among this cycle's writes (from the tail); the array :attr:`offset` (a
        flat port: no wire per PE in the Verilog).
    count : Out(range(pes + 1))
        Number of queue writes this cycle.
    """

    offset = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        self.array_layouts = {"offset": data.ArrayLayout(range(config.pes), config.pes)}
        super().__init__(
            {
                "valid": In(config.pes),
                "gate": In(config.pes),
                "write": Out(config.pes),
                "count": Out(range(config.pes + 1)),
                **ArrayPort.members(self),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        P = self._config.pes
        taken = self.write  # (the port itself: no second name for it)
        m.d.comb += taken.eq(self.valid & self.gate)
        # Prefix counts, each at the width of its range (no unused carry bits); the last is the count.
        before = [Const(0, 1)] + [Signal(range(i + 1), name=f"before{i}") for i in range(1, P)] + [self.count]
        for i in range(P):
            m.d.comb += [self.offset[i].eq(before[i]), before[i + 1].eq(before[i] + taken[i])]
        return m
