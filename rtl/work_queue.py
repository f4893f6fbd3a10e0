"""The work queue: gated-on activations in P 1R1W banks, appended in order, read P at a time."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out
from amaranth.utils import ceil_log2

from rtl.array_port import ArrayPort
from rtl.ram import ram_1r1w
from spec.config import EngineConfig

__all__ = ["WorkQueue"]


class WorkQueue(wiring.Component):
    """Entry ``n`` of the queue lives in bank ``n mod P``, row ``n div P``; each bank is a 1R1W memory.

    Writes: the gated-on PEs of a round append their entries at the tail in PE order (``offset[i]``: the
    position of PE ``i`` among this cycle's writers, from the gate compactor). They are consecutive
    entries, so they fall into distinct banks: a rotator by the tail's bank steers each to its bank, one
    write per bank. The tail's bank and row are running registers (``+count`` with one compare-subtract),
    so no division by P is needed, whatever P is.

    Rewrites (``update``): bank ``i`` writes ``update_data[i]`` into row ``update_row`` (the engine
    writes one phase-2 result per cycle into its own entry). A bank takes an append or a rewrite in a
    cycle, never both (appends happen in phase 1, rewrites in phase 2).

    Reads: every enabled bank reads row ``read_row`` (the engine's phase-2 filler reads one entry per
    cycle, the unload stream one bank of a row). ``read_en[i]`` enables
    bank ``i`` (only entries that were written: SRAM holds undefined data elsewhere); ``rdata[i]`` follows
    one cycle later and keeps its value while disabled.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` (banks) and ``output_depth`` (entries).
    width : int
        Bits of one entry (the engine views them through ``rtl.engine.queue_layout``).

    Members
    -------
    clear : In(1)
        Empty the queue (the tail returns to entry 0).
    write : In(pes)
        PEs appending an entry this cycle.
    offset_bits : In(pes × bits of range(pes))
        Position of each writing PE among this cycle's writers (0 = first, at the tail); the array
        :attr:`offset` (flat ports, viewed as arrays: no wire per PE in the Verilog).
    wdata_bits : In(pes × width)
        Each PE's entry (the array :attr:`wdata`).
    count : In(range(pes + 1))
        Entries appended this cycle (the writers' count).
    update : In(pes)
        Per bank: rewrite entry ``update_row·P + i`` with ``update_data[i]``.
    update_row : In(range(rows))
        Row of the rewrites.
    update_data_bits : In(pes × width)
        The rewritten entries (the array :attr:`update_data`).
    read_row : In(range(rows + 1))
        Row read by every bank (the round's first entry divided by P).
    read_en : In(pes)
        Per bank: read this cycle.
    rdata_bits : Out(pes × width)
        Bank ``i``'s word of the row read the cycle before (the array :attr:`rdata`).
    """

    offset = ArrayPort(In)
    wdata = ArrayPort(In)
    update_data = ArrayPort(In)
    rdata = ArrayPort(Out)

    def __init__(self, config: EngineConfig, width: int) -> None:
        self._config = config
        self._width = width
        P = config.pes
        self._rows = config.bank_rows
        entries = data.ArrayLayout(unsigned(width), P)
        self.array_layouts = {
            "offset": data.ArrayLayout(range(P), P),
            "wdata": entries,
            "update_data": entries,
            "rdata": entries,
        }
        super().__init__(
            {
                "clear": In(1),
                "write": In(P),
                "count": In(range(P + 1)),
                "update": In(P),
                "update_row": In(range(max(self._rows, 2))),
                "read_row": In(range(self._rows + 1)),
                "read_en": In(P),
                **ArrayPort.members(self),
            }
        )

    @property
    def rows(self) -> int:
        """Rows of each bank (``ceil(output_depth / P)``)."""
        return self._rows

    def elaborate(self, platform) -> Module:
        m = Module()
        P, rows, width = self._config.pes, self._rows, self._width
        tail_bank = Signal(range(P), reset_less=True)  # set by `clear` before the first append
        tail_row = Signal(range(rows + 1), reset_less=True)

        # Bank (one-hot) and row of each writer: tail + offset, with one compare-subtract (tail_bank + offset
        # < 2P); a writer's one-hot bank is its column of the rotator.
        # (A signal assigned the low bits of a wider value is an alias wire in the Verilog that nothing
        # reads: the index is a value, the row a signal as wide as its sum, truncated at the bank's address.)
        bank, row = [], []
        index_width = len(Signal(range(P)))
        for i in range(P):
            pos = Signal(range(2 * P), name=f"wpos{i}")
            m.d.comb += pos.eq(tail_bank + self.offset[i])
            index = Mux(pos >= P, pos - P, pos)[:index_width]
            # (a shift, not a case statement (rtl/one_hot.py): this one synthesizes smaller here)
            bank.append(Signal(P, name=f"wbank{i}"))
            m.d.comb += bank[i].eq(Mux(self.write[i], Const(1, P) << index, 0))
            row_sum = tail_row + (pos >= P)
            row.append(Signal(len(row_sum), name=f"wrow{i}"))
            m.d.comb += row[i].eq(row_sum)
        tail_next = Signal(range(2 * P))
        m.d.comb += tail_next.eq(tail_bank + self.count)
        with m.If(self.clear):
            m.d.sync += [tail_bank.eq(0), tail_row.eq(0)]
        with m.Else():
            m.d.sync += [
                tail_bank.eq(Mux(tail_next >= P, tail_next - P, tail_next)),
                tail_row.eq(tail_row + (tail_next >= P)),
            ]

        for b in range(P):
            # The rotator: the one writer (if any) whose position falls into bank b.
            hit = [bank[i][b] for i in range(P)]
            waddr = Signal(ceil_log2(rows), name=f"waddr{b}")
            wdata = Signal(width, name=f"wdata{b}")
            with m.If(self.update[b]):
                m.d.comb += [waddr.eq(self.update_row), wdata.eq(self.update_data[b])]
            for i in range(P):
                with m.If(hit[i]):
                    m.d.comb += [waddr.eq(row[i]), wdata.eq(self.wdata[i])]
            rdata = ram_1r1w(
                m,
                f"bank{b}",
                unsigned(width),
                rows,
                waddr=waddr,
                wdata=wdata,
                wen=Cat(*hit).any() | self.update[b],
                raddr=self.read_row,
                ren=self.read_en[b],
            )
            m.d.comb += self.rdata[b].eq(rdata)
        return m
