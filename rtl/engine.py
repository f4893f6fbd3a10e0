"""The gated convolution engine: buffers, sequencer and the datapath blocks wired together."""

from __future__ import annotations

from amaranth.hdl import Module, Mux, Signal, signed, unsigned
from amaranth.lib import data, memory, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.compactor import GateCompactor
from rtl.comparator import ThresholdComparator
from rtl.coords import CoordinateChain, coord_layout
from rtl.counters import PerfCounters
from rtl.mac_array import MacArray
from spec.config import EngineConfig
from spec.protocol import (
    CONFIG_REGISTERS,
    REGISTER_WIDTH,
    Counter,
    LoadTarget,
    UnloadTarget,
    load_layout,
    output_layout,
    read_layout,
)

__all__ = ["GatedConvEngine", "queue_layout"]


def queue_layout(config: EngineConfig) -> data.StructLayout:
    """One work-queue entry: a gated-on activation and its partial sum."""
    return data.StructLayout({"coord": coord_layout(config), "p": signed(config.acc_width)})


class GatedConvEngine(wiring.Component):
    """Channel-gated convolution engine (docs/microarchitecture.md is its specification).

    Parameters
    ----------
    config : EngineConfig
        Elaboration parameters.

    Members
    -------
    load : In(stream.Signature(load_layout(config)))
        Configuration register and buffer writes; ready while idle.
    req : In(stream.Signature(read_layout(config)))
        Unload requests for output-buffer entries and counters; ready while idle.
    resp : Out(stream.Signature(data_width))
        Unload responses, in request order.
    start : In(1)
        Begin a run (sampled while idle).
    busy : Out(1)
        High during the cycles of a run.
    done : Out(1)
        High for one cycle after a run.
    wb_valid : Out(pes)
        Trace port: PE ``i`` writes an output-buffer entry this cycle.
    wb_addr : Out(ArrayLayout(lin, pes))
        Trace port: the entry PE ``i`` writes.
    """

    def __init__(self, config: EngineConfig) -> None:
        self._config = config
        super().__init__(
            {
                "load": In(stream.Signature(load_layout(config))),
                "req": In(stream.Signature(read_layout(config))),
                "resp": Out(stream.Signature(unsigned(config.data_width))),
                "start": In(1),
                "busy": Out(1),
                "done": Out(1),
                "wb_valid": Out(config.pes),
                "wb_addr": Out(data.ArrayLayout(coord_layout(config)["lin"].shape, config.pes)),
            }
        )

    @property
    def config(self) -> EngineConfig:
        return self._config

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        P, L, K, S, G = cfg.pes, cfg.lanes, cfg.kernel, cfg.stride, cfg.groups
        KK = K * K
        count_shape = unsigned((cfg.output_depth + P).bit_length())

        # ---- configuration registers --------------------------------------------------------------
        reg = {
            name: Signal(1 if name == "dense" else REGISTER_WIDTH, name=f"cfg_{name}")
            for name in CONFIG_REGISTERS
        }
        dense = reg["dense"]

        # ---- buffers ----------------------------------------------------------------------------
        m.submodules.inbuf = inbuf = memory.Memory(
            shape=unsigned(L * cfg.act_width), depth=cfg.input_depth, init=[]
        )
        m.submodules.wbuf = wbuf = memory.Memory(
            shape=unsigned(L * cfg.weight_width), depth=cfg.weight_depth, init=[]
        )
        m.submodules.tbuf = tbuf = memory.Memory(
            shape=signed(cfg.acc_width), depth=cfg.threshold_depth, init=[]
        )
        m.submodules.obuf = obuf = memory.Memory(shape=output_layout(cfg), depth=cfg.output_depth, init=[])
        m.submodules.queue = queue = memory.Memory(shape=queue_layout(cfg), depth=cfg.output_depth, init=[])
        in_w, w_w, t_w = inbuf.write_port(), wbuf.write_port(), tbuf.write_port()
        in_r = [inbuf.read_port() for _ in range(P)]
        w_r = [wbuf.read_port() for _ in range(P)]
        t_r = [tbuf.read_port() for _ in range(P)]
        o_w = [obuf.write_port() for _ in range(P)]
        o_r = obuf.read_port()
        q_w = [queue.write_port() for _ in range(P)]
        q_r = [queue.read_port() for _ in range(P)]

        # ---- blocks -----------------------------------------------------------------------------
        m.submodules.chain = chain = CoordinateChain(cfg)
        m.submodules.macs = macs = MacArray(cfg)
        m.submodules.comparator = comparator = ThresholdComparator(cfg)
        m.submodules.compactor = compactor = GateCompactor(cfg)
        m.submodules.counters = counters = PerfCounters(cfg)

        # ---- load stream --------------------------------------------------------------------------
        idle = Signal()
        m.d.comb += self.load.ready.eq(idle)
        load = self.load.payload
        accept = self.load.valid & self.load.ready
        for port, sel in ((in_w, LoadTarget.INPUT), (w_w, LoadTarget.WEIGHT), (t_w, LoadTarget.THRESHOLD)):
            m.d.comb += [
                port.addr.eq(load.addr),
                port.data.eq(load.data),
                port.en.eq(accept & (load.sel == sel)),
            ]
        with m.If(accept & (load.sel == LoadTarget.CONFIG)):
            with m.Switch(load.addr):
                for i, name in enumerate(CONFIG_REGISTERS):
                    with m.Case(i):
                        m.d.sync += reg[name].eq(load.data)

        # ---- derived quantities, latched in SETUP -------------------------------------------------
        wide = unsigned(2 * REGISTER_WIDTH + count_shape.width)
        seg_b, seg_c = Signal(REGISTER_WIDTH), Signal(REGISTER_WIDTH)
        out_per_group = Signal(REGISTER_WIDTH)
        nch_b, nch_c = Signal(REGISTER_WIDTH), Signal(REGISTER_WIDTH)
        n_chunks = Signal(REGISTER_WIDTH + 8)
        n_out = Signal(wide)
        hw_in = Signal(2 * REGISTER_WIDTH)
        cond_slots = G - 1 if G > 1 else 1  # conditional segments of an activation
        if G > 1:
            seg_b_val = reg["c_in"] // G
            seg_c_val = seg_b_val
            opg_val = reg["c_out"] // G
        else:
            seg_b_val = reg["base_channels"]
            seg_c_val = reg["c_in"] - reg["base_channels"]
            opg_val = reg["c_out"]
        nch_b_val = (seg_b_val + (L - 1)) // L
        nch_c_val = (seg_c_val + (L - 1)) // L
        setup = Signal()
        with m.If(setup):
            m.d.sync += [
                seg_b.eq(seg_b_val),
                seg_c.eq(seg_c_val),
                out_per_group.eq(opg_val),
                nch_b.eq(nch_b_val),
                nch_c.eq(nch_c_val),
                n_chunks.eq(nch_b_val + cond_slots * nch_c_val),
                n_out.eq(reg["c_out"] * reg["h_out"] * reg["w_out"]),
                hw_in.eq(reg["h_in"] * reg["w_in"]),
            ]
        m.d.comb += [
            chain.h_out.eq(reg["h_out"]),
            chain.w_out.eq(reg["w_out"]),
            chain.out_per_group.eq(out_per_group),
        ]

        # ---- beat sequencer -----------------------------------------------------------------------
        phase2 = Signal()
        issue = Signal()
        slot = Signal(range(max(G, 2) + 1))
        chunk = Signal(REGISTER_WIDTH)
        ky, kx = Signal(range(K)), Signal(range(K))
        other = phase2 | (dense & (slot != 0))  # beat works on a conditional-width segment
        last_slot = Mux(phase2, cond_slots - 1, Mux(dense, cond_slots, 0))
        chunk_limit = Mux(other, nch_c, nch_b)
        seg_width = Mux(other, seg_c, seg_b)
        remaining = seg_width - chunk * L
        lanes = Mux(remaining > L, L, remaining)
        kx_last, ky_last = kx == K - 1, ky == K - 1
        chunk_last = chunk + 1 == chunk_limit
        slot_last = slot == last_slot
        last_beat = kx_last & ky_last & chunk_last & slot_last
        first_beat = (kx == 0) & (ky == 0) & (chunk == 0) & (slot == 0)
        with m.If(setup):
            m.d.sync += [slot.eq(0), chunk.eq(0), ky.eq(0), kx.eq(0)]
        with m.Elif(issue):
            m.d.sync += kx.eq(Mux(kx_last, 0, kx + 1))
            with m.If(kx_last):
                m.d.sync += ky.eq(Mux(ky_last, 0, ky + 1))
                with m.If(ky_last):
                    m.d.sync += chunk.eq(Mux(chunk_last, 0, chunk + 1))
                    with m.If(chunk_last):
                        m.d.sync += slot.eq(Mux(slot_last, 0, slot + 1))

        # ---- work queue state -----------------------------------------------------------------
        gates_on = Signal(count_shape)
        queue_base = Signal(count_shape)  # first queue entry of the current phase-2 round
        prep = Signal()
        for i, port in enumerate(q_r):
            q_addr = Signal(count_shape, name=f"q_addr{i}")
            m.d.comb += [
                q_addr.eq(Mux(prep, 0, Mux(last_beat, queue_base + P, queue_base)) + i),
                port.addr.eq(q_addr),
                # Only entries the compactor wrote: a PE with no work in phase 2's last round keeps its
                # previous (defined) entry instead of reading an unwritten word (undefined in SRAM).
                port.en.eq((prep | phase2) & (q_addr < gates_on)),
            ]

        # ---- issue stage: per-PE activation and operand addresses ---------------------------------
        valid = Signal(P)
        exe_en, exe_inside = Signal(P), Signal(P)
        exe_first, exe_last, exe_phase2 = Signal(), Signal(), Signal()
        exe_lanes = Signal(range(L + 1))
        exe_coord = [Signal(coord_layout(cfg), name=f"exe_coord{i}") for i in range(P)]
        exe_init = [Signal(signed(cfg.acc_width), name=f"exe_init{i}") for i in range(P)]
        for i in range(P):
            entry = q_r[i].data
            coord = Signal(coord_layout(cfg), name=f"coord{i}")
            m.d.comb += [
                coord.eq(Mux(phase2, entry.coord, chain.coord[i])),
                valid[i].eq(Mux(phase2, queue_base + i < gates_on, chain.coord[i].lin < n_out)),
            ]
            grp = coord.g
            seg = Mux(phase2, slot + (slot >= grp), Mux(dense, slot, grp))
            q = seg * nch_b + chunk
            y = (coord.oy * S + ky - reg["pad_top"]).as_signed()
            x = (coord.ox * S + kx - reg["pad_left"]).as_signed()
            inside = (y >= 0) & (y < reg["h_in"]) & (x >= 0) & (x < reg["w_in"])
            m.d.comb += [
                in_r[i].addr.eq(q * hw_in + y * reg["w_in"] + x),
                w_r[i].addr.eq((coord.co * n_chunks + q) * KK + ky * K + kx),
                t_r[i].addr.eq(coord.co),
            ]
            m.d.sync += [
                exe_en[i].eq(issue & valid[i]),
                exe_inside[i].eq(inside),
                exe_coord[i].eq(coord),
                exe_init[i].eq(Mux(phase2, entry.p, 0)),
            ]
        m.d.sync += [
            exe_first.eq(first_beat),
            exe_last.eq(last_beat),
            exe_phase2.eq(phase2),
            exe_lanes.eq(lanes),
        ]

        # ---- execute stage: the MAC array -----------------------------------------------------
        for i in range(P):
            m.d.comb += [
                macs.x[i].eq(in_r[i].data),
                macs.w[i].eq(w_r[i].data),
                macs.init[i].eq(exe_init[i]),
            ]
        m.d.comb += [
            macs.inside.eq(exe_inside),
            macs.en.eq(exe_en),
            macs.lanes.eq(exe_lanes),
            macs.first.eq(exe_first),
        ]
        wb_en = Signal(P)
        wb_phase2 = Signal()
        wb_coord = [Signal(coord_layout(cfg), name=f"wb_coord{i}") for i in range(P)]
        wb_thr = [Signal(signed(cfg.acc_width), name=f"wb_thr{i}") for i in range(P)]
        m.d.sync += [wb_en.eq(exe_en & Mux(exe_last, (1 << P) - 1, 0)), wb_phase2.eq(exe_phase2)]
        for i in range(P):
            m.d.sync += [wb_coord[i].eq(exe_coord[i]), wb_thr[i].eq(t_r[i].data)]

        # ---- write-back stage: comparators, output buffer, compactor, work queue -----------------------
        gated_wb = wb_en & Mux(wb_phase2 | dense, 0, (1 << P) - 1)
        m.d.comb += [compactor.valid.eq(gated_wb), compactor.gate.eq(comparator.gate)]
        m.d.comb += compactor.base.eq(gates_on)
        for i in range(P):
            m.d.comb += [comparator.psum[i].eq(macs.acc[i]), comparator.threshold[i].eq(wb_thr[i])]
            gate_bit = Mux(wb_phase2 | dense, 1, comparator.gate[i])
            m.d.comb += [
                o_w[i].addr.eq(wb_coord[i].lin),
                o_w[i].data.y.eq(macs.acc[i]),
                o_w[i].data.gate.eq(gate_bit),
                o_w[i].en.eq(wb_en[i]),
                self.wb_valid[i].eq(wb_en[i]),
                self.wb_addr[i].eq(wb_coord[i].lin),
                q_w[i].addr.eq(compactor.index[i]),
                q_w[i].data.coord.eq(wb_coord[i]),
                q_w[i].data.p.eq(macs.acc[i]),
                q_w[i].en.eq(compactor.write[i]),
            ]
        wb_count = Mux(dense & ~wb_phase2, sum(wb_en[i] for i in range(P)), compactor.count)
        gates_on_next = gates_on + wb_count

        # ---- control FSM --------------------------------------------------------------------------
        drain = Signal()  # second cycle of a drain
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += idle.eq(1)
                with m.If(self.start):
                    m.next = "SETUP"
            with m.State("SETUP"):
                m.d.comb += [setup.eq(1), chain.clear.eq(1)]
                m.next = "PHASE1"
            with m.State("PHASE1"):
                m.d.comb += issue.eq(1)
                with m.If(last_beat):
                    m.d.comb += chain.advance.eq(1)
                    with m.If(chain.coord[P - 1].lin + 1 >= n_out):
                        m.next = "DRAIN1"
            with m.State("DRAIN1"):
                m.d.sync += drain.eq(~drain)
                with m.If(drain):
                    with m.If(~dense & (gates_on_next != 0)):
                        m.next = "PREP"
                    with m.Else():
                        m.next = "DONE"
            with m.State("PREP"):
                m.d.comb += prep.eq(1)
                m.d.sync += queue_base.eq(0)
                m.next = "PHASE2"
            with m.State("PHASE2"):
                m.d.comb += [issue.eq(1), phase2.eq(1)]
                with m.If(last_beat):
                    m.d.sync += queue_base.eq(queue_base + P)
                    with m.If(queue_base + P >= gates_on):
                        m.next = "DRAIN2"
            with m.State("DRAIN2"):
                m.d.sync += drain.eq(~drain)
                with m.If(drain):
                    m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        with m.If(~idle & ~self.done):
            m.d.comb += self.busy.eq(1)
        with m.If(setup):
            m.d.sync += gates_on.eq(0)
        with m.Elif(self.busy):
            m.d.sync += gates_on.eq(gates_on_next)

        # ---- performance counters -----------------------------------------------------------------
        m.d.comb += [
            counters.clear.eq(idle & self.start),
            counters.busy.eq(self.busy),
            counters.issue.eq(issue),
            counters.phase2.eq(phase2),
            counters.valid_pes.eq(sum(valid[i] for i in range(P))),
            counters.lanes.eq(lanes),
            counters.gates_on.eq(gates_on),
        ]

        # ---- unload: requests and responses ---------------------------------------------------------
        resp_sel = Signal()
        resp_index = Signal(range(len(Counter) + 1))
        m.d.comb += self.req.ready.eq(idle & (~self.resp.valid | self.resp.ready))
        take = self.req.valid & self.req.ready
        m.d.comb += [o_r.addr.eq(self.req.payload.addr), o_r.en.eq(take)]
        with m.If(take):
            m.d.sync += [
                self.resp.valid.eq(1),
                resp_sel.eq(self.req.payload.sel == UnloadTarget.COUNTERS),
                resp_index.eq(Mux(self.req.payload.addr < len(Counter), self.req.payload.addr, len(Counter))),
            ]
        with m.Elif(self.resp.ready):
            m.d.sync += self.resp.valid.eq(0)
        counter_value = Signal(cfg.counter_width)
        with m.Switch(resp_index):
            for i in range(len(Counter)):
                with m.Case(i):
                    m.d.comb += counter_value.eq(counters.value[i])
        m.d.comb += self.resp.payload.eq(Mux(resp_sel, counter_value, o_r.data.as_value()))
        return m
