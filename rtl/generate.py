"""Verilog generation of the engine: the top-level Verilog and the parameters it was built with."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from amaranth.back import verilog

from accel.config import EngineConfig
from rtl.engine import GatedConvEngine

__all__ = ["TOP_NAME", "generate_verilog", "verilog_text"]

TOP_NAME = "gated_conv_engine"


def verilog_text(config: EngineConfig) -> str:
    """Verilog of the engine for ``config``; identical parameters give identical text."""
    engine = GatedConvEngine(config)
    return verilog.convert(engine, name=TOP_NAME, emit_src=False, strip_internal_attrs=True)


def _write_atomic(path: Path, text: str) -> None:
    # Write beside the target and rename, so an interrupted run never leaves a half-written file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def generate_verilog(config: EngineConfig, out_dir: str | Path) -> Path:
    """Write ``gated_conv_engine.v`` and ``gated_conv_engine.json`` into ``out_dir``; return the .v path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    text = verilog_text(config)
    vpath = out / f"{TOP_NAME}.v"
    params = {
        "top": TOP_NAME,
        "parameters": config.to_dict(),
        "data_width": config.data_width,
        "addr_width": config.addr_width,
    }
    _write_atomic(vpath, text)
    _write_atomic(out / f"{TOP_NAME}.json", json.dumps(params, indent=2, sort_keys=True) + "\n")
    return vpath
