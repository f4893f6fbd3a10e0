"""The phase-2 selection window: rounds of queued activations that share no input or weight bank."""

from __future__ import annotations

from amaranth.hdl import Cat, Const, Module, Mux, Signal, unsigned
from amaranth.lib import data, stream, wiring
from amaranth.lib.wiring import In, Out

from rtl.array_port import ArrayPort, plain_view
from spec.config import EngineConfig

__all__ = ["SelectionWindow", "window_entry_layout", "window_key_layout"]


def window_slots(config: EngineConfig) -> int:
    """Conditional slots of an activation in the build (``G − 1``, or 1 for G = 1's one segment)."""
    return max(config.groups - 1, 1)


def window_key_layout(config: EngineConfig) -> data.StructLayout:
    """What the window compares of an activation (docs/chip-design.md, section 2, "pair rule").

    ``co``: tile output channel (weight bank ``co mod P``; one ``co`` reads one word per beat);
    ``upper[t]``: slot ``t`` reads segment ``t + 1`` rather than ``t`` (``g ≤ t`` for gate group ``g``:
    the slot reads segment ``t + [t ≥ g]``); ``ia``: input position (``oy·Wp + ox``: equal positions in
    equal segments read one word); ``ib[t]``: input bank of slot ``t`` (``(seg_in[t + [t ≥ g]] + ia) mod
    P``, the same bank at every chunk and tap of the slot).
    """
    bank_bits = max(config.bank_bits, 1)
    return data.StructLayout(
        {
            "co": unsigned(max(1, (config.output_depth - 1).bit_length())),
            "upper": unsigned(window_slots(config)),
            "ia": unsigned(max(1, (config.input_depth - 1).bit_length())),
            "ib": data.ArrayLayout(unsigned(bank_bits), window_slots(config)),
        }
    )


def window_entry_layout(config: EngineConfig, payload_width: int) -> data.StructLayout:
    """One inserted entry: its keys and what the window hands on to the PE with it."""
    return data.StructLayout({"key": window_key_layout(config), "payload": unsigned(payload_width)})


class SelectionWindow(wiring.Component):
    """Up to ``window`` queued activations; each round takes the oldest, then, oldest first, every entry
    compatible with all members so far, up to P (docs/chip-design.md, section 2: the study's B-window).

    Two entries are compatible when at no beat they ask one bank for two different words: for weights
    their channels differ mod P or are equal; for inputs, at every conditional slot ``t < n_cond``, their
    banks ``ib[t]`` differ or they read the same word (same position, same segment). Inputs at padding taps
    count as reads (conservative, as in the study).

    A round forms in two steps after ``start``:

    * FILL, one entry per cycle from ``insert`` into the lowest free place, while the window has a free
      place and ``more`` is high; FILL ends in the first cycle with the window full or ``more`` low (that
      cycle inserts nothing): ``inserted + 1`` cycles;
    * SELECT, one member per cycle: the oldest entry of the candidate mask ``M`` (at first every entry)
      leaves the window for member place ``k``, and ``M`` keeps the entries compatible with it. It ends
      with P members or an empty ``M``: ``max(members, 1)`` cycles (one with no member when the window was
      empty).

    Then ``formed`` is high and ``members``/``member_valid`` hold the round (PE ``k`` = the ``k``-th oldest
    member) until the next ``start``. Ages are an age matrix (``A[i][j]``: place ``i`` is older than
    ``j``), so the oldest of a mask is an AND-OR over the window, not a scan; compatibility is computed
    against the member just taken (one row of pair tests per cycle, nothing stored).

    Parameters
    ----------
    config : EngineConfig
        Supplies ``pes`` (members per round, banks), ``groups`` (slots) and the key widths.
    window : int
        Places in the window (W ≥ 1).
    payload_width : int
        Bits carried with each entry (≥ 1).

    Members
    -------
    clear : In(1)
        Drop every entry and any formed round (a new run).
    start : In(1)
        Form the next round (sampled while no round is forming).
    more : In(1)
        Entries remain to be inserted (the filler keeps ``insert.valid`` high until they are in).
    n_cond : In(range(slots + 1))
        Conditional slots of the run's activations (the run-time ``n_cond`` register).
    insert : In(stream.Signature(window_entry_layout))
        Entries in queue order; ready in FILL while a place is free.
    forming : Out(1)
        FILL or SELECT in progress.
    formed : Out(1)
        A formed round is held.
    empty : Out(1)
        The window holds no entry.
    member_valid : Out(pes)
        Member places filled in the held round.
    members_bits : Out(pes × payload_width)
        The held round's payloads (the array :attr:`members`).
    """

    members = ArrayPort(Out)

    def __init__(self, config: EngineConfig, window: int, payload_width: int) -> None:
        for name, value in (("window", window), ("payload_width", payload_width)):
            if not isinstance(value, int) or value < 1:
                self._MustUse__silence = True  # a refused component is not an unused one
                raise ValueError(f"{name} must be a positive integer, not {value!r}")
        self._config = config
        self._window = window
        self._payload_width = payload_width
        self.array_layouts = {"members": data.ArrayLayout(unsigned(payload_width), config.pes)}
        super().__init__(
            {
                "clear": In(1),
                "start": In(1),
                "more": In(1),
                "n_cond": In(range(window_slots(config) + 1)),
                "insert": In(stream.Signature(window_entry_layout(config, payload_width))),
                "forming": Out(1),
                "formed": Out(1),
                "empty": Out(1),
                "member_valid": Out(config.pes),
                **ArrayPort.members(self),
            }
        )
        # The entries as plain bits (no alias wire per field of the port in the Verilog).
        self.insert.payload = plain_view(self.insert.payload, "insert__payload")

    @property
    def window(self) -> int:
        return self._window

    def elaborate(self, platform) -> Module:
        m = Module()
        cfg, W, P = self._config, self._window, self._config.pes
        entry_layout = window_entry_layout(cfg, self._payload_width)
        # Window places: valid bits (reset), entries and ages (datapath: only read under a valid bit).
        valid = Signal(W)
        entries = [
            data.View(entry_layout, Signal(entry_layout.size, name=f"win{j}", reset_less=True))
            for j in range(W)
        ]
        older = [Signal(W, name=f"older{j}", reset_less=True) for j in range(W)]  # older[j][i] = A[i][j]
        cand = Signal(W, reset_less=True)  # M
        k = Signal(range(P + 1), reset_less=True)

        # ---- FILL: the lowest free place takes the entry; every valid place is older than it ------------
        full = valid.all()
        free = Signal(W)
        m.d.comb += free.eq(~valid & (valid + 1)[:W])  # one-hot lowest zero of `valid`
        accept = self.insert.valid & self.insert.ready
        with m.If(accept):
            for j in range(W):
                with m.If(free[j]):
                    m.d.sync += [entries[j].eq(self.insert.payload), older[j].eq(valid)]
                with m.Else():  # the new entry is older than none (its place may have held an old one)
                    m.d.sync += older[j].eq(older[j] & ~free)

        # ---- SELECT: the oldest candidate and its pair tests against every place ---------------------
        pick = Signal(W)  # one-hot: a candidate no older candidate precedes
        m.d.comb += pick.eq(Cat(cand[j] & ~(cand & older[j]).any() for j in range(W)))
        chosen = data.View(entry_layout, Signal(entry_layout.size, name="chosen"))
        m.d.comb += chosen.eq(_one_hot_or(pick, entries))
        self._slot_on = Signal(window_slots(cfg))  # slots the run's activations have (t < n_cond)
        # (a thermometer code by a case statement: one signal driven as a whole, no compares with constants)
        with m.Switch(self.n_cond):
            for n in range(window_slots(cfg)):
                with m.Case(n):
                    m.d.comb += self._slot_on.eq((1 << n) - 1)
            with m.Default():  # n_cond >= slots: every slot
                m.d.comb += self._slot_on.eq((1 << window_slots(cfg)) - 1)
        compatible = Signal(W)
        m.d.comb += compatible.eq(Cat(self._pair(chosen.key, entries[j].key) for j in range(W)))
        remaining = Signal(W)
        m.d.comb += remaining.eq(cand & ~pick & compatible)

        take = Signal()  # a member leaves the window this cycle
        # Control: READY (neither flag), FILL, SELECT; two flags rather than an encoded state.
        filling = Signal()
        selecting = Signal()
        m.d.comb += [self.forming.eq(filling | selecting), self.insert.ready.eq(filling & ~full & self.more)]
        with m.If(self.clear):
            m.d.sync += [filling.eq(0), selecting.eq(0)]
        with m.Elif(filling):
            with m.If(full | ~self.more):
                m.d.sync += [cand.eq(valid), filling.eq(0), selecting.eq(1)]
        with m.Elif(selecting):
            m.d.comb += take.eq(cand.any())
            with m.If(take):
                m.d.sync += [
                    cand.eq(remaining),
                    k.eq(k + 1),
                    self.member_valid.eq(self.member_valid | (Const(1, P) << k)[:P]),
                ]
                for i in range(P):
                    with m.If(k == i):
                        m.d.sync += self.members[i].eq(chosen.payload)
            with m.If(~cand.any() | ~remaining.any() | (k == P - 1)):
                m.d.sync += [self.formed.eq(1), selecting.eq(0)]
        with m.Elif(self.start):
            m.d.sync += [self.formed.eq(0), self.member_valid.eq(0), k.eq(0), filling.eq(1)]

        # The valid bits: set by an insertion, cleared by a selection or `clear` (never two in a cycle).
        with m.If(self.clear):
            m.d.sync += [valid.eq(0), self.formed.eq(0), self.member_valid.eq(0)]
        with m.Elif(accept):
            m.d.sync += valid.eq(valid | free)
        with m.Elif(take):
            m.d.sync += valid.eq(valid & ~pick)
        m.d.comb += self.empty.eq(~valid.any())
        return m

    def _pair(self, a, b):
        """Whether the entries with keys ``a`` and ``b`` may share a round (the pair rule)."""
        bank_bits = self._config.bank_bits
        same_co = a.co == b.co
        w_ok = (a.co[:bank_bits] != b.co[:bank_bits]) | same_co if bank_bits else same_co
        same_pos = a.ia == b.ia
        oks = [w_ok]
        for t in range(window_slots(self._config)):
            same_seg = a.upper[t] == b.upper[t]  # both read segment t, or both t + 1
            same_word = same_pos & same_seg
            in_ok = (a.ib[t] != b.ib[t]) | same_word if bank_bits else same_word
            oks.append(in_ok | ~self._slot_on[t])
        return Cat(*oks).all()


def _one_hot_or(select, values):
    """``values[j]`` for the one set bit ``j`` of ``select`` (0 when none): an AND-OR, no priority."""
    acc = 0
    for j, v in enumerate(values):
        acc = acc | Mux(select[j], v.as_value(), 0)
    return acc
