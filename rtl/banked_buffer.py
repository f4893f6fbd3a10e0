"""A buffer of word-interleaved 1R1W banks read by every PE through a crossbar (docs/microarchitecture.md,
section 3, "Banked reads")."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from rtl.coords import addr_width
from rtl.one_hot import one_hot
from rtl.ram import ram_1r1w

__all__ = ["BankedBuffer"]


class BankedBuffer(wiring.Component):
    """``depth`` words in ``2^bank_bits`` banks, word ``a`` in bank ``a mod 2^bank_bits``, row
    ``a >> bank_bits``; each bank is one 1R1W memory, read once and written once per cycle at most.

    Each cycle every bank is read at the row of its lowest-numbered requesting PE; a request is granted
    when that row is its own (the bank serves every PE asking for its word: a broadcast). Without
    ``arbitrate`` the requests are known to be conflict-free (every PE asking one bank asks for one word),
    no row is compared and every request is granted. The word of a granted request arrives in ``rdata``
    one cycle later; a bank nobody reads holds its word.

    Parameters
    ----------
    pes : int
        Requesters P.
    bank_bits : int
        log2 of the bank count.
    width : int
        Bits of a word.
    depth : int
        Words (rounded up to a whole row of every bank).
    arbitrate : bool
        Grant one word per bank per cycle (others wait); else grant every request.
    halves : int
        1, or 2 for a double buffer: two halves of ``depth`` words each, the half of a write (``whalf``)
        and of every read (``rhalf``) an extra, top row-address bit of each bank (the host loads one half
        while the engine reads the other).

    Members
    -------
    waddr : In(address width)
        Word written (the load stream), with ``wdata`` and ``wen`` (and ``whalf``).
    whalf, rhalf : In(1)
        With two halves: the half written, and the half every PE reads.
    raddr_bits : In(pes × address width)
        Word each PE asks for: the array port :attr:`raddr`.
    rreq : In(pes)
        PE ``i`` asks for word ``raddr[i]`` this cycle.
    grant : Out(pes)
        PE ``i``'s request is served this cycle (its word in ``rdata[i]`` next cycle).
    rdata_bits : Out(pes × width)
        The word each PE was granted in the cycle before: the array port :attr:`rdata`.
    """

    raddr = ArrayPort(In)
    rdata = ArrayPort(Out)

    def __init__(
        self, pes: int, bank_bits: int, width: int, depth: int, arbitrate: bool, halves: int = 1
    ) -> None:
        if pes < 1 or bank_bits < 0:
            raise ValueError(f"BankedBuffer: needs pes >= 1 and bank_bits >= 0, got {pes} and {bank_bits}")
        if width < 1 or depth < 1:
            raise ValueError(f"BankedBuffer: width and depth must be positive, got {width} and {depth}")
        self._pes, self._bank_bits, self._width = pes, bank_bits, width
        if halves not in (1, 2):
            raise ValueError(f"BankedBuffer: halves must be 1 or 2, got {halves}")
        self._depth, self._arbitrate, self._halves = depth, bool(arbitrate), halves
        aw = addr_width(depth)
        self.array_layouts = {
            "raddr": data.ArrayLayout(unsigned(aw), pes),
            "rdata": data.ArrayLayout(unsigned(width), pes),
        }
        super().__init__(
            {
                "waddr": In(aw),
                "wdata": In(width),
                "wen": In(1),
                "whalf": In(1),
                "rhalf": In(1),
                "rreq": In(pes),
                "grant": Out(pes),
                **ArrayPort.members(self),
            }
        )

    @property
    def banks(self) -> int:
        return 1 << self._bank_bits

    @property
    def rows(self) -> int:
        return -(-self._depth // self.banks)

    def elaborate(self, platform) -> Module:
        m = Module()
        P, bb, nb = self._pes, self._bank_bits, self.banks

        def split(addr):  # (bank, row) of a word address
            return (addr[:bb] if bb else Const(0, 1)), addr[bb:]

        w_bank, w_row = split(self.waddr)
        w_hot = one_hot(m, w_bank, self.wen, nb, "w_hot")
        # Two halves: the half is the row address's top bit (half 1 from row 2^row_bits on).
        row_bits = len(w_row)
        depth = self.rows if self._halves == 1 else (1 << row_bits) + self.rows
        w_at = w_row if self._halves == 1 else Cat(w_row, self.whalf)

        # Each bank reads the row of its lowest-numbered requester (a priority chain, highest PE first).
        asks = [one_hot(m, split(self.raddr[i])[0], self.rreq[i], nb, f"ask{i}") for i in range(P)]
        rows, reads = [], []
        for b in range(nb):
            chain = Const(0, row_bits)
            for i in reversed(range(P)):
                chain = Mux(asks[i][b], split(self.raddr[i])[1], chain)
            row = Signal(row_bits, name=f"rrow{b}")  # read and compared: one copy of the chain
            m.d.comb += row.eq(chain)
            rows.append(row)
            reads.append(
                ram_1r1w(
                    m,
                    f"bank{b}",
                    unsigned(self._width),
                    depth,
                    waddr=w_at,
                    wdata=self.wdata,
                    wen=w_hot[b],
                    raddr=row if self._halves == 1 else Cat(row, self.rhalf),
                    ren=Cat(asks[i][b] for i in range(P)).any(),
                )
            )
        for i in range(P):
            if self._arbitrate:
                own = Cat(asks[i][b] & (rows[b] == split(self.raddr[i])[1]) for b in range(nb)).any()
                m.d.comb += self.grant[i].eq(own)
            else:
                m.d.comb += self.grant[i].eq(self.rreq[i])

        # The crossbar back: PE i takes the bank it was granted (registered with the read; one register of
        # every PE's bank).
        sel_bits = Signal(max(bb, 1) * P, reset_less=True)  # (plain bits: no alias wire per PE)
        for i in range(P):
            sel = sel_bits[i * max(bb, 1) : (i + 1) * max(bb, 1)]
            with m.If(self.grant[i]):
                m.d.sync += sel.eq(split(self.raddr[i])[0])
            with m.Switch(sel):
                for b in range(nb):
                    with m.Case(b):
                        m.d.comb += self.rdata[i].eq(reads[b])
        return m
