"""The engine's stream protocol (docs/microarchitecture.md, section 4), declared once for every side.

The gateware builds its ports from these layouts, the host-side packing (``verification.layout``) takes
the field offsets and codes from them, and the model names its counters after :class:`Counter`: one
definition, so a selector code or a register address cannot drift between the sides. (What stays
independent is the *logic*: the RTL and the model each compute on their own.)

* :class:`LoadTarget` -- ``sel`` of a load-stream write: configuration register, input, weight or
  threshold buffer, or work-queue entry.
* :class:`RunMode` -- what a run does (the ``run`` register): both phases, phase 1 only, or phase 2 only
  on a work queue the host wrote (two-pass runs, docs/microarchitecture.md section 4).
* :class:`ConfigRegister` -- the configuration register at each address (``sel`` = ``CONFIG``), each
  :data:`REGISTER_WIDTH` bits wide.
* :class:`UnloadTarget` -- ``sel`` of an unload request: output buffer, performance counters or work
  queue.
* :class:`Counter` -- the performance counter at each unload address (``sel`` = ``COUNTERS``).
* :func:`load_layout`, :func:`read_layout`, :func:`output_layout`, :func:`queue_layout` -- the payloads
  and the work-queue entry as :class:`amaranth.lib.data.StructLayout` (fields from bit 0 up, in the order
  listed).
"""

from __future__ import annotations

from amaranth.hdl import signed, unsigned
from amaranth.lib import data, enum

from spec.config import EngineConfig

__all__ = [
    "CONFIG_REGISTERS",
    "COUNTER_NAMES",
    "REGISTER_WIDTH",
    "ConfigRegister",
    "Counter",
    "LoadTarget",
    "RunMode",
    "UnloadTarget",
    "activation_layout",
    "box_layout",
    "load_layout",
    "output_layout",
    "queue_layout",
    "read_layout",
]

# Width of every configuration register (``dense`` uses its low bit); a tile's geometry must fit.
REGISTER_WIDTH = 16


class LoadTarget(enum.Enum, shape=3):
    """Where one load-stream write goes (the ``sel`` field of :func:`load_layout`).

    ``QUEUE`` writes a whole work-queue entry (:func:`queue_layout`, in the low bits of ``data``) at its
    banked address ``row << config.bank_bits | bank`` (entry ``row·P + bank``): the host's queue for a
    phase-2-only run (:class:`RunMode`).
    """

    CONFIG = 0
    INPUT = 1
    WEIGHT = 2
    THRESHOLD = 3
    QUEUE = 4


class RunMode(enum.Enum, shape=2):
    """What a run does (the ``run`` register; ignored in dense mode, which has one phase).

    ``FULL``: phase 1, then phase 2 on the activations phase 1 gated on. ``PHASE1``: phase 1 only; the
    output buffer holds every partial sum and gate bit, the work queue the gated-on activations (the host
    reads the gates and decides which channels run phase 2). ``PHASE2``: phase 2 only, on work-queue
    entries ``0 … queue_len − 1`` (left by a ``PHASE1`` run or written by the host, ``LoadTarget.QUEUE``);
    the output buffer is not touched.
    """

    FULL = 0
    PHASE1 = 1
    PHASE2 = 2


class UnloadTarget(enum.Enum, shape=2):
    """What one unload request reads (the ``sel`` field of :func:`read_layout`).

    ``OUTPUT``, ``QUEUE`` and ``QUEUE_ENTRY`` take a banked address, ``row << config.bank_bits | bank``
    for entry ``row·P + bank`` (with the buffer half in the top bit, ``config.half_bit``). ``OUTPUT`` and
    ``QUEUE`` answer with the whole **row**, entries ``row·P … row·P + P − 1``, entry ``row·P + b`` in bits
    ``[b·(acc_width + 1), (b + 1)·(acc_width + 1))`` as an output entry (:func:`output_layout`; a queue
    entry's result with gate bit 1; the bank field is ignored): one response per P entries.
    ``QUEUE_ENTRY`` answers with one whole entry (:func:`queue_layout`: after a ``PHASE1`` run the host
    reads the gated-on activations' channels from it and writes back those it keeps).
    """

    OUTPUT = 0
    COUNTERS = 1
    QUEUE = 2
    QUEUE_ENTRY = 3


class ConfigRegister(enum.Enum, shape=5):
    """Configuration register addresses (docs/microarchitecture.md, section 3).

    The host derives every value from the layer and the tile (:meth:`spec.tile.TileGeometry.registers`):
    the engine neither divides nor multiplies run-time values, so the segment widths, the channels per
    group and the products of extents arrive ready-made.
    """

    DENSE = 0
    KERNEL = 1
    STRIDE = 2
    N_COND = 3
    C_OUT = 4
    H_IN = 5
    W_IN = 6
    H_OUT = 7
    W_OUT = 8
    PAD_TOP = 9
    PAD_LEFT = 10
    SEG_B = 11
    SEG_C = 12
    C_OG = 13
    PLANE = 14
    IN_SEG = 15
    W_GAP = 16
    W_SEG = 17
    ROW_STEP = 18
    IN_ORIGIN = 19
    X_IN = 20
    X_WRAP = 21
    X_RES = 22
    Y_IN = 23
    Y_WRAP = 24
    Y_RES = 25
    RUN = 26
    QUEUE_LEN = 27
    HALF = 28
    IA_PLANE = 29


class Counter(enum.Enum):
    """Performance counters at their unload addresses."""

    CYCLES = 0
    BASE_MACS = 1
    COND_MACS = 2
    BUSY_PE_CYCLES = 3
    IDLE_PE_CYCLES = 4
    STALL_CYCLES = 5
    GATES_ON = 6


# The lower-case names, in address order: the keys of the model's and the driver's counter dicts.
CONFIG_REGISTERS = tuple(register.name.lower() for register in ConfigRegister)
COUNTER_NAMES = tuple(counter.name.lower() for counter in Counter)


def load_layout(config: EngineConfig) -> data.StructLayout:
    """One buffer or register write: ``sel`` in the low bits, then ``addr``, then ``data``."""
    return data.StructLayout(
        {"sel": LoadTarget, "addr": unsigned(config.addr_width), "data": unsigned(config.data_width)}
    )


def read_layout(config: EngineConfig) -> data.StructLayout:
    """One unload request: ``sel`` (output buffer, counters or work queue), then ``addr``."""
    return data.StructLayout({"sel": UnloadTarget, "addr": unsigned(config.addr_width)})


def output_layout(config: EngineConfig) -> data.StructLayout:
    """One output-buffer entry: the signed accumulator ``y``, then the ``gate`` bit."""
    return data.StructLayout({"y": signed(config.acc_width), "gate": unsigned(1)})


def _bits(n: int) -> int:
    """Bits of an index below ``n`` (at least 1)."""
    return max(1, (n - 1).bit_length())


def box_layout(config: EngineConfig) -> data.StructLayout:
    """The taps of an activation inside the tile: ``y_lo <= ky < y_end`` and ``x_lo <= kx < x_end``
    (``y_lo = max(0, −yt)``, at most the padding; ``y_end = min(max(h_in − yt, 0), K_max)`` with ``yt`` the
    input row of its tap (0, 0) and ``K_max`` the build's largest kernel; likewise for x)."""
    lo, end = range(config.padding + 1), range(config.kernel + 1)
    return data.StructLayout({"y_lo": lo, "y_end": end, "x_lo": lo, "x_end": end})


def activation_layout(config: EngineConfig) -> data.StructLayout:
    """What a beat's addresses and padding test need of one activation: output channel ``co`` (below
    ``threshold_depth``, like every tile's ``c_out``), gate group ``g`` (below the build's largest G),
    ``ia`` (the input word of its tap (0, 0) in chunk 0: ``in_origin + oy·Wp + ox`` modulo the input
    address width) and its taps inside the tile (:func:`box_layout`)."""
    return data.StructLayout(
        {
            "co": unsigned(_bits(config.threshold_depth)),
            "g": unsigned(_bits(config.groups)),
            "ia": unsigned(_bits(config.input_depth)),
            "box": box_layout(config),
        }
    )


def queue_layout(config: EngineConfig) -> data.StructLayout:
    """One work-queue entry: a gated-on activation and its partial sum ``p`` (no output index: after a
    phase-1 run entry ``n`` is the ``n``-th gated-on activation in ``lin`` order, which the host knows from
    the gate bits). Phase 2 replaces ``p`` by the result ``p + r``."""
    return data.StructLayout({"act": activation_layout(config), "p": signed(config.acc_width)})
