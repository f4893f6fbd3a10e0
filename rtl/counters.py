"""Performance counters of one engine run (docs/microarchitecture.md, section 4)."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Shape, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from spec.config import EngineConfig
from spec.protocol import Counter

__all__ = ["PerfCounters", "queue_count_shape"]


def queue_count_shape(config: EngineConfig) -> Shape:
    """Shape of a count of work-queue entries: up to the output buffer's depth and one round of P more."""
    return unsigned((config.output_depth + config.pes).bit_length())


class PerfCounters(wiring.Component):
    """Counts what the engine does while ``busy``; ``value`` lists the counters in unload order.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes``, ``lanes``, ``counter_width`` and ``output_depth``.

    Members
    -------
    clear : In(1)
        Zero every counter (at ``start``).
    busy : In(1)
        A cycle of the run.
    issue : In(1)
        A beat is issued this cycle.
    phase2 : In(1)
        The beat belongs to the conditional path.
    valid_pes : In(range(pes + 1))
        PEs holding a valid activation in this beat.
    lanes : In(range(lanes + 1))
        Valid lanes of this beat.
    gates_on : In(queue_count_shape(config))
        Gated-on activations so far (kept by the engine); its counter is this count, zero-extended.
    value_bits : Out(7 × counter_width)
        The counters, each at its :class:`spec.protocol.Counter` address; the array :attr:`value` (a flat
        port: no wire per counter in the Verilog).
    """

    value = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        w = config.counter_width
        self.array_layouts = {"value": data.ArrayLayout(unsigned(w), len(Counter))}
        super().__init__(
            {
                "clear": In(1),
                "busy": In(1),
                "issue": In(1),
                "phase2": In(1),
                "valid_pes": In(range(config.pes + 1)),
                "lanes": In(range(config.lanes + 1)),
                "gates_on": In(queue_count_shape(config)),
                **ArrayPort.members(self),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        w = self._config.counter_width
        cycles, base, cond, busy_pe, idle, stalls = (
            Signal(w, name=n) for n in ("cycles", "base", "cond", "busy_pe", "idle", "stalls")
        )
        P = self._config.pes
        macs = self.valid_pes * self.lanes
        # idle PE-cycles = P·cycles − busy_pe_cycles, kept as a counter of its own (P − valid PEs per issue
        # cycle, P per other busy cycle): the unload reads a register, not a subtraction of two.
        idle_step = Signal(range(P + 1))
        m.d.comb += idle_step.eq(Mux(self.issue, P - self.valid_pes, P))
        with m.If(self.clear):
            m.d.sync += [c.eq(0) for c in (cycles, base, cond, busy_pe, idle, stalls)]
        with m.Elif(self.busy):
            m.d.sync += [cycles.eq(cycles + 1), idle.eq(idle + idle_step)]
            with m.If(self.issue):
                m.d.sync += busy_pe.eq(busy_pe + self.valid_pes)
                with m.If(self.phase2):
                    m.d.sync += cond.eq(cond + macs)
                with m.Else():
                    m.d.sync += base.eq(base + macs)
            with m.Else():
                m.d.sync += stalls.eq(stalls + 1)
        values = {
            Counter.CYCLES: cycles,
            Counter.BASE_MACS: base,
            Counter.COND_MACS: cond,
            Counter.BUSY_PE_CYCLES: busy_pe,
            Counter.IDLE_PE_CYCLES: idle,
            Counter.STALL_CYCLES: stalls,
            Counter.GATES_ON: self.gates_on,
        }
        for counter, value in values.items():
            m.d.comb += self.value[counter.value].eq(value)
        return m
