"""Reading configuration files (the engine's and the system's tables, TOML or JSON), checked as read."""

from __future__ import annotations

import json
import math
import stat
import tomllib
from pathlib import Path

from spec.config import ConfigError, EngineConfig

__all__ = [
    "CONFIG_TABLES",
    "config_tables",
    "finite_number",
    "load_config",
    "parse_config_text",
    "read_config_file",
    "read_text_file",
]


# The tables of a system configuration file (accel/system.py); ``accel run`` and ``accel rtl`` read only
# ``[engine]`` from such a file.
CONFIG_TABLES = ("dram", "energy", "engine", "report")


# Largest configuration or energy-table file read (they are a few KB): a bigger file is not one.
MAX_CONFIG_BYTES = 1 << 20


def finite_number(value) -> bool:
    """An int or float (not a bool) that is finite; a huge int, which ``math.isfinite`` cannot convert,
    is not."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    try:
        return math.isfinite(value)
    except OverflowError:
        return False


def read_text_file(path: str | Path, what: str = "configuration") -> str:
    """The UTF-8 text of a small input file (a configuration, an energy table), refusing before reading a
    path that is empty, not a regular file (a folder, a FIFO that would block, a device) or larger than
    :data:`MAX_CONFIG_BYTES`; every error a :class:`ConfigError` naming the file."""
    text_path = str(path)
    if not text_path.strip() or "\0" in text_path:
        raise ConfigError(f"{what} file {text_path!r}: not a file name")
    path = Path(path)
    try:
        info = path.stat()
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path}: cannot read {what} (not a regular file)")
        if info.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{path}: cannot read {what} ({info.st_size} bytes; at most {MAX_CONFIG_BYTES})"
            )
        raw = path.read_bytes()[: MAX_CONFIG_BYTES + 1]
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read {what} ({exc.strerror or exc})") from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        byte = raw[exc.start]
        raise ConfigError(
            f"{path}: not valid {_kind(path)}: not UTF-8 text (byte 0x{byte:02x} at offset {exc.start})"
        ) from None


def _kind(path: Path) -> str:
    return "JSON" if path.suffix.lower() == ".json" else "TOML"


def _no_duplicates(pairs: list[tuple[str, object]]) -> dict:
    data = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"key {key!r} given twice")
        data[key] = value
    return data


def parse_config_text(text: str, path: Path, kind: str) -> dict:
    """Parse TOML or JSON text; every failure (syntax, duplicate keys, nesting too deep, numbers too long)
    a :class:`ConfigError` naming the file."""
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicates) if kind == "JSON" else tomllib.loads(text)
    except RecursionError:
        raise ConfigError(f"{path}: not valid {kind}: nested too deeply") from None
    except ValueError as exc:  # JSONDecodeError, TOMLDecodeError, duplicate keys, over-long integers
        raise ConfigError(f"{path}: not valid {kind}: {str(exc).splitlines()[0][:300]}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a table of parameters")
    return data


def read_config_file(path: str | Path) -> dict:
    """The top-level table of a TOML (or, for ``.json`` in any case, JSON) configuration file; errors name
    the file."""
    text = read_text_file(path)
    return parse_config_text(text, Path(path), _kind(Path(path)))


def config_tables(data: dict, source: str) -> dict[str, dict]:
    """Split a configuration file into its tables (:data:`CONFIG_TABLES`).

    A file without any table is the flat format: every key is an engine field. A file with tables takes
    no other top-level key, so a misspelled table (``[engin]``) is named as such.
    """
    if not any(isinstance(value, dict) for value in data.values()):
        return {"engine": data}
    for name, value in data.items():
        if name not in CONFIG_TABLES:
            what = "table" if isinstance(value, dict) else "top-level key"
            raise ConfigError(
                f"{source}: unknown {what} {name!r} (known tables: {', '.join(CONFIG_TABLES)}; "
                "a file with tables has no top-level keys)"
            )
        if not isinstance(value, dict):
            raise ConfigError(f"{source}: [{name}] must be a table, got {value!r}")
    return data


def load_config(path: str | Path | None) -> EngineConfig:
    """Read an engine configuration from a TOML or JSON file: its ``[engine]`` table, or the top level of a
    file without tables."""
    if path is None:
        return EngineConfig()
    tables = config_tables(read_config_file(path), str(path))
    return EngineConfig.from_dict(tables.get("engine", {}), source=str(path))
