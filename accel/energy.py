"""Energy model: per-action energies from a TOML table, times the actions the cycle model counts.

The table (:class:`EnergyTable`) gives the energy in pJ of each action (:data:`ACTIONS`) and of one 64-bit
SRAM access by array size; the built-in one (``accel/energy_45nm.toml``) holds the 45 nm figures of
Horowitz, ISSCC 2014, each with its source. :func:`design_energy` turns one design's figures for one layer
(:class:`sim.results.DesignRun`) into energy per component (:data:`COMPONENTS`); :func:`layer_energy` does
so for every design of a layer. The rules are in docs/energy.md.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from spec.config import ConfigError, EngineConfig
from spec.config_file import finite_number, parse_config_text, read_text_file

if TYPE_CHECKING:
    from sim.results import DesignRun, LayerRun

__all__ = [
    "ACTIONS",
    "COMPONENTS",
    "DEFAULT_TABLE",
    "EnergyTable",
    "design_energy",
    "layer_energy",
    "load_energy_table",
]

#: Actions with a fixed energy each, in the order of the table file.
ACTIONS = ("mult_int8", "add_acc", "compare", "dram_byte", "static_cycle")

#: Components of an energy breakdown, in this order (keys of :func:`design_energy`'s result).
COMPONENTS = (
    "mac",
    "accumulate",
    "compare",
    "input_buffer",
    "weight_buffer",
    "output_buffer",
    "threshold_buffer",
    "dram",
    "static",
)

#: Name of the built-in table inside the ``accel`` package.
DEFAULT_TABLE = "energy_45nm.toml"

_TOP_KEYS = ("table", "actions", "sram")
_TABLE_KEYS = ("name",)
_ACTION_KEYS = ("pj", "source")
_SRAM_KEYS = ("sizes_bytes", "pj_per_64bit", "source", "write_factor", "write_factor_source")


# Upper bounds of a table's figures. Every published figure lies far below them (a DRAM byte costs about
# 160 pJ, a 64-bit read of a 1 MB SRAM 100 pJ); a larger value is a unit error, and it would let the
# network's totals (up to ~1e12 actions) overflow to inf.
MAX_PJ = 1e6
MAX_WRITE_FACTOR = 1e3
MAX_SRAM_BYTES = 1e15


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


@dataclass(frozen=True)
class EnergyTable:
    """Energy per action and per SRAM access (all in pJ), with the source of every figure.

    Parameters
    ----------
    name : str
        What the table describes (technology, reference).
    actions : dict[str, float]
        Energy of one action, for every name in :data:`ACTIONS`: ``mult_int8`` (one multiply of the
        engine's operands), ``add_acc`` (one accumulator add), ``compare`` (one threshold comparison),
        ``dram_byte`` (one byte to or from DRAM), ``static_cycle`` (static energy of one clock cycle).
    sources : dict[str, str]
        Where each figure comes from: one entry per action, plus ``"sram"`` and ``"write_factor"``.
    sram_sizes_bytes : tuple[float, ...]
        Array sizes of the SRAM figures, strictly increasing, all > 0.
    sram_pj_per_64bit : tuple[float, ...]
        Energy of one 64-bit read of an array of each size (> 0), same length as ``sram_sizes_bytes``.
    write_factor : float
        Energy of a write as a multiple of a read of the same width and array.
    origin : str
        The file the table came from (named in error messages).

    Raises
    ------
    ConfigError
        A missing action, a figure out of range (negative, non-finite or above :data:`MAX_PJ`), SRAM
        sizes not strictly increasing or lists of different lengths; the message names ``origin``, the
        key and the value.
    """

    name: str
    actions: dict[str, float]
    sources: dict[str, str]
    sram_sizes_bytes: tuple[float, ...]
    sram_pj_per_64bit: tuple[float, ...]
    write_factor: float = 1.0
    origin: str = "<energy table>"
    _log_sizes: tuple[float, ...] = field(init=False, repr=False, compare=False)
    _log_pj: tuple[float, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        src = self.origin
        for name in ACTIONS:
            if name not in self.actions:
                raise ConfigError(f"{src}: [actions.{name}] missing")
        for name, value in self.actions.items():
            if name not in ACTIONS:
                raise ConfigError(f"{src}: unknown action {name!r} (known actions: {', '.join(ACTIONS)})")
            if not finite_number(value) or not 0 <= value <= MAX_PJ:
                raise ConfigError(
                    f"{src}: actions.{name}.pj = {value!r}: must be a number in [0, {MAX_PJ:g}]"
                )
        sizes, pj = tuple(self.sram_sizes_bytes), tuple(self.sram_pj_per_64bit)
        if len(sizes) == 0:
            raise ConfigError(f"{src}: sram.sizes_bytes = []: needs at least one size")
        if len(sizes) != len(pj):
            raise ConfigError(
                f"{src}: sram.pj_per_64bit = {list(pj)!r}: "
                f"{len(pj)} values but sram.sizes_bytes has {len(sizes)}"
            )
        for key, values, top in (("sizes_bytes", sizes, MAX_SRAM_BYTES), ("pj_per_64bit", pj, MAX_PJ)):
            for v in values:
                if not finite_number(v) or not 0 < v <= top:
                    raise ConfigError(
                        f"{src}: sram.{key} = {list(values)!r}: {v!r} is not a number in (0, {top:g}]"
                    )
        if any(b <= a for a, b in zip(sizes, sizes[1:], strict=False)):
            raise ConfigError(f"{src}: sram.sizes_bytes = {list(sizes)!r}: must be strictly increasing")
        wf = self.write_factor
        if not finite_number(wf) or not 0 <= wf <= MAX_WRITE_FACTOR:
            raise ConfigError(
                f"{src}: sram.write_factor = {wf!r}: must be a number in [0, {MAX_WRITE_FACTOR:g}]"
            )
        object.__setattr__(self, "sram_sizes_bytes", tuple(float(v) for v in sizes))
        object.__setattr__(self, "sram_pj_per_64bit", tuple(float(v) for v in pj))
        object.__setattr__(self, "actions", {k: float(self.actions[k]) for k in ACTIONS})
        object.__setattr__(self, "_log_sizes", tuple(math.log(v) for v in sizes))
        object.__setattr__(self, "_log_pj", tuple(math.log(v) for v in pj))

    def sram_access_pj(self, size_bytes: float, word_bits: int, write: bool = False) -> float:
        """Energy of one access of ``word_bits`` bits to an SRAM of ``size_bytes`` bytes.

        The 64-bit energy is interpolated linearly in log(size)-log(energy) between the table's points
        (exact at the points); below the smallest or above the largest size it is extrapolated along the
        first or last segment (a power law in the size); a one-point table gives the same energy for every
        size. The result is scaled by ``word_bits / 64`` and, for a write, by ``write_factor``.

        Parameters
        ----------
        size_bytes : float
            Capacity of the array in bytes (> 0).
        word_bits : int
            Width of the access in bits (>= 0).
        write : bool
            A write instead of a read.

        Returns
        -------
        float
            Energy in pJ.
        """
        if not (finite_number(size_bytes) and size_bytes > 0):
            raise ValueError(f"SRAM size must be a finite number > 0, got {size_bytes!r}")
        if word_bits < 0:
            raise ValueError(f"SRAM word width must be >= 0, got {word_bits!r}")
        xs, ys = self._log_sizes, self._log_pj
        if len(xs) == 1:
            e64 = self.sram_pj_per_64bit[0]
        else:
            x = math.log(size_bytes)
            i = 1  # segment [i-1, i]; the end segments also extrapolate
            while i < len(xs) - 1 and x > xs[i]:
                i += 1
            if x == xs[i - 1] or x == xs[i]:
                e64 = self.sram_pj_per_64bit[i - 1 if x == xs[i - 1] else i]
            else:
                slope = (ys[i] - ys[i - 1]) / (xs[i] - xs[i - 1])
                log_e64 = ys[i - 1] + slope * (x - xs[i - 1])
                if log_e64 > math.log(MAX_PJ):  # a steep table extrapolated far: refused, not overflowed
                    raise ConfigError(
                        f"{self.origin}: sram: a {size_bytes:g}-byte array extrapolates to above "
                        f"{MAX_PJ:g} pJ per 64-bit access; add a point for that size to the table"
                    )
                e64 = math.exp(log_e64)
        return e64 * word_bits / 64.0 * (self.write_factor if write else 1.0)

    def to_dict(self) -> dict[str, Any]:
        """The table in the file format (``[table]``, ``[actions.*]``, ``[sram]``)."""
        return {
            "table": {"name": self.name},
            "actions": {k: {"pj": self.actions[k], "source": self.sources.get(k, "")} for k in ACTIONS},
            "sram": {
                "sizes_bytes": list(self.sram_sizes_bytes),
                "pj_per_64bit": list(self.sram_pj_per_64bit),
                "source": self.sources.get("sram", ""),
                "write_factor": self.write_factor,
                "write_factor_source": self.sources.get("write_factor", ""),
            },
        }


def _table_of(data: Any, key: str, src: str) -> dict:
    if not isinstance(data, dict):
        raise ConfigError(f"{src}: {key} = {data!r}: must be a table")
    return data


def _check_keys(data: dict, known: tuple[str, ...], where: str, src: str) -> None:
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"{src}: unknown key {unknown[0]!r} in {where} = {data[unknown[0]]!r} "
            f"(known keys: {', '.join(known)})"
        )


def _string(value: Any, key: str, src: str) -> str:
    if not isinstance(value, str):
        raise ConfigError(f"{src}: {key} = {value!r}: must be a string")
    return value


def _number(value: Any, key: str, src: str) -> float:
    if not finite_number(value) or value < 0:
        raise ConfigError(f"{src}: {key} = {value!r}: must be a finite number >= 0")
    return float(value)


def _number_list(value: Any, key: str, src: str) -> tuple[float, ...]:
    if not isinstance(value, list):
        raise ConfigError(f"{src}: {key} = {value!r}: must be a list of numbers")
    for v in value:
        if not finite_number(v) or v <= 0:
            raise ConfigError(f"{src}: {key} = {value!r}: {v!r} is not a finite number > 0")
    return tuple(float(v) for v in value)


def _parse(data: dict, src: str, base: EnergyTable | None) -> EnergyTable:
    """Build a table from parsed TOML; keys left out keep ``base``'s (``None``: every key is required)."""
    _check_keys(data, _TOP_KEYS, "the top level", src)
    meta = _table_of(data.get("table", {}), "table", src)
    _check_keys(meta, _TABLE_KEYS, "[table]", src)
    if "name" in meta:
        name = _string(meta["name"], "table.name", src)
    elif base is None:
        raise ConfigError(f"{src}: table.name missing")
    else:
        name = f"{base.name}, with the figures of {src}"

    actions = dict(base.actions) if base else {}
    sources = dict(base.sources) if base else {}
    given = _table_of(data.get("actions", {}), "actions", src)
    for act, entry in given.items():
        if act not in ACTIONS:
            raise ConfigError(
                f"{src}: unknown action {act!r} in [actions] = {entry!r} "
                f"(known actions: {', '.join(ACTIONS)})"
            )
        entry = _table_of(entry, f"actions.{act}", src)
        _check_keys(entry, _ACTION_KEYS, f"[actions.{act}]", src)
        if "pj" not in entry:
            raise ConfigError(f"{src}: actions.{act}.pj missing in [actions.{act}] = {entry!r}")
        actions[act] = _number(entry["pj"], f"actions.{act}.pj", src)
        sources[act] = _string(entry.get("source", f"{src} (no source given)"), f"actions.{act}.source", src)
    for act in ACTIONS:
        if act not in actions:
            raise ConfigError(f"{src}: [actions.{act}] missing (every action needs a pj figure)")

    sram = _table_of(data.get("sram", {}), "sram", src)
    _check_keys(sram, _SRAM_KEYS, "[sram]", src)
    has_sizes, has_pj = "sizes_bytes" in sram, "pj_per_64bit" in sram
    if has_sizes != has_pj or (base is None and not has_sizes):
        missing = "pj_per_64bit" if has_sizes else "sizes_bytes"
        raise ConfigError(f"{src}: sram.{missing} missing (sizes_bytes and pj_per_64bit go together)")
    if has_sizes:
        sizes = _number_list(sram["sizes_bytes"], "sram.sizes_bytes", src)
        pj = _number_list(sram["pj_per_64bit"], "sram.pj_per_64bit", src)
        sources["sram"] = _string(sram.get("source", f"{src} (no source given)"), "sram.source", src)
    else:
        assert base is not None
        sizes, pj = base.sram_sizes_bytes, base.sram_pj_per_64bit
        if "source" in sram:
            sources["sram"] = _string(sram["source"], "sram.source", src)
    if "write_factor" in sram:
        write_factor = _number(sram["write_factor"], "sram.write_factor", src)
        sources["write_factor"] = _string(
            sram.get("write_factor_source", f"{src} (no source given)"), "sram.write_factor_source", src
        )
    elif base is None:
        raise ConfigError(f"{src}: sram.write_factor missing")
    else:
        write_factor = base.write_factor
        if "write_factor_source" in sram:
            sources["write_factor"] = _string(sram["write_factor_source"], "sram.write_factor_source", src)
    return EnergyTable(
        name=name,
        actions=actions,
        sources=sources,
        sram_sizes_bytes=sizes,
        sram_pj_per_64bit=pj,
        write_factor=write_factor,
        origin=src,
    )


def _read_toml(text: str, src: str) -> dict:
    return parse_config_text(text, Path(src), "TOML")


def load_energy_table(path: str | Path | None = None) -> EnergyTable:
    """Read an energy table.

    Parameters
    ----------
    path : str or Path or None
        A TOML file in the format of ``accel/energy_45nm.toml`` (docs/energy.md). Every action or
        ``[sram]`` key it leaves out keeps the built-in figure and source. ``None``: the built-in 45 nm
        table (packaged with ``accel``).

    Returns
    -------
    EnergyTable

    Raises
    ------
    ConfigError
        The file cannot be read or is not valid TOML, has an unknown table or key, an action without
        ``pj``, a figure out of range (negative, non-finite, above :data:`MAX_PJ`), SRAM sizes not
        strictly increasing or SRAM lists of different lengths. The one-line message names the file, the
        key and the value.
    """
    builtin_src = f"accel/{DEFAULT_TABLE} (built-in)"
    default = _parse(
        _read_toml(resources.files("accel").joinpath(DEFAULT_TABLE).read_text(encoding="utf-8"), builtin_src),
        builtin_src,
        None,
    )
    if path is None:
        return default
    text = read_text_file(path, "energy table")
    return _parse(_read_toml(text, str(path)), str(path), default)


def design_energy(
    run: DesignRun, engine: EngineConfig, table: EnergyTable, gated: bool, outputs: int
) -> dict[str, float]:
    """Energy of one design on one layer, per image, by component.

    Parameters
    ----------
    run : sim.results.DesignRun
        The design's counters, cycles, off-chip bytes and buffer fills of the layer (per image).
    engine : EngineConfig
        The engine (lanes, widths and buffer depths set the buffer sizes and word widths).
    table : EnergyTable
        Energy per action.
    gated : bool
        The layer runs gated in this design (comparisons, threshold reads, phase-2 write-backs and the work
        queue count); ``False`` for the dense design and for ungated layers.
    outputs : int
        Output activations of the layer, ``c_out * h_out * w_out``.

    Returns
    -------
    dict[str, float]
        Energy in pJ for every name in :data:`COMPONENTS`, in that order:

        * ``mac``: ``mult_int8 * (base_macs + cond_macs)``;
        * ``accumulate``: ``add_acc * (base_macs + cond_macs)``;
        * ``compare``: ``compare * outputs`` (gated only);
        * ``input_buffer``: ``busy_pe_cycles`` reads of ``L * act_width`` bits plus ``input_fill_words``
          writes;
        * ``weight_buffer``: ``busy_pe_cycles`` reads of ``L * weight_width`` bits plus
          ``weight_fill_words`` writes;
        * ``output_buffer``: entries of ``acc_width + 1`` bits: writes ``outputs`` (+ ``gates_on``
          phase-2 write-backs and ``gates_on`` work-queue writes when gated, + half of
          ``psum_spill_words``, the partial sums read back), reads ``output_drain_words`` (+ ``gates_on``
          work-queue reads when gated, + half of ``psum_spill_words``, the partial sums spilled);
        * ``threshold_buffer``: one ``acc_width``-bit read per output (gated only);
        * ``dram``: ``dram_byte`` times the off-chip bytes (zero-compressed bytes when the run has them);
        * ``static``: ``static_cycle * run.cycles`` (cycles including DRAM stalls).

        Buffer sizes in bytes: input ``input_depth * L * act_width / 8``, weight
        ``weight_depth * L * weight_width / 8``, output ``output_depth * (acc_width + 1) / 8``, threshold
        ``threshold_depth * acc_width / 8``; the work queue is priced as output-buffer entries.

    Notes
    -----
    Input and weight reads are counted per PE-beat (every PE reads its own input and weight word; no
    broadcast between PEs sharing an operand), as the spec's multi-ported memories do
    (docs/microarchitecture.md, end). A chip that broadcasts weights or banks the input buffer reads less,
    so these two components are upper bounds.
    """
    c = run.counters
    macs = float(c["base_macs"]) + float(c["cond_macs"])
    beats = float(c["busy_pe_cycles"])
    gates_on = float(c["gates_on"]) if gated else 0.0
    n_out = float(outputs)
    lanes = engine.lanes
    out_bits = engine.acc_width + 1

    in_size = engine.input_depth * lanes * engine.act_width / 8
    w_size = engine.weight_depth * lanes * engine.weight_width / 8
    out_size = engine.output_depth * out_bits / 8
    thr_size = engine.threshold_depth * engine.acc_width / 8

    def rw(size: float, bits: int, reads: float, writes: float) -> float:
        read_pj = table.sram_access_pj(size, bits)
        return reads * read_pj + writes * table.sram_access_pj(size, bits, write=True)

    buf = run.buffer
    spill = float(buf.get("psum_spill_words", 0.0))
    out_writes = n_out + 2.0 * gates_on + spill / 2
    out_reads = float(buf.get("output_drain_words", 0.0)) + gates_on + spill / 2
    dram_bytes = run.traffic.total if run.traffic.compressed is None else run.traffic.total_compressed
    a = table.actions
    return {
        "mac": a["mult_int8"] * macs,
        "accumulate": a["add_acc"] * macs,
        "compare": a["compare"] * n_out if gated else 0.0,
        "input_buffer": rw(in_size, lanes * engine.act_width, beats, float(buf.get("input_fill_words", 0.0))),
        "weight_buffer": rw(
            w_size, lanes * engine.weight_width, beats, float(buf.get("weight_fill_words", 0.0))
        ),
        "output_buffer": rw(out_size, out_bits, out_reads, out_writes),
        "threshold_buffer": rw(thr_size, engine.acc_width, n_out, 0.0) if gated else 0.0,
        "dram": a["dram_byte"] * float(dram_bytes),
        "static": a["static_cycle"] * float(run.cycles),
    }


def layer_energy(layer: LayerRun, engine: EngineConfig, table: EnergyTable) -> dict[str, dict[str, float]]:
    """:func:`design_energy` for every design of a mapped layer (dense never gated; gated and pruned when
    the layer is), with ``outputs`` from the layer's ``shape_out``.

    Returns
    -------
    dict[str, dict[str, float]]
        Design name -> component -> pJ per image; empty for a layer the engine does not run.
    """
    if not layer.mapped:
        return {}
    c_out, h_out, w_out = layer.shape_out
    outputs = int(c_out) * int(h_out) * int(w_out)
    return {
        name: design_energy(run, engine, table, layer.gated and name != "dense", outputs)
        for name, run in layer.designs.items()
    }
