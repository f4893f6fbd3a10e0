"""The threshold buffer: P 1R1W banks by output channel, one read per bank broadcast to its PEs."""

from __future__ import annotations

from amaranth.hdl import Cat, Module, Mux, Signal, signed
from amaranth.lib import data, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort
from rtl.one_hot import one_hot
from rtl.ram import ram_1r1w
from spec.config import EngineConfig

__all__ = ["ThresholdBuffer"]


class ThresholdBuffer(wiring.Component):
    """τ[co] in bank ``co mod P``, row ``co div P`` (``ceil(threshold_depth / P)`` rows per bank, 1R1W).

    Only phase 1 reads thresholds, and a phase-1 round's P activations lie in at most P consecutive output
    channels: two PEs that ask the same bank ask the same channel (channels P apart cannot share a round).
    So each bank reads at most one word per cycle and broadcasts it; the caller guarantees this (PEs that
    read a bank in one cycle give the same row). A crossbar returns each PE its bank's word.

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` (banks), ``threshold_depth`` and ``acc_width``.

    Members
    -------
    waddr : In(range(rows << bank_bits))
        Banked address of a write, ``row << bank_bits | bank`` (the load stream's address).
    wdata : In(signed(acc_width))
        The threshold written.
    wen : In(1)
        Write this cycle.
    whalf, rhalf : In(1)
        The half written and the half read (two halves, as the engine's other buffers: the host loads one
        while a run reads the other; the half is each bank's top row-address bit).
    bank_bits : In(pes × bits of range(pes))
        Per PE: the bank of its channel (``co mod P``); the array :attr:`bank` (flat ports, viewed as
        arrays: no wire per PE in the Verilog).
    row_bits : In(pes × bits of range(rows))
        Per PE: the row of its channel (``co div P``); the array :attr:`row`.
    en : In(pes)
        Per PE: read its threshold this cycle.
    rdata_bits : Out(pes × acc_width)
        Per PE: the threshold it read the cycle before; the array :attr:`rdata`.
    """

    bank = ArrayPort(In)
    row = ArrayPort(In)
    rdata = ArrayPort(Out)

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        P = config.pes
        self._rows = config.threshold_rows
        self.array_layouts = {
            "bank": data.ArrayLayout(range(P), P),
            "row": data.ArrayLayout(range(max(self._rows, 2)), P),
            "rdata": data.ArrayLayout(signed(config.acc_width), P),
        }
        super().__init__(
            {
                "waddr": In(range(max(self._rows << config.bank_bits, 2))),
                "wdata": In(signed(config.acc_width)),
                "wen": In(1),
                "whalf": In(1),
                "rhalf": In(1),
                "en": In(P),
                **ArrayPort.members(self),
            }
        )

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        P, rows, bits = cfg.pes, self._rows, cfg.bank_bits
        wbank, wrow = self.waddr[:bits], self.waddr[bits:]
        wsel = one_hot(m, wbank, self.wen, P, "wsel")
        # One-hot bank of each PE's read (none when it does not read).
        ask = [one_hot(m, self.bank[i], self.en[i], P, f"ask{i}") for i in range(P)]
        words = []
        row_bits = len(wrow)
        for b in range(P):
            depth = (1 << row_bits) + rows
            # Every PE asking bank b asks the same row: OR them.
            row = 0
            for i in range(P):
                row = row | Mux(ask[i][b], self.row[i], 0)
            at = Signal(row_bits, name=f"rrow{b}")
            m.d.comb += at.eq(row)
            words.append(
                ram_1r1w(
                    m,
                    f"bank{b}",
                    signed(cfg.acc_width),
                    depth,
                    waddr=Cat(wrow, self.whalf),
                    wdata=self.wdata,
                    wen=wsel[b],
                    raddr=Cat(at, self.rhalf),
                    ren=sum(ask[i][b] for i in range(P)) != 0,
                )
            )
        # The crossbar: each PE takes its bank's word (the bank as it was when the read was issued).
        for i in range(P):
            was = Signal(P, name=f"was{i}", reset_less=True)  # one-hot; set by every read
            with m.If(self.en[i]):
                m.d.sync += was.eq(ask[i])
            value = 0
            for b in range(P):
                value = value | Mux(was[b], words[b], 0)
            m.d.comb += self.rdata[i].eq(value)
        return m
