"""Gate compactor: turns a round's gate decisions into dense work-queue writes."""

from __future__ import annotations

from amaranth.hdl import Module, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from spec.config import EngineConfig

__all__ = ["GateCompactor"]


class GateCompactor(wiring.Component):
    """Positions of the gated-on PEs of one round in the work queue (an exclusive prefix sum).

    PE ``i`` with ``valid[i] & gate[i]`` is written at ``base + #{j < i : valid[j] & gate[j]}``, so the
    queue holds the gated-on activations densely and in order; the sparse MAC array then reads it P
    entries at a time, which keeps every PE busy until the last round.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` and ``output_depth`` (the queue depth).

    Members
    -------
    valid : In(pes)
        PEs that finished an activation this cycle.
    gate : In(pes)
        Their gate decisions.
    base : In(range(output_depth + 1))
        Entries already in the queue.
    write : Out(pes)
        PEs whose activation goes into the queue.
    index : Out(ArrayLayout(range(output_depth + pes), pes))
        Queue position of each such PE.
    count : Out(range(pes + 1))
        Number of queue writes this cycle.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        span = unsigned((config.output_depth + config.pes).bit_length())
        super().__init__(
            {
                "valid": In(config.pes),
                "gate": In(config.pes),
                "base": In(span),
                "write": Out(config.pes),
                "index": Out(data.ArrayLayout(span, config.pes)),
                "count": Out(range(config.pes + 1)),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        taken = self.valid & self.gate
        m.d.comb += self.write.eq(taken)
        before = 0
        for i in range(self._config.pes):
            m.d.comb += self.index[i].eq(self.base + before)
            before = before + taken[i]
        m.d.comb += self.count.eq(before)
        return m
