"""Verilog generation of the engine: the top-level Verilog and the parameters it was built with."""

from __future__ import annotations

import json
import re
from pathlib import Path

from amaranth._toolchain.yosys import find_yosys
from amaranth.back import rtlil
from amaranth.hdl import Elaboratable

from outfiles.folder import write_file_atomic
from rtl.engine import GatedConvEngine
from rtl.rtlil_tidy import tidy_rtlil
from spec.config import ConfigError, EngineConfig

__all__ = [
    "MAX_RTL_DEPTH",
    "MAX_VALUE_BITS",
    "RTL_FILES",
    "TOP_NAME",
    "check_buildable",
    "component_verilog",
    "generate_verilog",
    "processed_rtlil",
]

TOP_NAME = "gated_conv_engine"
RTL_FILES = (f"{TOP_NAME}.v", f"{TOP_NAME}.json")  # what `accel rtl` writes into its folder

# Amaranth's netlist numbers the bits of one value with 16 bits: no value may be wider than this.
MAX_VALUE_BITS = (1 << 16) - 1
# Deepest buffer the generator builds. Elaboration time and memory grow with the buffers' depth, hardly with
# P: with every buffer 65536 words deep (the bound) it took 73 s and 1.0 GB at P = 8 and 73 s and 1.2 GB at
# P = 64 here; 16 s and 0.33 GB at 16384 words (P = 8).
MAX_RTL_DEPTH = 1 << 16


def check_buildable(config: EngineConfig, source: str = "configuration") -> None:
    """Refuse, before elaborating, a configuration the cycle model takes but the generator cannot build.

    Raises
    ------
    ConfigError
        The operand bus of the MAC array (P × L × operand width bits, one value) is wider than Amaranth
        can represent, or a buffer is deeper than :data:`MAX_RTL_DEPTH`.
    """
    width = max(config.act_width, config.weight_width)
    bus = config.pes * config.lanes * width
    if bus > MAX_VALUE_BITS:
        raise ConfigError(
            f"{source}: pes × lanes × max(act_width, weight_width) = {config.pes} × {config.lanes} × {width} "
            f"= {bus} bits: the MAC array's operand bus is one value, and Amaranth builds values of at most "
            f"{MAX_VALUE_BITS} bits (the cycle model takes this configuration; accel rtl does not)"
        )
    for name in ("input_depth", "weight_depth", "output_depth", "threshold_depth"):
        depth = getattr(config, name)
        if depth > MAX_RTL_DEPTH:
            raise ConfigError(
                f"{source}: {name} = {depth}: accel rtl builds buffers of at most {MAX_RTL_DEPTH} words "
                "(elaboration time and memory grow with the depth: over a minute and 1 GB at that bound; "
                "the cycle model takes deeper buffers)"
            )


# A register's power-up value in Amaranth's RTLIL: "attribute \\init 4'0000" on the line before its wire.
_INIT_ATTRIBUTE = re.compile(r"^[ \t]*attribute \\init [^\n]*\n", re.MULTILINE)


def verilog_text(config: EngineConfig, gating: bool = True) -> str:
    """Verilog of the engine for ``config`` (``gating`` false: the dense baseline); identical parameters
    give identical text (see :func:`component_verilog`)."""
    check_buildable(config)
    return component_verilog(GatedConvEngine(config, gating=gating), TOP_NAME)


def processed_rtlil(component: Elaboratable, name: str, ports=None) -> str:
    """The RTLIL of ``component`` after yosys's ``proc -nomux -norom`` (registers made cells, the case
    statements kept as processes), without Amaranth's internal attributes or power-up values. ``ports``:
    the top level's signals, for an Elaboratable that is not a ``wiring.Component``."""
    text = _INIT_ATTRIBUTE.sub("", rtlil.convert(component, name=name, ports=ports, emit_src=False))
    # amaranth.back.verilog.convert's yosys script up to write_verilog (amaranth is pinned below 0.6).
    attrs = " ".join(
        f"-remove {a}" for a in ("generator", "top", "src", "amaranth.hierarchy", "amaranth.decoding")
    )
    script = [f"read_rtlil <<rtlil\n{text}\nrtlil", "proc -nomux -norom", f"attrmap {attrs}",
              f"attrmap -modattr {attrs}", "write_rtlil"]  # fmt: skip
    return _yosys(script)


def component_verilog(component: Elaboratable, name: str, tidy: bool = True, ports=None) -> str:
    """Verilog of ``component`` with top module ``name``: Amaranth's RTLIL through yosys as
    ``amaranth.back.verilog.convert`` does it, tidied (rtl/rtlil_tidy.py; ``tidy`` false: as Amaranth
    writes it) between the process pass and ``write_verilog``.

    Registers are declared without power-up values (``reg [3:0] x;``, not ``reg [3:0] x = 4'h0;``): an
    ASIC flip-flop has none, so the control registers take theirs from ``rst`` (docs/microarchitecture.md
    section 4, "Reset") and the datapath registers are written before they are read. A simulation of the
    Verilog starts them unknown (X on Icarus, random on Verilator with ``--x-initial unique``), so a read
    of one before its first write shows; the Amaranth simulator keeps Amaranth's initial values.
    """
    text = processed_rtlil(component, name, ports)
    if tidy:
        text = tidy_rtlil(text)
    return _yosys([f"read_rtlil <<rtlil\n{text}\nrtlil", "memory_collect", "write_verilog -norename"])


def _yosys(script: list[str]) -> str:
    yosys = find_yosys(lambda version: version >= (0, 40))
    # yosys warns that it cannot write every process as Verilog; Amaranth emits only processes it can.
    return yosys.run(["-q", "-"], "\n".join(script), ignore_warnings=True)


def generate_verilog(config: EngineConfig, out_dir: str | Path, gating: bool = True) -> Path:
    """Write ``gated_conv_engine.v`` and ``gated_conv_engine.json`` into ``out_dir``; return the .v path.
    ``gating`` false builds the dense baseline (rtl.engine.GatedConvEngine); the JSON says which.

    Each file is written beside its target and renamed into place (an interrupted run never leaves a
    half-written file), with the mode a plain ``open`` gives (0666 less the umask).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = verilog_text(config, gating)
    vpath = out / f"{TOP_NAME}.v"
    params = {
        "top": TOP_NAME,
        "parameters": config.to_dict(),
        "gating": gating,
        "data_width": config.data_width,
        "addr_width": config.addr_width,
    }
    write_file_atomic(vpath, text)
    write_file_atomic(out / f"{TOP_NAME}.json", json.dumps(params, indent=2, sort_keys=True) + "\n")
    return vpath
