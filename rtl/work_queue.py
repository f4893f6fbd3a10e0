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
    cycle). ``read_en[i]`` enables
    bank ``i`` (only entries that were written: SRAM holds undefined data elsewhere); ``rdata[i]`` follows
    one cycle later and keeps its value while disabled.

    **Two halves** (a double buffer): every bank is two 1R1W memories, half 0 and half 1. The ports above
    (the engine's) use half ``half``; the **host ports** (``host_*``: the load stream's entry writes into
    half ``host_whalf``, the unload stream's reads from half ``host_rhalf``), each memory its own ports,
    so the host reads the results of one tile while a run uses the other half. (The engine drives its
    ports only while busy, and lets the host in to its own half only while idle.)

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
    read_row : In(range(max(rows, 2)))
        Row read by every bank (the round's first entry divided by P).
    read_en : In(pes)
        Per bank: read this cycle.
    rdata_bits : Out(pes × width)
        Bank ``i``'s word of the row read the cycle before (the array :attr:`rdata`).
    half : In(1)
        The half of the engine's ports.
    host_whalf, host_rhalf : In(1)
        The half the host writes, and the half it reads.
    host_write : In(pes)
        Per bank: write ``host_data`` into row ``host_wrow``.
    host_read : In(pes)
        Per bank: read row ``host_rrow``.
    host_wrow, host_rrow : In(range(rows))
        Rows of the host's write and read.
    host_data : In(width)
        The entry the host writes.
    host_rdata_bits : Out(pes × width)
        Bank ``i``'s word of the host's read the cycle before (the array :attr:`host_rdata`).
    """

    offset = ArrayPort(In)
    wdata = ArrayPort(In)
    update_data = ArrayPort(In)
    rdata = ArrayPort(Out)
    host_rdata = ArrayPort(Out)

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
            "host_rdata": entries,
        }
        super().__init__(
            {
                "clear": In(1),
                "write": In(P),
                "count": In(range(P + 1)),
                "update": In(P),
                "update_row": In(range(max(self._rows, 2))),
                "read_row": In(range(max(self._rows, 2))),
                "read_en": In(P),
                "half": In(1),
                "host_whalf": In(1),
                "host_rhalf": In(1),
                "host_write": In(P),
                "host_read": In(P),
                "host_wrow": In(range(max(self._rows, 2))),
                "host_rrow": In(range(max(self._rows, 2))),
                "host_data": In(width),
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
        # The banks' address width: the writers' rows (as before, the bank address's low bits of tail + 1)
        # and the read row are cut to it before the host's mux.
        aw = ceil_log2(rows)
        bank, row = [], []
        index_width = len(Signal(range(P)))
        for i in range(P):
            pos = Signal(range(2 * P), name=f"wpos{i}")
            m.d.comb += pos.eq(tail_bank + self.offset[i])
            index = Mux(pos >= P, pos - P, pos)[:index_width]
            # (a shift, not a case statement (rtl/one_hot.py): this one synthesizes smaller here)
            bank.append(Signal(P, name=f"wbank{i}"))
            m.d.comb += bank[i].eq(Mux(self.write[i], Const(1, P) << index, 0))
            row.append(Signal(aw, name=f"wrow{i}"))
            m.d.comb += row[i].eq(tail_row + (pos >= P))
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
            # The engine's side of bank b: an append (the rotator: the one writer, if any, whose position
            # falls into bank b) or a rewrite, and the filler's read.
            hit = [bank[i][b] for i in range(P)]
            e_wen, e_waddr = Signal(name=f"e_wen{b}"), Signal(range(max(rows, 2)), name=f"e_waddr{b}")
            e_wdata = Signal(width, name=f"e_wdata{b}")
            with m.If(self.update[b]):
                m.d.comb += [e_waddr.eq(self.update_row), e_wdata.eq(self.update_data[b])]
            for i in range(P):
                with m.If(hit[i]):
                    m.d.comb += [e_waddr.eq(row[i]), e_wdata.eq(self.wdata[i])]
            m.d.comb += e_wen.eq(Cat(*hit).any() | self.update[b])
            data_of = []
            for k in range(2):
                mine = Signal(name=f"mine{b}_{k}")
                h_w, h_r = Signal(name=f"host_w{b}_{k}"), Signal(name=f"host_r{b}_{k}")
                m.d.comb += [
                    mine.eq(self.half == k),
                    h_w.eq((self.host_whalf == k) & self.host_write[b]),
                    h_r.eq((self.host_rhalf == k) & self.host_read[b]),
                ]
                data_of.append(
                    ram_1r1w(
                        m,
                        f"bank{b}_{k}",
                        unsigned(width),
                        rows,
                        waddr=Mux(h_w, self.host_wrow, e_waddr),
                        wdata=Mux(h_w, self.host_data, e_wdata),
                        wen=(mine & e_wen) | h_w,
                        raddr=Mux(h_r, self.host_rrow, self.read_row[:aw]),
                        ren=(mine & self.read_en[b]) | h_r,
                    )
                )
            # Which half each side read last (registered with the read, as the data).
            e_was, h_was = (
                Signal(name=f"e_was{b}", reset_less=True),
                Signal(name=f"h_was{b}", reset_less=True),
            )
            with m.If(self.read_en[b]):
                m.d.sync += e_was.eq(self.half)
            with m.If(self.host_read[b]):
                m.d.sync += h_was.eq(self.host_rhalf)
            m.d.comb += [
                self.rdata[b].eq(Mux(e_was, data_of[1], data_of[0])),
                self.host_rdata[b].eq(Mux(h_was, data_of[1], data_of[0])),
            ]
        return m
