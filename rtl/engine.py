"""The gated convolution engine: buffers, sequencer and the datapath blocks wired together."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, Value, signed, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.arith import const_mul
from rtl.array_port import plain_view
from rtl.banked_buffer import BankedBuffer
from rtl.compactor import GateCompactor
from rtl.comparator import ThresholdComparator
from rtl.coords import CoordinateChain, addr_width, base_layout, coord_layout
from rtl.counters import PerfCounters, queue_count_shape
from rtl.mac_array import MacArray
from rtl.one_hot import one_hot
from rtl.ram import ram_1r1w
from rtl.selection_window import SelectionWindow, window_slots
from rtl.threshold_buffer import ThresholdBuffer
from rtl.work_queue import WorkQueue
from spec.config import EngineConfig
from spec.protocol import (
    CONFIG_REGISTERS,
    REGISTER_WIDTH,
    Counter,
    LoadTarget,
    RunMode,
    UnloadTarget,
    activation_layout,
    box_layout,
    load_layout,
    output_layout,
    queue_layout,
    read_layout,
)

__all__ = ["GatedConvEngine", "work_layout"]


def trace_addr_width(config: EngineConfig) -> int:
    """Bits of a trace-port address: an output entry ``lin``, or a work-queue entry's banked address
    ``row << bank_bits | bank`` (wider than ``lin`` when P is not a power of two)."""
    lin = coord_layout(config)["lin"].shape.width
    return max(lin, max(1, (config.bank_rows - 1).bit_length()) + config.bank_bits)


def work_layout(config: EngineConfig) -> data.StructLayout:
    """What the pipeline carries of a PE's activation: the activation and, in phase 1, its output entry."""
    return data.StructLayout({"act": activation_layout(config), "lin": coord_layout(config)["lin"].shape})


def _at_least(tap, lo) -> Value:
    """``tap >= lo`` for a ``lo`` narrower than ``tap``: its high bits, or the low bits compared at ``lo``'s
    width (equal operand widths: no implicit extension)."""
    n = len(lo)
    if len(tap) <= n:
        return tap >= lo
    return tap[n:].any() | (tap[:n] >= lo)


def _below(value, bound) -> Value:
    """``value < bound`` for a ``bound`` narrower than ``value``: its high bits clear and the low bits below
    ``bound`` (equal operand widths: no implicit extension)."""
    n = len(bound)
    if len(value) <= n:
        return value < bound
    return ~value[n:].any() & (value[:n] < bound)


def _tap_box(m: Module, i: int, config: EngineConfig, pointer) -> data.View:
    """:func:`box_layout` of PE ``i``'s activation from the chain's running pointers: ``y_pad`` rows of
    padding before its tap (0, 0) (negative: none) and ``y_left`` rows from there to the tile's far edge,
    likewise for columns. Sign bits and low bits only: no subtraction here."""
    layout = box_layout(config)
    box = data.View(layout, Signal(layout.size, name=f"box{i}"))
    k_max = config.kernel
    bits = k_max.bit_length()
    for axis in ("y", "x"):
        pad, left = pointer[f"{axis}_pad"], pointer[f"{axis}_left"]
        # (sign bits and, for K_max = 2^n − 1, high bits instead of compares with constants)
        beyond = left[bits:].any() if k_max == (1 << bits) - 1 else left > k_max
        m.d.comb += [
            box[f"{axis}_lo"].eq(Mux(pad[-1], 0, pad[: len(box[f"{axis}_lo"])])),  # padding < K
            box[f"{axis}_end"].eq(Mux(left[-1], 0, Mux(beyond, k_max, left[:bits]))),
        ]
    return box


def _pick(table: list, index):
    """``table[index]`` as a tree of multiplexers over the index bits (an index past the end: any entry)."""
    level, bit = list(table), 0
    while len(level) > 1:
        level = [
            Mux(index[bit], level[min(j + 1, len(level) - 1)], level[j]) for j in range(0, len(level), 2)
        ]
        bit += 1
    return level[0]


class GatedConvEngine(wiring.Component):
    """Channel-gated convolution engine (docs/microarchitecture.md is its specification).

    Parameters
    ----------
    config : EngineConfig
        Elaboration parameters; ``kernel``, ``stride``, ``padding`` and ``groups`` are the largest the
        run-time registers take (:meth:`~spec.config.EngineConfig.check_layer`).
    gating : bool
        Build the gating hardware (default). Without it the engine is the **dense baseline**: every run is
        dense whatever the ``dense`` register says, and the threshold buffer, comparators, compactor,
        work queue, phase 2 and the output buffer's gate bits are left out (what gating adds in logic and
        memory is the difference between the two builds). The interface stays the same: an output entry
        unloads with its gate bit 1, a work-queue request answers 0.

    Members
    -------
    load : In(stream.Signature(load_layout(config)))
        Configuration register and buffer writes; ready while idle.
    req : In(stream.Signature(read_layout(config)))
        Unload requests for output-buffer entries, counters and work-queue results; ready while idle.
    resp : Out(stream.Signature(resp_width))
        Unload responses, in request order (a row of P output entries, a counter or a queue entry).
    start : In(1)
        Begin a run (sampled while idle).
    busy : Out(1)
        High during the cycles of a run.
    done : Out(1)
        High for one cycle after a run.
    wb_valid : Out(pes)
        Trace port: PE ``i`` writes an output this cycle (phase 2: into its work-queue entry).
    wb_addr : Out(ArrayLayout(trace_addr_width, pes))
        Trace port: the output (``lin``) PE ``i`` writes; 0 without ``wb_valid``. With ``wb_queue``, PE 0's
        write is a phase-2 result into the work-queue entry at this banked address.
    wb_queue : Out(1)
        Trace port: PE 0 writes a phase-2 result into a work-queue entry (not an output entry).
    """

    def __init__(self, config: EngineConfig, gating: bool = True) -> None:
        self._config = config
        self._gating = bool(gating)
        super().__init__(
            {
                "load": In(stream.Signature(load_layout(config))),
                "req": In(stream.Signature(read_layout(config))),
                "resp": Out(stream.Signature(unsigned(config.resp_width))),
                "start": In(1),
                "busy": Out(1),
                "done": Out(1),
                "wb_valid": Out(config.pes),
                "wb_queue": Out(1),
                "wb_addr": Out(data.ArrayLayout(trace_addr_width(config), config.pes)),
            }
        )
        # Layout-shaped ports over plain signals: no alias wire per field or element in the Verilog.
        self.load.payload = plain_view(self.load.payload, "load__payload")
        self.req.payload = plain_view(self.req.payload, "req__payload")
        self.wb_addr = plain_view(self.wb_addr, "wb_addr")

    @property
    def config(self) -> EngineConfig:
        return self._config

    @property
    def gating(self) -> bool:
        return self._gating

    def _part(self, m: Module, name: str, block: wiring.Component) -> wiring.Component:
        """``block`` as the submodule ``name``, or, in the dense baseline, left out: its inputs then drive
        nothing and its outputs read as 0, which synthesis folds away with the logic that uses them."""
        if self._gating:
            m.submodules[name] = block
        else:
            block._MustUse__silence = True  # deliberately not elaborated
        return block

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg = self._config
        P, L = cfg.pes, cfg.lanes
        K_max, G_max = cfg.kernel, cfg.groups
        in_aw, w_aw = addr_width(cfg.input_depth), addr_width(cfg.weight_depth)
        count_shape = queue_count_shape(cfg)

        # ---- configuration registers --------------------------------------------------------------
        # Registers bounded by the build's maxima are as wide as the largest value (the host checks it).
        # (n_cond: G − 1, or 1 for G = 1's one conditional segment.)
        narrow = {
            "dense": 1,
            "kernel": range(K_max + 1),
            "stride": range(cfg.stride + 1),
            "n_cond": range(max(G_max, 2)),
            "x_res": range(cfg.stride),
            "y_res": range(cfg.stride),
            "run": RunMode.as_shape(),
            "queue_len": count_shape,
            "half": 1,
        }
        # Loads write the shadow set (at any time); `start` copies it into the set a run uses, so the host
        # writes the next tile's registers while a run goes on (spec section 4, "Double buffering").
        shadow = {
            name: Signal(narrow.get(name, REGISTER_WIDTH), name=f"shadow_{name}") for name in CONFIG_REGISTERS
        }
        reg = {
            name: Signal(narrow.get(name, REGISTER_WIDTH), name=f"cfg_{name}") for name in CONFIG_REGISTERS
        }
        dense = reg["dense"] if self._gating else Const(1)
        # Two-pass runs (RunMode): PHASE1 skips phase 2, PHASE2 skips phase 1 (bit decodes; the host never
        # writes 3, which would skip both); dense mode has one phase whatever `run` says.
        run = reg["run"]
        skip1, skip2 = Signal(), Signal()
        m.d.comb += [skip1.eq(~dense & run[1]), skip2.eq(~dense & run[0])]

        # ---- buffers ----------------------------------------------------------------------------
        # Inputs and weights: 2^bank_bits word-interleaved 1R1W banks each, read through crossbars. An input
        # bank serves one word per cycle (a beat asking one bank for two words stalls); the weights are laid
        # out so that no beat asks one bank for two words (spec section 3), so their requests are all granted.
        bank_bits = cfg.bank_bits
        # Every buffer has two halves (a double buffer): a run uses half `half`, the host loads and unloads
        # the other meanwhile (spec section 4, "Double buffering").
        m.submodules.inbuf = inbuf = BankedBuffer(P, bank_bits, L * cfg.act_width, cfg.input_depth, True, 2)
        m.submodules.wbuf = wbuf = BankedBuffer(
            P, bank_bits, L * cfg.weight_width, cfg.weight_depth, False, 2
        )
        # Thresholds: P 1R1W banks by output channel (rtl/threshold_buffer.py).
        tbuf = self._part(m, "tbuf", ThresholdBuffer(cfg))
        # The output buffer: P 1R1W banks, entry lin in bank lin mod P, row lin div P. Phase 1 (and
        # dense mode) writes round r's P consecutive entries, PE i into bank i row r; phase 2 writes its
        # results back into the work queue's entries (one per cycle), never here.
        rows = cfg.bank_rows
        row_bits = max(1, (rows - 1).bit_length())  # (the half is the row address's top bit)
        odepth = (1 << row_bits) + rows
        # Plain bits (viewed as output_layout where needed: a layout-shaped port gets an alias wire per
        # field in the Verilog); the baseline has no gate bit. The banks (rtl/ram.py) are made where
        # their read port is known, from their write ports' values gathered in `owrites`.
        oshape = unsigned(output_layout(cfg).size) if self._gating else signed(cfg.acc_width)
        owrites = []
        # The queue's words are plain bits viewed through queue_layout (no per-field aliases in the Verilog);
        # P 1R1W banks, entry n in bank n mod P (rtl/work_queue.py).
        queue = self._part(m, "queue", WorkQueue(cfg, queue_layout(cfg).size))

        # ---- blocks -----------------------------------------------------------------------------
        m.submodules.chain = chain = CoordinateChain(cfg)
        m.submodules.macs = macs = MacArray(cfg)
        comparator = self._part(m, "comparator", ThresholdComparator(cfg))
        compactor = self._part(m, "compactor", GateCompactor(cfg))
        m.submodules.counters = counters = PerfCounters(cfg)

        # ---- load stream --------------------------------------------------------------------------
        idle = Signal()
        load = self.load.payload
        half = reg["half"]
        l_half = load.addr[cfg.half_bit]  # the half a buffer write targets (the address's top bit)
        # Ready while idle; while busy for register writes (the shadow set) and for buffer writes into the
        # half the run does not use.
        # (sel == CONFIG as a zero test: CONFIG is 0)
        assert LoadTarget.CONFIG.value == 0
        m.d.comb += self.load.ready.eq(idle | ~load.sel.as_value().any() | (l_half != half))
        accept = self.load.valid & self.load.ready
        # The accepted write's target, one-hot (case statements: no compares with constants).
        target = one_hot(m, load.sel.as_value(), accept, len(LoadTarget), "load_target")
        for buf, sel in ((inbuf, LoadTarget.INPUT), (wbuf, LoadTarget.WEIGHT)):
            m.d.comb += [
                buf.waddr.eq(load.addr),
                buf.wdata.eq(load.data),
                buf.wen.eq(target[sel.value]),
                buf.whalf.eq(l_half),
                buf.rhalf.eq(half),
            ]
        m.d.comb += [  # the threshold's banked address (row << bank_bits | bank)
            tbuf.waddr.eq(load.addr),
            tbuf.wdata.eq(load.data),
            tbuf.wen.eq(target[LoadTarget.THRESHOLD.value]),
            tbuf.whalf.eq(l_half),
            tbuf.rhalf.eq(half),
        ]
        # One-hot decode of the register address (an address past the last register writes nothing).
        reg_bits = (len(CONFIG_REGISTERS) - 1).bit_length()
        in_range = ~load.addr[reg_bits:].any() if len(load.addr) > reg_bits else 1
        reg_write = one_hot(
            m,
            load.addr[:reg_bits],
            target[LoadTarget.CONFIG.value] & in_range,
            len(CONFIG_REGISTERS),
            "reg_write",
        )
        for i, name in enumerate(CONFIG_REGISTERS):
            with m.If(reg_write[i]):
                m.d.sync += shadow[name].eq(load.data)
            with m.If(idle & self.start):
                m.d.sync += reg[name].eq(shadow[name])

        # ---- host-derived quantities (spec.tile.TileGeometry.registers): no divider, no multiplier -------
        setup = Signal()
        plane, in_seg, w_seg = reg["plane"][:in_aw], reg["in_seg"][:in_aw], reg["w_seg"][:w_aw]
        m.d.comb += [
            chain.stride.eq(reg["stride"]),
            chain.h_out.eq(reg["h_out"]),
            chain.w_out.eq(reg["w_out"]),
            chain.out_per_group.eq(reg["c_og"]),
            chain.pad_top.eq(reg["pad_top"]),
            chain.pad_left.eq(reg["pad_left"]),
            chain.h_in.eq(reg["h_in"]),
            chain.w_in.eq(reg["w_in"]),
            chain.in_origin.eq(reg["in_origin"].as_signed()),  # sign-extended to the address width
            chain.row_step.eq(reg["row_step"].as_signed()),
            chain.ia_plane.eq(reg["ia_plane"]),
        ]
        # Offsets of segment k (k base segments): k·in_seg and k·w_seg (in_seg = nch_b·Hp·Wp, w_seg a base
        # segment's weights rounded up to the banks), k below the largest G,
        # as shift-and-add multiples of the host's steps; PE i's own group picks its entry in gated phase 1.
        seg_in = [Signal(in_aw, name=f"seg_in{k}") for k in range(G_max)]
        seg_w = [Signal(w_aw, name=f"seg_w{k}") for k in range(G_max)]
        for k in range(G_max):
            m.d.comb += [seg_in[k].eq(const_mul(in_seg, k)), seg_w[k].eq(const_mul(w_seg, k))]

        # ---- beat sequencer -----------------------------------------------------------------------
        phase2 = Signal()
        issue = Signal()  # the beat in the issue stage asks the buffers for its words
        advance = Signal()  # ... and has them all: the next beat issues in the next cycle
        # Datapath registers without reset (spec section 4, "Reset"): each is set in SETUP or PREP, or
        # qualified by a valid bit that has one (exe_en, wb_en), before it is used.
        slot = Signal(range(max(G_max, 2)), reset_less=True)  # up to n_cond (as wide as a gate group)
        chunk_ch = Signal(REGISTER_WIDTH + 1, reset_less=True)  # first channel of the chunk in its segment
        ky, kx = Signal(range(K_max), reset_less=True), Signal(range(K_max), reset_less=True)
        other = phase2 | (dense & (slot != 0))  # beat works on a conditional-width segment
        n_cond = reg["n_cond"]  # conditional segments of an activation
        last_slot = Signal.like(slot)
        m.d.comb += last_slot.eq(Mux(phase2, n_cond - 1, Mux(dense, n_cond, 0)))
        seg_width = Mux(other, reg["seg_c"], reg["seg_b"])
        remaining = Signal((seg_width - chunk_ch).shape())  # a signal: one subtractor for its users
        m.d.comb += remaining.eq(seg_width - chunk_ch)
        lanes = Mux(remaining > L, L, remaining)
        k_last = Signal.like(kx)
        m.d.comb += k_last.eq(reg["kernel"] - 1)
        kx_last, ky_last = kx == k_last, ky == k_last
        chunk_last = Signal()  # chunk + 1 == ceil(seg_width / L) (a signal: one compare for its users)
        m.d.comb += chunk_last.eq(remaining <= L)
        slot_last = slot == last_slot
        # signals: one copy of the logic however many users (slot_end: the slot's last beat)
        slot_end, last_beat, first_beat = Signal(), Signal(), Signal()
        m.d.comb += [
            slot_end.eq(kx_last & ky_last & chunk_last),
            last_beat.eq(slot_end & slot_last),
            first_beat.eq(~kx.any() & ~ky.any() & ~chunk_ch.any() & ~slot.any()),  # (all zero)
        ]
        # The slot after an advance (the address registers take the next beat's segment offset with it).
        slot_adv = Signal.like(slot)
        m.d.comb += slot_adv.eq(Mux(slot_end, Mux(slot_last, 0, slot + 1), slot))
        with m.If(setup):
            m.d.sync += [slot.eq(0), chunk_ch.eq(0), ky.eq(0), kx.eq(0)]
        with m.Elif(advance):
            m.d.sync += [kx.eq(Mux(kx_last, 0, kx + 1)), slot.eq(slot_adv)]
            with m.If(kx_last):
                m.d.sync += ky.eq(Mux(ky_last, 0, ky + 1))
                with m.If(ky_last):
                    m.d.sync += chunk_ch.eq(Mux(chunk_last, 0, chunk_ch + L))

        # Shared beat pointers, relative to the activation's own pointers: the weight word advances by c_out
        # per beat of a round (channel-minor: slots, chunks and taps are consecutive beats of c_out words),
        # and past a segment's padding (w_gap) at a slot's end. The input word (a plane deinterleaved by
        # the stride, spec section 3) by the tap pointers: `in_col` by x_in per kx, or by x_wrap where the
        # column's residue mod S wraps; `in_row` likewise per ky (y_in, y_wrap), restarting at `in_chunk`,
        # which advances by a plane per chunk (slots included); `rx`, `ry`: the taps' residues.
        beat_layout = data.StructLayout(
            {
                "w": unsigned(w_aw),
                "in_chunk": unsigned(in_aw),
                "in_row": unsigned(in_aw),
                "in_col": unsigned(in_aw),
                "rx": range(cfg.stride),
                "ry": range(cfg.stride),
            }
        )
        beat = data.View(beat_layout, Signal(beat_layout.size, name="beat", reset_less=True))
        steps = {}
        for name in ("x_in", "x_wrap", "y_in", "y_wrap"):  # at the address width (wrap steps are signed)
            if in_aw <= REGISTER_WIDTH:
                steps[name] = reg[name][:in_aw]
            else:
                steps[name] = Signal(in_aw, name=f"step_{name}")
                m.d.comb += steps[name].eq(reg[name].as_signed() if name.endswith("wrap") else reg[name])
        x_wraps, y_wraps = beat.rx + 1 == reg["stride"], beat.ry + 1 == reg["stride"]
        w_step, w_slot_step = reg["c_out"][:w_aw], (reg["c_out"] + reg["w_gap"])[:w_aw]
        # The beat after an advance within a round (a signal: the address registers add it too).
        beat_adv = data.View(beat_layout, Signal(beat_layout.size, name="beat_adv"))
        m.d.comb += [
            beat_adv.eq(beat),
            beat_adv.w.eq(beat.w + Mux(slot_end, w_slot_step, w_step)),
        ]
        with m.If(kx_last):
            m.d.comb += [beat_adv.in_col.eq(0), beat_adv.rx.eq(reg["x_res"])]
            with m.If(ky_last):
                m.d.comb += [
                    beat_adv.in_chunk.eq(beat.in_chunk + plane),
                    beat_adv.in_row.eq(beat.in_chunk + plane),
                    beat_adv.ry.eq(reg["y_res"]),
                ]
            with m.Else():
                m.d.comb += [
                    beat_adv.in_row.eq(beat.in_row + Mux(y_wraps, steps["y_wrap"], steps["y_in"])),
                    beat_adv.ry.eq(Mux(y_wraps, 0, beat.ry + 1)),
                ]
        with m.Else():
            m.d.comb += [
                beat_adv.in_col.eq(beat.in_col + Mux(x_wraps, steps["x_wrap"], steps["x_in"])),
                beat_adv.rx.eq(Mux(x_wraps, 0, beat.rx + 1)),
            ]
        with m.If(setup | (advance & last_beat)):
            m.d.sync += [beat.eq(0), beat.rx.eq(reg["x_res"]), beat.ry.eq(reg["y_res"])]
        with m.Elif(advance):
            m.d.sync += beat.eq(beat_adv)

        # ---- work queue state and the phase-2 selection window (docs/chip-design.md, section 2.1) ------
        gates_on = Signal(count_shape)  # also the gates_on counter: reset (spec section 4, "Reset")
        prep_first = Signal()  # PREP's first cycle: read queue entry 0, start forming round 0
        take = Signal()  # take the formed round into the PEs and start forming the next
        qaddr_layout = data.StructLayout({"bank": range(P), "row": range(queue.rows + 1)})
        payload_layout = data.StructLayout({"entry": queue_layout(cfg), "qaddr": qaddr_layout})
        win = self._part(m, "window", SelectionWindow(cfg, cfg.window, payload_layout.size))
        # The filler: queue entry `head` waits in its bank's read register (banks hold their word); each
        # insertion reads entry head + 1. Bank and row run as digits (no division by P).
        head = Signal(count_shape, reset_less=True)
        head_at = data.View(qaddr_layout, Signal(qaddr_layout.size, name="head_at", reset_less=True))
        next_at = data.View(qaddr_layout, Signal(qaddr_layout.size, name="next_at"))
        inserted = win.insert.valid & win.insert.ready
        wrap = head_at.bank == P - 1
        m.d.comb += [
            next_at.bank.eq(Mux(prep_first | wrap, 0, head_at.bank + 1)),
            next_at.row.eq(Mux(prep_first, 0, head_at.row + wrap)),
            queue.read_row.eq(next_at.row),
        ]
        m.d.comb += queue.read_en.eq(one_hot(m, next_at.bank, prep_first | inserted, P, "read_hot"))
        with m.If(prep_first):
            m.d.sync += [head.eq(0), head_at.eq(next_at)]
        with m.Elif(inserted):
            m.d.sync += [head.eq(head + 1), head_at.eq(next_at)]
        head_entry = data.View(queue_layout(cfg), Signal(queue_layout(cfg).size, name="head_entry"))
        with m.Switch(head_at.bank):
            for b in range(P):
                with m.Case(b):
                    m.d.comb += head_entry.eq(queue.rdata[b])
        key = win.insert.payload.key
        # Slot t at or past the entry's group (g <= t), decoded by a case statement (no compares with
        # constants).
        upper = Signal(window_slots(cfg), name="slot_upper")
        with m.Switch(head_entry.act.g):
            for g in range(1 << len(head_entry.act.g)):
                with m.Case(g):
                    m.d.comb += upper.eq(sum(1 << t for t in range(window_slots(cfg)) if g <= t))
        seg_key = [const_mul(reg["in_seg"][:in_aw], k)[:in_aw] for k in range(window_slots(cfg) + 1)]
        m.d.comb += [
            win.clear.eq(setup),
            win.start.eq(prep_first | take),
            win.n_cond.eq(reg["n_cond"]),
            win.more.eq(head < gates_on),
            win.insert.valid.eq(head < gates_on),
            win.insert.payload.payload.eq(Cat(head_entry, head_at)),
            key.co.eq(head_entry.act.co),
            key.upper.eq(upper),
            key.ia.eq(head_entry.act.ia),
        ]
        for t in range(window_slots(cfg)):
            # slot t reads segment t + [t >= g]: the key is the bank of that segment's first word
            bank = Mux(upper[t], seg_key[t + 1], seg_key[t]) + head_entry.act.ia
            m.d.comb += key.ib[t].eq(bank[:bank_bits] if bank_bits else 0)
        # The round the PEs run in phase 2: latched at the take (the window then forms the next one).
        p2_valid = Signal(P)
        p2_entry = [
            data.View(payload_layout, Signal(payload_layout.size, name=f"p2_entry{i}", reset_less=True))
            for i in range(P)
        ]
        with m.If(take):
            m.d.sync += p2_valid.eq(win.member_valid)
            for i in range(P):
                m.d.sync += p2_entry[i].eq(win.members[i])

        # ---- issue stage: per-PE activation and operand addresses ---------------------------------
        valid = Signal(P)
        # The beat's requests (docs/microarchitecture.md section 3, "Banked reads"): a
        # valid PE asks its input bank for its word unless the tap is padding; `pending` are the PEs not yet
        # served in this beat, `served` those served in this cycle (their words come from the banks next
        # cycle, and their MACs run then); the beat advances once every valid PE is served.
        pending = Signal(P, init=(1 << P) - 1)
        served = Signal(P)
        done = Signal()
        exe_en, exe_inside = Signal(P), Signal(P, reset_less=True)
        exe_valid, exe_done = Signal(P, reset_less=True), Signal()
        exe_first, exe_last, exe_phase2 = Signal(reset_less=True), Signal(reset_less=True), Signal()
        exe_lanes = Signal(range(L + 1), reset_less=True)
        wl = work_layout(cfg)
        exe_work = [data.View(wl, Signal(wl.size, name=f"exe_work{i}", reset_less=True)) for i in range(P)]
        exe_init = [Signal(signed(cfg.acc_width), name=f"exe_init{i}", reset_less=True) for i in range(P)]
        # (plain bits: a layout-shaped register gets one alias wire per field in the Verilog)
        exe_qaddr = [Signal(qaddr_layout.size, name=f"exe_qaddr{i}", reset_less=True) for i in range(P)]
        for i in range(P):
            entry = p2_entry[i].entry
            work = data.View(wl, Signal(wl.size, name=f"work{i}"))
            with m.If(phase2):
                m.d.comb += work.act.eq(entry.act)  # (lin: not carried in phase 2)
            with m.Else():
                ptr = chain.pointers[i]
                m.d.comb += [
                    work.act.co.eq(chain.coords[i].co),  # (cut: a valid PE's co is below threshold_depth)
                    work.act.g.eq(chain.coords[i].g),
                    work.act.ia.eq(ptr.ia),
                    work.act.box.eq(_tap_box(m, i, cfg, ptr)),
                    work.lin.eq(chain.coords[i].lin),
                ]
            m.d.comb += valid[i].eq(Mux(phase2, p2_valid[i], _below(chain.coords[i].co, reg["c_out"])))
            # The PE's word addresses, registered: each cycle they take the addresses of the beat the PE
            # issues next (the banks see registers through their crossbars only). An address is the
            # activation's base (ia or co) plus its segment's offset plus the beat's pointer. Segment
            # offset: gated phase 1 that of the own group's segment, dense none (the beat pointers run
            # through every slot), phase 2 one base segment from the slot of the own group on.
            own = chain.coords[i].g
            addr_in = Signal(in_aw, name=f"addr_in{i}", reset_less=True)
            addr_w = Signal(w_aw, name=f"addr_w{i}", reset_less=True)

            # The source the next address comes from, chosen by early signals (the PE's load in SETUP,
            # the round's last beat, the phase); only the final choice waits for `advance` / `take`.
            # SETUP: the activation the chain loads; a round's last beat: the chain's next activation
            # (phase 1) or the window's member (phase 2), at slot 0 and beat 0; any other beat: the PE's
            # own activation, the slot and the beat after this one. Outside SETUP and the phases'
            # issue (FORM, and phase 2's last beat while it waits) the only event is a take.
            member = data.View(payload_layout, win.members[i]).entry.act
            forming = ~issue
            new_round = last_beat | forming
            src = data.View(base_layout(cfg), Signal(base_layout(cfg).size, name=f"addr_src{i}"))
            with m.If(chain.loading_pe[i]):
                m.d.comb += src.eq(chain.loading)
            with m.Elif(new_round & (phase2 | forming)):
                m.d.comb += [src.ia.eq(member.ia), src.co.eq(member.co), src.g.eq(member.g)]
            with m.Elif(new_round):
                m.d.comb += src.eq(chain.stepped[i])
            with m.Elif(phase2):
                m.d.comb += [src.ia.eq(entry.act.ia), src.co.eq(entry.act.co), src.g.eq(entry.act.g)]
            with m.Else():
                m.d.comb += [src.ia.eq(chain.pointers[i].ia), src.co.eq(chain.coords[i].co), src.g.eq(own)]
            at_slot = Mux(chain.loading_pe[i] | new_round, 0, slot_adv)
            fresh = chain.loading_pe[i] | new_round  # beat 0
            queued = ~chain.loading_pe[i] & (phase2 | forming)  # phase 2's offset rule
            skip = at_slot >= src.g
            off_in = Mux(queued, Mux(skip, in_seg, 0), Mux(dense, 0, _pick(seg_in, src.g)))
            off_w = Mux(queued, Mux(skip, w_seg, 0), Mux(dense, 0, _pick(seg_w, src.g)))
            beat_in = Mux(fresh, 0, beat_adv.in_row + beat_adv.in_col)
            beat_w = Mux(fresh, 0, beat_adv.w)
            with m.If(chain.loading_pe[i] | take | advance):
                m.d.sync += [addr_in.eq(src.ia + off_in + beat_in), addr_w.eq(src.co[:w_aw] + off_w + beat_w)]
            box = work.act.box
            inside, waiting = Signal(name=f"inside{i}"), Signal(name=f"waiting{i}")  # (one copy of the logic)
            m.d.comb += [
                inside.eq(
                    _at_least(ky, box.y_lo) & (ky < box.y_end) & _at_least(kx, box.x_lo) & (kx < box.x_end)
                ),
                waiting.eq(issue & pending[i] & valid[i]),
            ]
            m.d.comb += [
                inbuf.raddr[i].eq(addr_in),
                inbuf.rreq[i].eq(waiting & inside),
                served[i].eq(waiting & (~inside | inbuf.grant[i])),
                wbuf.raddr[i].eq(addr_w),
                wbuf.rreq[i].eq(waiting & inside & inbuf.grant[i]),
                # Thresholds: read once per round, at its last beat, for the comparator of gated phase 1.
                tbuf.bank[i].eq(chain.coords[i].cb),
                tbuf.row[i].eq(chain.coords[i].cr),
                tbuf.en[i].eq(advance & last_beat & ~phase2 & ~dense & valid[i]),
            ]
            m.d.sync += [
                exe_en[i].eq(served[i]),
                exe_inside[i].eq(inside),
                exe_work[i].eq(work),
                exe_init[i].eq(Mux(phase2, entry.p, 0)),
                exe_qaddr[i].eq(p2_entry[i].qaddr),
            ]
        m.d.comb += [done.eq(~(pending & valid & ~served).any()), advance.eq(issue & done)]
        with m.If(setup | advance):
            m.d.sync += pending.eq((1 << P) - 1)
        with m.Elif(issue):
            m.d.sync += pending.eq(pending & ~served)
        m.d.sync += [
            exe_valid.eq(valid),
            exe_done.eq(advance),
            exe_first.eq(first_beat),
            exe_last.eq(last_beat),
            exe_phase2.eq(phase2),
            exe_lanes.eq(lanes),
        ]

        # ---- execute stage: the MAC array -----------------------------------------------------
        for i in range(P):
            m.d.comb += [
                macs.x[i].eq(inbuf.rdata[i]),
                macs.w[i].eq(wbuf.rdata[i]),
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
        wb_work = [data.View(wl, Signal(wl.size, name=f"wb_work{i}", reset_less=True)) for i in range(P)]
        wb_thr = [Signal(signed(cfg.acc_width), name=f"wb_thr{i}", reset_less=True) for i in range(P)]
        # Rows of the write-back: phase 1 counts its rounds (round r writes output row r), phase 2 takes
        # the queue row its round read.
        out_row = Signal(range(rows + 1), reset_less=True)
        wb_qaddr = [Signal(qaddr_layout.size, name=f"wb_qaddr{i}", reset_less=True) for i in range(P)]
        m.d.sync += [
            wb_en.eq(Mux(exe_last & exe_done, exe_valid, 0)),  # once per round, all its PEs
            wb_phase2.eq(exe_phase2),
        ]
        m.d.sync += [wb_qaddr[i].eq(exe_qaddr[i]) for i in range(P)]
        with m.If(setup):
            m.d.sync += out_row.eq(0)
        with m.Elif(wb_en.any() & ~wb_phase2):
            m.d.sync += out_row.eq(out_row + 1)
        for i in range(P):
            m.d.sync += [wb_work[i].eq(exe_work[i]), wb_thr[i].eq(tbuf.rdata[i])]

        # ---- write-back stage: comparators, output buffer, compactor, work queue -----------------------
        gated_wb = wb_en & Mux(wb_phase2 | dense, 0, (1 << P) - 1)
        m.d.comb += [compactor.valid.eq(gated_wb), compactor.gate.eq(comparator.gate)]
        m.d.comb += [queue.clear.eq(setup), queue.write.eq(compactor.write), queue.count.eq(compactor.count)]
        # Phase-2 results drain into their own queue entries, one per cycle (docs/chip-design.md, 2.1):
        # taken at the write-back into a shift register, member k written k + 1 cycles later. Only the
        # result field matters (the rest of the entry is dead once the window took it).
        drain_layout = data.StructLayout({"y": signed(cfg.acc_width), "qaddr": qaddr_layout})
        result_q = [
            data.View(drain_layout, Signal(drain_layout.size, name=f"result_q{i}", reset_less=True))
            for i in range(P)
        ]
        results_left = Signal(range(P + 1))  # results still to write (a count: reset)
        with m.If(wb_phase2 & wb_en.any()):
            m.d.sync += results_left.eq(sum(wb_en[i] for i in range(P)))
            for i in range(P):
                m.d.sync += [
                    result_q[i].y.eq(macs.acc[i]),
                    result_q[i].qaddr.eq(wb_qaddr[i]),
                ]
        with m.Elif(results_left != 0):
            m.d.sync += results_left.eq(results_left - 1)
            m.d.sync += [result_q[i].eq(result_q[i + 1]) for i in range(P - 1)]
        result_write = self.wb_queue  # (the trace port is the signal: no second name for it)
        # The host's queue entries (LoadTarget.QUEUE, at banked addresses; a bank field of P or more writes
        # nothing) go through the queue's host ports, into the half the address names.
        load_queue = Signal(P)
        q_bank, q_row = load.addr[:bank_bits], load.addr[bank_bits : cfg.half_bit]
        with m.If(target[LoadTarget.QUEUE.value]):
            m.d.comb += load_queue.eq(Const(1, P) << q_bank)
        m.d.comb += [
            result_write.eq(results_left != 0),
            queue.half.eq(half),
            queue.update.eq(Mux(result_write, Const(1, P) << result_q[0].qaddr.bank, 0)),
            queue.update_row.eq(result_q[0].qaddr.row),
            queue.host_write.eq(load_queue),
            queue.host_whalf.eq(l_half),
            queue.host_wrow.eq(q_row),
            queue.host_data.eq(load.data),
        ]
        for i in range(P):
            m.d.comb += [comparator.psum[i].eq(macs.acc[i]), comparator.threshold[i].eq(wb_thr[i])]
            gate_bit = Mux(wb_phase2 | dense, 1, comparator.gate[i])
            # output_layout: y, then the gate
            o_data = Cat(macs.acc[i], gate_bit) if self._gating else macs.acc[i]
            owrites.append((o_data, wb_en[i] & ~wb_phase2))
            m.d.comb += [
                queue.update_data[i].eq(Cat(Const(0, wl["act"].shape.size), result_q[0].y)),
                queue.offset[i].eq(compactor.offset[i]),
                queue.wdata[i].eq(Cat(wb_work[i].act, macs.acc[i])),
            ]
        # Trace ports: phase 1's write-backs on every PE, phase 2's drained results on PE 0 (never at once),
        # those at the queue entry's banked address (row << bank_bits | bank) with wb_queue.
        p1_wb = Signal(P)
        m.d.comb += [p1_wb.eq(wb_en & Mux(wb_phase2, 0, (1 << P) - 1))]
        drained = result_q[0].qaddr
        banked = Cat(drained.bank[:bank_bits], drained.row) if bank_bits else drained.row
        for i in range(P):
            written = p1_wb[i] | result_write if i == 0 else p1_wb[i]
            addr = Mux(p1_wb[i], wb_work[i].lin, banked) if i == 0 else wb_work[i].lin
            m.d.comb += [self.wb_valid[i].eq(written), self.wb_addr[i].eq(Mux(written, addr, 0))]
        wb_count = Mux(dense & ~wb_phase2, sum(wb_en[i] for i in range(P)), compactor.count)
        gates_on_next = gates_on + wb_count

        # ---- control FSM --------------------------------------------------------------------------
        drain = Signal()  # second cycle of a drain
        with m.FSM():
            with m.State("IDLE"):
                m.d.comb += idle.eq(1)
                with m.If(self.start):
                    m.next = "SETUP"
            with m.State("SETUP"):  # P cycles: the coordinate chain takes one PE's activation per cycle
                m.d.comb += [setup.eq(1), chain.init.eq(1)]
                with m.If(chain.init_last):
                    m.next = "PHASE1"
                if self._gating:
                    with m.If(skip1):  # phase 2 only, on the host's queue_len entries
                        m.next = "DONE"
                        with m.If(~skip2 & (reg["queue_len"] != 0)):
                            m.next = "PREP"
            with m.State("PHASE1"):
                m.d.comb += issue.eq(1)
                with m.If(last_beat & done):
                    m.d.comb += chain.advance.eq(1)
                    with m.If(~_below(chain.stepped[0].co, reg["c_out"])):
                        m.next = "DRAIN1"
            with m.State("DRAIN1"):
                m.d.sync += drain.eq(~drain)
                with m.If(drain):
                    m.next = "DONE"
                    if self._gating:
                        with m.If(~dense & ~skip2 & (gates_on_next != 0)):
                            m.next = "PREP"
            if self._gating:  # phase 2 (the dense baseline never leaves DRAIN1 for PREP)
                with m.State("PREP"):
                    m.d.comb += prep_first.eq(1)
                    m.next = "FORM"
                with m.State("FORM"):  # the window forms round 0
                    with m.If(win.formed):
                        m.d.comb += take.eq(1)
                        m.next = "PHASE2"
                with m.State("PHASE2"):
                    # The round's last beat waits for the next round's formation and for the results of
                    # the round before to leave the drain (at most three left: written by the write-back).
                    ready = win.formed & (results_left <= 3)
                    m.d.comb += [issue.eq(~last_beat | ready), phase2.eq(1)]
                    with m.If(last_beat & ready & done):
                        m.d.comb += take.eq(1)
                        with m.If(~win.member_valid.any()):
                            m.next = "DRAIN2"
                with m.State("DRAIN2"):  # the last beat executes, is written back, its results drain
                    m.d.sync += drain.eq(~drain)
                    with m.If(drain):
                        m.next = "RESULTS"
                with m.State("RESULTS"):
                    with m.If(results_left == 1):
                        m.next = "DONE"
            with m.State("DONE"):
                m.d.comb += self.done.eq(1)
                m.next = "IDLE"
        with m.If(~idle & ~self.done):
            m.d.comb += self.busy.eq(1)
        with m.If(setup):
            m.d.sync += gates_on.eq(Mux(skip1, reg["queue_len"], 0))
        with m.Elif(self.busy):
            m.d.sync += gates_on.eq(gates_on_next)

        # ---- performance counters -----------------------------------------------------------------
        m.d.comb += [
            counters.clear.eq(idle & self.start),
            counters.busy.eq(self.busy),
            # A beat is counted once, in the execute cycle of its last serve (still a busy cycle of the run;
            # and the coordinate chain's path to `valid` ends at a register); the cycles in which a bank
            # conflict holds it are stall cycles.
            counters.issue.eq(exe_done),
            counters.phase2.eq(exe_phase2),
            counters.valid_pes.eq(sum(exe_valid[i] for i in range(P))),
            counters.lanes.eq(exe_lanes),
            counters.gates_on.eq(gates_on),
        ]

        # ---- unload: requests and responses ---------------------------------------------------------
        # Output and queue entries by banked address (row << bank_bits | bank) in the half the address's top
        # bit names; a queue entry answers with its result as an output entry (y, gate 1). Ready while
        # idle, and while busy for entries of the half the run does not use (the output banks' read ports
        # and the queue's host ports are the host's); counters only while idle.
        req = self.req.payload
        resp_sel = Signal(UnloadTarget, reset_less=True)  # these three are read only with resp.valid
        resp_bank = Signal(range(P), reset_less=True)
        resp_index = Signal(range(len(Counter) + 1), reset_less=True)
        req_half = req.addr[cfg.half_bit]
        # The request's target, one-hot (a case statement: no compares with constants).
        req_target = one_hot(m, req.sel.as_value(), Const(1, 1), len(UnloadTarget), "req_target")
        other = ~req_target[UnloadTarget.COUNTERS.value] & (req_half != half)
        m.d.comb += self.req.ready.eq((idle | other) & (~self.resp.valid | self.resp.ready))
        req_take = self.req.valid & self.req.ready  # (not the phase-2 `take` above)
        req_bank, req_row = req.addr[:bank_bits], req.addr[bank_bits : cfg.half_bit]
        req_hit = Signal(P)  # the banks an accepted request reads: one entry, or the whole row
        req_output, req_queue = Signal(), Signal()
        req_entry = req_target[UnloadTarget.QUEUE_ENTRY.value]  # one entry; any other target: a whole row
        m.d.comb += [
            req_output.eq(req_target[UnloadTarget.OUTPUT.value]),
            req_queue.eq(req_target[UnloadTarget.QUEUE.value] | req_entry),
            req_hit.eq(Mux(req_take, Mux(req_entry, Const(1, P) << req_bank, (1 << P) - 1), 0)),
        ]
        obanks = []
        for b, (o_data, o_en) in enumerate(owrites):
            obanks.append(
                ram_1r1w(
                    m,
                    f"obuf{b}",
                    oshape,
                    odepth,
                    waddr=Cat(out_row[:row_bits], half),
                    wdata=o_data,
                    wen=o_en,
                    raddr=Cat(req_row[:row_bits], req_half),
                    ren=req_hit[b] & req_output,
                )
            )
        m.d.comb += [
            queue.host_rrow.eq(req_row),
            queue.host_rhalf.eq(req_half),
            queue.host_read.eq(Mux(req_queue, req_hit, 0)),
        ]
        with m.If(req_take):
            m.d.sync += [
                self.resp.valid.eq(1),
                resp_sel.eq(req.sel),
                resp_bank.eq(req_bank if P > 1 else 0),
                resp_index.eq(Mux(req.addr < len(Counter), req.addr, len(Counter))),
            ]
        with m.Elif(self.resp.ready):
            m.d.sync += self.resp.valid.eq(0)
        counter_value = Signal(cfg.counter_width)
        with m.Switch(resp_index):
            for i in range(len(Counter)):
                with m.Case(i):
                    m.d.comb += counter_value.eq(counters.value[i])
            with m.Default():  # past the last counter: 0 (a complete case statement)
                m.d.comb += counter_value.eq(0)
        # A row: bank b's entry in bits [b·(acc_width + 1), ...), as an output entry (a queue entry's result
        # with gate bit 1; the baseline's output words with gate bit 1).
        row_words = []
        for b in range(P):
            out_word = Signal(output_layout(cfg).size, name=f"row_word{b}")
            entry = data.View(queue_layout(cfg), queue.host_rdata[b])
            if self._gating:
                m.d.comb += out_word.eq(
                    Mux(resp_sel == UnloadTarget.QUEUE, Cat(entry.p, Const(1, 1)), obanks[b])
                )
            else:
                m.d.comb += out_word.eq(Cat(obanks[b], Const(1, 1)))
            row_words.append(out_word)
        row = Cat(*row_words)
        raw_entry = Signal(len(queue.host_rdata[0]))  # (a whole queue entry: UnloadTarget.QUEUE_ENTRY)
        with m.Switch(resp_bank):
            for b in range(P):
                with m.Case(b):
                    m.d.comb += raw_entry.eq(queue.host_rdata[b])
        response = Signal.like(self.resp.payload)
        with m.Switch(resp_sel):
            with m.Case(UnloadTarget.COUNTERS):
                m.d.comb += response.eq(counter_value)
            with m.Case(UnloadTarget.QUEUE_ENTRY):
                m.d.comb += response.eq(raw_entry)
            with m.Default():
                m.d.comb += response.eq(row)
        # The word is taken in the cycle after the request and held: a run started while a response waits
        # reuses the queue's read ports and clears the counters, and must not change it.
        resp_fresh = Signal()
        resp_held = Signal.like(self.resp.payload, reset_less=True)
        m.d.sync += resp_fresh.eq(req_take)
        with m.If(resp_fresh):
            m.d.sync += resp_held.eq(response)
        word = Mux(resp_fresh, response, resp_held)
        m.d.comb += self.resp.payload.eq(Mux(self.resp.valid, word, 0))  # defined while not valid
        return m
