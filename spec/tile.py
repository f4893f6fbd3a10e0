"""A tile of work for the engine: run-time geometry, operands and their checks (spec sections 1-3)."""

from __future__ import annotations

from dataclasses import dataclass, fields

import numpy as np

from spec.config import ConfigError, EngineConfig
from spec.protocol import CONFIG_REGISTERS, REGISTER_WIDTH, RunMode

__all__ = [
    "REGISTER_LIMIT",
    "SIGNED_REGISTERS",
    "QueueLoad",
    "Segments",
    "Tile",
    "TileGeometry",
    "conv_output_size",
    "random_tile",
]

REGISTER_LIMIT = (1 << REGISTER_WIDTH) - 1  # largest value a configuration register holds
# Registers the engine reads as two's complement (pointer steps that can be negative).
SIGNED_REGISTERS = ("row_step", "in_origin", "x_wrap", "y_wrap")


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int) -> int:
    return (size + pad_before + pad_after - kernel) // stride + 1


@dataclass(frozen=True)
class Segments:
    """Derived channel segmentation of a tile (the table in spec section 2)."""

    n_seg: int
    base_ch: int  # C_sb
    cond_ch: int  # C_sc, each conditional segment
    out_per_group: int  # C_og
    nch_b: int
    nch_c: int

    @property
    def n_chunks(self) -> int:
        return self.nch_b + (self.n_seg - 1) * self.nch_c

    def start(self, seg: int) -> int:
        """First input channel of segment ``seg``."""
        return seg * self.base_ch

    def channels(self, seg: int) -> int:
        return self.base_ch if seg == 0 else self.cond_ch


@dataclass(frozen=True)
class TileGeometry:
    """Run-time geometry written into the engine's configuration registers."""

    c_in: int
    c_out: int
    h_in: int
    w_in: int
    h_out: int
    w_out: int
    pad_top: int = 0
    pad_left: int = 0
    base_channels: int = 0  # only for groups == 1
    dense: bool = False

    @classmethod
    def full_layer(
        cls,
        config: EngineConfig,
        c_in: int,
        c_out: int,
        h_in: int,
        w_in: int,
        base_channels: int = 0,
        dense: bool = False,
    ) -> TileGeometry:
        """A tile covering a whole layer with the configured padding on every side."""
        k, s, p = config.kernel, config.stride, config.padding
        return cls(
            c_in=c_in,
            c_out=c_out,
            h_in=h_in,
            w_in=w_in,
            h_out=conv_output_size(h_in, k, s, p, p),
            w_out=conv_output_size(w_in, k, s, p, p),
            pad_top=p,
            pad_left=p,
            base_channels=base_channels,
            dense=dense,
        )

    def register_values(
        self, config: EngineConfig, run: RunMode = RunMode.FULL, queue_len: int = 0, half: int = 0
    ) -> dict[str, int]:
        """The configuration registers for this tile run with the layer configuration ``config``, by name.

        Everything the engine would otherwise divide or multiply is derived here (docs/microarchitecture.md,
        section 3): the segment widths, the channels per group, the input words of a chunk and of a base
        segment, the weight words of a segment (:meth:`weight_segment`) and its padding past the last
        beat's words (``w_gap``), the input pointer's step
        to the next output row (negative when the output row is wider than the input row plus one) and its
        value at output (0, 0); :data:`SIGNED_REGISTERS` are written in two's complement. ``run`` and
        ``queue_len``: the run's :class:`~spec.protocol.RunMode` and, for ``PHASE2``, the entries of the
        host's work queue; ``half``: the buffer half the run uses (0 or 1).
        """
        seg = self.segments(config)
        k, s = config.kernel, config.stride
        hp, wp = self.plane(config)
        plane = hp * wp
        ty, tx = self.tap_offsets(config)
        return {
            "dense": int(bool(self.dense)),
            "kernel": k,
            "stride": s,
            "n_cond": seg.n_seg - 1,
            "c_out": self.c_out,
            "h_in": self.h_in,
            "w_in": self.w_in,
            "h_out": self.h_out,
            "w_out": self.w_out,
            "pad_top": self.pad_top,
            "pad_left": self.pad_left,
            "seg_b": seg.base_ch,
            "seg_c": seg.cond_ch,
            "c_og": seg.out_per_group,
            "plane": plane,
            "in_seg": seg.nch_b * plane,
            "w_gap": self.weight_segment(config) - seg.nch_b * k * k * self.c_out,
            "w_seg": self.weight_segment(config),
            "row_step": wp - self.w_out + 1,
            "in_origin": ty[0] + tx[0],
            # the tap pointers: a step to the next tap inside a residue class, or back to the first class
            # one word (row) further on (S = 1: always the latter)
            "x_in": wp // s,
            "x_wrap": 1 - (s - 1) * (wp // s),
            "x_res": -self.pad_left % s,
            "y_in": hp // s * wp,
            "y_wrap": wp - (s - 1) * (hp // s) * wp,
            "y_res": -self.pad_top % s,
            "run": RunMode(run).value,
            "queue_len": int(queue_len),
            "half": int(half),
            "ia_plane": self.h_out * wp,
        }

    def registers(
        self, config: EngineConfig, run: RunMode = RunMode.FULL, queue_len: int = 0, half: int = 0
    ) -> list[int]:
        """Register words in address order (:class:`spec.protocol.ConfigRegister`), negative values in
        two's complement; :meth:`check` has refused a tile whose values do not fit."""
        values = self.register_values(config, run, queue_len, half)
        return [values[name] & REGISTER_LIMIT for name in CONFIG_REGISTERS]

    def plane(self, config: EngineConfig) -> tuple[int, int]:
        """Rows and columns ``(Hp, Wp)`` of a chunk's input plane: ``h_in`` and ``w_in`` rounded up to a
        multiple of the stride S. The plane is stored deinterleaved by S (docs/microarchitecture.md,
        section 3): input row ``y`` at plane row ``(y mod S)·Hp/S + y div S``, column ``x`` likewise, so
        the inputs of consecutive output columns at one tap are consecutive words whatever the stride."""
        s = config.stride
        return -(-self.h_in // s) * s, -(-self.w_in // s) * s

    def tap_offsets(self, config: EngineConfig) -> tuple[list[int], list[int]]:
        """Word offsets ``(ty, tx)`` of the taps in the plane deinterleaved by the stride: the input of output
        ``(oy, ox)`` at tap ``(ky, kx)`` is word ``oy·Wp + ox + ty[ky] + tx[kx]`` of its chunk's plane
        (``ty`` counts whole rows of ``Wp`` words); for a tap in the padding the word is never read."""
        s, k = config.stride, config.kernel
        hp, wp = self.plane(config)

        def place(t: int, pad: int, sub: int) -> int:  # deinterleaved index of offset t − pad
            return ((t - pad) % s) * sub + (t - pad) // s

        return [place(t, self.pad_top, hp // s) * wp for t in range(k)], [
            place(t, self.pad_left, wp // s) for t in range(k)
        ]

    def weight_segment(self, config: EngineConfig) -> int:
        """Weight words from one segment's first word to the next's: a base segment's ``nch_b·K²·c_out``
        words (channel-minor: word ``((c·K + ky)·K + kx)·c_out + co``) rounded up to a multiple of the
        ``2^bank_bits`` weight banks, so that every segment starts in bank 0: the PEs of one beat read words
        ``s·w_seg + b·c_out + co`` (``b`` the beat's, common to all), whose banks differ exactly when their
        channels differ mod ``2^bank_bits``, whatever their segments (docs/microarchitecture.md,
        section 3)."""
        banks = 1 << config.bank_bits
        words = self.segments(config).nch_b * config.kernel**2 * self.c_out
        return -(-words // banks) * banks

    def weight_words(self, config: EngineConfig) -> int:
        """Weight-buffer words the tile occupies: every segment but the last one at its rounded-up
        stride, then the last (a conditional one) unpadded."""
        seg = self.segments(config)
        return (seg.n_seg - 1) * self.weight_segment(config) + seg.nch_c * config.kernel**2 * self.c_out

    @property
    def n_outputs(self) -> int:
        return self.c_out * self.h_out * self.w_out

    def segments(self, config: EngineConfig) -> Segments:
        g = config.groups
        if g > 1:
            base = cond = self.c_in // g
            n_seg, out_per_group = g, self.c_out // g
        else:
            base, cond = self.base_channels, self.c_in - self.base_channels
            n_seg, out_per_group = 2, self.c_out
        lanes = config.lanes
        return Segments(
            n_seg=n_seg,
            base_ch=base,
            cond_ch=cond,
            out_per_group=out_per_group,
            nch_b=_ceil_div(base, lanes),
            nch_c=_ceil_div(cond, lanes),
        )

    def check(self, config: EngineConfig) -> Segments:
        """Refuse a geometry the engine cannot run; return its segmentation."""
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "dense":
                if not isinstance(value, (bool, np.bool_)):
                    raise ConfigError(f"tile field 'dense' = {value!r}: expected true or false")
                continue
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool):
                raise ConfigError(f"tile field {f.name!r} = {value!r}: expected an integer")
            if not 0 <= value <= REGISTER_LIMIT:
                raise ConfigError(f"tile field {f.name!r} = {value}: must lie in [0, {REGISTER_LIMIT}]")
        for name in ("c_in", "c_out", "h_in", "w_in", "h_out", "w_out"):
            if getattr(self, name) < 1:
                raise ConfigError(f"tile field {name!r} = {getattr(self, name)}: must be at least 1")
        for name in ("pad_top", "pad_left"):
            if getattr(self, name) > config.padding:
                raise ConfigError(
                    f"tile field {name!r} = {getattr(self, name)}: larger than the engine's "
                    f"padding = {config.padding}"
                )
        g = config.groups
        if g > 1:
            for name in ("c_in", "c_out"):
                if getattr(self, name) % g:
                    raise ConfigError(
                        f"tile field {name!r} = {getattr(self, name)}: not a multiple of groups = {g}"
                    )
        elif not 1 <= self.base_channels < self.c_in:
            raise ConfigError(
                f"tile field 'base_channels' = {self.base_channels}: with groups = 1 it must lie in "
                f"[1, c_in - 1] = [1, {self.c_in - 1}]"
            )
        k, s = config.kernel, config.stride
        # Every output position must read at least its top-left tap inside the padded tile.
        max_h = conv_output_size(self.h_in, k, s, self.pad_top, config.padding)
        max_w = conv_output_size(self.w_in, k, s, self.pad_left, config.padding)
        if self.h_out > max_h:
            raise ConfigError(f"tile field 'h_out' = {self.h_out}: at most {max_h} for h_in = {self.h_in}")
        if self.w_out > max_w:
            raise ConfigError(f"tile field 'w_out' = {self.w_out}: at most {max_w} for w_in = {self.w_in}")
        seg = self.segments(config)
        need = {
            "input_depth": seg.n_chunks * self.plane(config)[0] * self.plane(config)[1],
            "weight_depth": self.weight_words(config),
            "output_depth": self.n_outputs,
            "threshold_depth": self.c_out,
        }
        for name, words in need.items():
            if words > getattr(config, name):
                raise ConfigError(
                    f"tile needs {words} entries of the {name.removesuffix('_depth')} buffer, "
                    f"config field {name!r} = {getattr(config, name)}"
                )
        for name, value in self.register_values(config).items():
            lo = -(1 << (REGISTER_WIDTH - 1)) if name in SIGNED_REGISTERS else 0
            hi = (1 << (REGISTER_WIDTH - 1)) - 1 if name in SIGNED_REGISTERS else REGISTER_LIMIT
            if not lo <= value <= hi:
                raise ConfigError(
                    f"tile needs configuration register {name!r} = {value}, outside the {REGISTER_WIDTH}-bit "
                    f"register's [{lo}, {hi}]"
                )
        worst = self.c_in * k * k * (1 << (config.act_width - 1)) * (1 << (config.weight_width - 1))
        if worst > (1 << (config.acc_width - 1)) - 1:
            raise ConfigError(
                f"tile field 'c_in' = {self.c_in}: a {k}x{k} dot product over it can overflow "
                f"acc_width = {config.acc_width}"
            )
        return seg

    def check_counters(self, config: EngineConfig) -> None:
        """Refuse a tile whose performance counts could wrap the ``counter_width``-bit counters.

        The engine's counters wrap, as the hardware's do (the model reproduces it); a tool that reads them as
        figures (the network report, ``accel run``) must not cut tiles that could. Phase 1 has ceil(n/P)
        rounds of at most n_chunks·K² beats, each at most P cycles (every cycle serves a PE); phase 2 at
        most n rounds of at most max(n_chunks·K², 2P + 2) cycles, plus the window's first fill; and no
        counter grows by more than P·L per cycle (MACs: valid PEs × valid lanes).
        """
        k, p = config.kernel, config.pes
        beats = self.segments(config).n_chunks * k * k
        rounds = _ceil_div(self.n_outputs, p)
        cycles = rounds * p * beats + self.n_outputs * max(beats, 2 * p + 2) + config.window + 2 * p + 16
        if config.pes * config.lanes * cycles >= 1 << config.counter_width:
            raise ConfigError(
                f"config field 'counter_width' = {config.counter_width}: a tile of {self.n_outputs} outputs "
                f"can count up to {config.pes * config.lanes * cycles:,} (P × L × {cycles:,} cycles), which "
                "wraps the counters; widen counter_width"
            )


@dataclass(frozen=True)
class Tile:
    """Operands of one engine run.

    Parameters
    ----------
    geometry : TileGeometry
    inputs : ndarray, int8-range, shape (c_in, h_in, w_in)
    weights : ndarray, int8-range, shape (c_out, c_in, K, K)
    thresholds : ndarray, int64 of signed acc_width range, shape (c_out,)
    """

    geometry: TileGeometry
    inputs: np.ndarray
    weights: np.ndarray
    thresholds: np.ndarray

    def check(self, config: EngineConfig) -> Segments:
        """Refuse operands that do not fit; return the segmentation."""
        seg = self.geometry.check(config)
        g, k = self.geometry, config.kernel
        shapes = {
            "inputs": (g.c_in, g.h_in, g.w_in),
            "weights": (g.c_out, g.c_in, k, k),
            "thresholds": (g.c_out,),
        }
        widths = {
            "inputs": config.act_width,
            "weights": config.weight_width,
            "thresholds": config.acc_width,
        }
        for name, shape in shapes.items():
            arr = getattr(self, name)
            if not isinstance(arr, np.ndarray):
                raise ConfigError(f"tile field {name!r}: expected a numpy array, got {type(arr).__name__}")
            if arr.shape != shape:
                raise ConfigError(f"tile field {name!r}: shape {arr.shape}, expected {shape}")
            if arr.dtype.kind not in "iu":
                raise ConfigError(f"tile field {name!r}: dtype {arr.dtype}, expected an integer type")
            lo, hi = -(1 << (widths[name] - 1)), (1 << (widths[name] - 1)) - 1
            if arr.size and (int(arr.min()) < lo or int(arr.max()) > hi):
                bad = int(arr.min()) if int(arr.min()) < lo else int(arr.max())
                raise ConfigError(f"tile field {name!r}: value {bad} outside the signed range [{lo}, {hi}]")
        return seg


@dataclass(frozen=True)
class QueueLoad:
    """The work queue a host writes for a phase-2-only run (:class:`~spec.protocol.RunMode`): entry ``n``
    is the activation ``lins[n]`` (its ``lin`` in the tile) with partial sum ``psums[n]``.

    Usually the gated-on activations of a phase-1 run minus those of the channels the host prunes, in
    ``lin`` order, with the partial sums that run left in the output buffer (:meth:`after_phase1`); any
    order of distinct activations is allowed.
    """

    lins: np.ndarray
    psums: np.ndarray

    @classmethod
    def after_phase1(cls, psums: np.ndarray, gates: np.ndarray, keep: np.ndarray | None = None) -> QueueLoad:
        """The gated-on activations of a phase-1 run (``psums``, ``gates``: ``[c_out, h_out, w_out]``) of
        the channels ``keep`` (bool ``[c_out]``; default all), in ``lin`` order."""
        on = np.asarray(gates, dtype=bool)
        if keep is not None:
            on = on & np.asarray(keep, dtype=bool)[:, None, None]
        lins = np.flatnonzero(on.reshape(-1)).astype(np.int64)
        return cls(lins, np.asarray(psums, dtype=np.int64).reshape(-1)[lins])

    def check(self, config: EngineConfig, geometry: TileGeometry) -> np.ndarray:
        """Refuse a queue the engine cannot run for a tile of ``geometry``; return the lins as int64."""
        lins = np.asarray(self.lins)
        psums = np.asarray(self.psums)
        if lins.ndim != 1 or psums.shape != lins.shape:
            raise ConfigError(
                f"work queue: lins of shape {lins.shape} and psums of shape {psums.shape}, expected two "
                "arrays of one entry per queued activation"
            )
        if lins.size and lins.dtype.kind not in "iu" or psums.size and psums.dtype.kind not in "iu":
            raise ConfigError("work queue: lins and psums must be integer arrays")
        n = geometry.n_outputs
        if lins.size and (int(lins.min()) < 0 or int(lins.max()) >= n):
            bad = int(lins.min()) if int(lins.min()) < 0 else int(lins.max())
            raise ConfigError(f"work queue: activation lin = {bad} outside the tile's [0, {n - 1}]")
        if np.unique(lins).size != lins.size:
            raise ConfigError("work queue: an activation is queued twice")
        lo, hi = -(1 << (config.acc_width - 1)), (1 << (config.acc_width - 1)) - 1
        if psums.size and (int(psums.min()) < lo or int(psums.max()) > hi):
            raise ConfigError(f"work queue: a partial sum outside the signed acc_width range [{lo}, {hi}]")
        return lins.astype(np.int64)


def random_tile(
    config: EngineConfig,
    geometry: TileGeometry,
    rng: np.random.Generator,
    gate_rate: float | None = 0.5,
) -> Tile:
    """A random tile; thresholds are set at the quantile of the partial sums that gives ``gate_rate``.

    ``gate_rate`` None draws thresholds uniformly; 1.0 and 0.0 give all-on and all-off gates.
    """
    g = geometry
    k = config.kernel
    amax = (1 << (config.act_width - 1)) - 1
    wmax = (1 << (config.weight_width - 1)) - 1
    inputs = rng.integers(-amax - 1, amax + 1, size=(g.c_in, g.h_in, g.w_in), dtype=np.int64)
    weights = rng.integers(-wmax - 1, wmax + 1, size=(g.c_out, g.c_in, k, k), dtype=np.int64)
    lo, hi = -(1 << (config.acc_width - 1)), (1 << (config.acc_width - 1)) - 1
    if gate_rate is None:
        span = 1 << min(config.acc_width - 2, 16)
        thresholds = rng.integers(-span, span, size=g.c_out, dtype=np.int64)
    elif gate_rate >= 1.0:
        thresholds = np.full(g.c_out, lo, dtype=np.int64)  # p > min_int is true for every reachable p
    elif gate_rate <= 0.0:
        thresholds = np.full(g.c_out, hi, dtype=np.int64)
    else:
        # A cheap stand-in for a calibrated gate: a per-channel threshold near the quantile of a normal
        # with the spread of a base-path partial sum (``base_ch`` channels) that leaves ``gate_rate`` above.
        base_ch = g.segments(config).base_ch
        spread = np.sqrt(base_ch * k * k) * (amax + 0.5) * (wmax + 0.5) / 3
        rate = min(max(gate_rate, 1e-3), 1 - 1e-3)
        thresholds = np.round(
            rng.normal(0, spread / 8, size=g.c_out) + spread * np.sqrt(2) * _erfinv(1 - 2 * rate)
        ).astype(np.int64)
        thresholds = np.clip(thresholds, lo, hi)
    return Tile(
        g,
        inputs.astype(np.int8 if config.act_width <= 8 else np.int16),
        weights.astype(np.int8 if config.weight_width <= 8 else np.int16),
        thresholds,
    )


def _erfinv(y: float) -> float:
    # Winitzki's approximation; good to ~1e-3, plenty for picking a threshold.
    a = 0.147
    ln = np.log(1 - y * y)
    t = 2 / (np.pi * a) + ln / 2
    return float(np.sign(y) * np.sqrt(np.sqrt(t * t - ln / a) - t))
