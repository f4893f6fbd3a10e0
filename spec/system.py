"""The whole accelerator around the engine: DRAM, clock and the report's options (docs/network.md).

A system configuration file is TOML (or JSON) with up to four tables; every one is optional and every
field left out keeps its default:

* ``[engine]``: :class:`spec.config_file.EngineConfig` (P, L, widths, buffer depths); the kernel, stride,
  padding and groups given there are the largest the build runs, each layer runs with its own (section
  "Layers" of docs/network.md);
* ``[dram]``: :class:`DramConfig`;
* ``[report]``: :class:`ReportOptions`;
* ``[energy]``: ``table = "FILE"``, an energy table replacing the built-in 45 nm one (docs/energy.md).

A file whose top level holds engine fields directly (the format ``accel run`` reads) is accepted too.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from spec.config import ConfigError, EngineConfig, table_to_dataclass
from spec.config_file import config_tables, finite_number, read_config_file

__all__ = ["DramConfig", "ReportOptions", "SystemConfig", "load_system_config"]


def _check_fields(obj, limits: dict[str, tuple[float, float]], source: str) -> None:
    for f in fields(obj):
        value = getattr(obj, f.name)
        if f.name not in limits:
            continue
        lo, hi = limits[f.name]
        if not finite_number(value):
            raise ConfigError(f"{source} field {f.name!r}: expected a number, got {value!r}")
        if not lo <= value <= hi:
            raise ConfigError(f"{source} field {f.name!r} = {value}: must lie in [{lo}, {hi}]")


@dataclass(frozen=True)
class DramConfig:
    """Off-chip memory seen by the accelerator.

    Parameters
    ----------
    bytes_per_cycle : float
        Sustained bandwidth in bytes per engine clock cycle (shared by loads and stores).
    latency_cycles : int
        Cycles from a transfer's request to its first byte; paid once per transfer (one per operand of a
        tile).
    """

    bytes_per_cycle: float = 16.0
    latency_cycles: int = 100

    def __post_init__(self) -> None:
        _check_fields(self, {"bytes_per_cycle": (1e-3, 1e6), "latency_cycles": (0, 1e7)}, "dram")
        if not isinstance(self.latency_cycles, int):
            raise ConfigError(
                f"dram field 'latency_cycles': expected an integer, got {self.latency_cycles!r}"
            )

    def transfer_cycles(self, nbytes: float) -> float:
        """Cycles a transfer of ``nbytes`` occupies the DRAM channel (0 for nothing to move)."""
        return 0.0 if nbytes <= 0 else self.latency_cycles + nbytes / self.bytes_per_cycle


@dataclass(frozen=True)
class ReportOptions:
    """What ``accel report`` computes besides the dense and gated designs.

    Parameters
    ----------
    prune_threshold : float
        Dynamic output-channel pruning: a channel whose share of gated-on activations (per image) is at or
        below this skips its conditional path and the fetch of its conditional-path weights.
    zero_compression : bool
        Also count off-chip activation bytes with zero compression (a bit mask plus the non-zero bytes).
    clock_mhz : float
        Engine clock, used only to print times.
    """

    prune_threshold: float = 0.1
    zero_compression: bool = False
    clock_mhz: float = 500.0

    def __post_init__(self) -> None:
        _check_fields(self, {"prune_threshold": (0.0, 1.0), "clock_mhz": (1e-3, 1e6)}, "report")
        if not isinstance(self.zero_compression, bool):
            raise ConfigError(
                f"report field 'zero_compression': expected true or false, got {self.zero_compression!r}"
            )


@dataclass(frozen=True)
class SystemConfig:
    """Engine, DRAM, report options and the energy table's path (None: the built-in 45 nm table)."""

    engine: EngineConfig = field(default_factory=EngineConfig)
    dram: DramConfig = field(default_factory=DramConfig)
    report: ReportOptions = field(default_factory=ReportOptions)
    energy_table: str | None = None

    def to_dict(self) -> dict:
        return {
            "engine": self.engine.to_dict(),
            "dram": asdict(self.dram),
            "report": asdict(self.report),
            "energy": {"table": self.energy_table},
        }


def _section(cls, data, name: str, source: str):
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: [{name}] must be a table, got {data!r}")
    return table_to_dataclass(cls, data, source, table=name)


def load_system_config(path: str | Path | None) -> SystemConfig:
    """Read a system configuration (TOML or JSON); ``None`` gives the defaults."""
    if path is None:
        return SystemConfig()
    path = Path(path)
    source = str(path)
    data = config_tables(read_config_file(path), source)
    engine = data.get("engine", {})
    energy = data.get("energy", {})
    if set(energy) - {"table"}:
        raise ConfigError(f"{source}: [energy] takes one key, 'table' (a file name), got {energy!r}")
    table = energy.get("table")
    if table is not None:
        if not isinstance(table, str) or not table.strip() or "\0" in table:
            raise ConfigError(f"{source}: [energy] field 'table': expected a file name, got {table!r}")
        table = str(path.parent / table) if not Path(table).is_absolute() else table
    return SystemConfig(
        engine=EngineConfig.from_dict(engine, source=source),
        dram=_section(DramConfig, data.get("dram", {}), "dram", source),
        report=_section(ReportOptions, data.get("report", {}), "report", source),
        energy_table=table,
    )
