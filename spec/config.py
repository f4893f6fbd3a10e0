"""Elaboration parameters of the gated convolution engine (docs/microarchitecture.md, section 2)."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, fields

from spec.errors import UserError

__all__ = ["FIELD_LIMITS", "ConfigError", "EngineConfig", "table_to_dataclass"]


class ConfigError(UserError):
    """A configuration or tile that the engine cannot take; the message names the field and value."""


# Inclusive range of every field (a trace's layers are checked against kernel, stride, padding, groups).
FIELD_LIMITS = {
    "pes": (1, 64),
    "lanes": (1, 64),
    "act_width": (2, 16),
    "weight_width": (2, 16),
    "acc_width": (8, 64),
    "kernel": (1, 11),
    "stride": (1, 8),
    "padding": (0, 10),
    "groups": (1, 64),
    "input_depth": (1, 1 << 20),
    "weight_depth": (1, 1 << 20),
    "output_depth": (1, 1 << 20),
    "threshold_depth": (1, 1 << 16),
    "counter_width": (16, 64),
    "window": (1, 256),
}


@dataclass(frozen=True)
class EngineConfig:
    """Elaboration parameters shared by the RTL and the cycle model.

    Parameters
    ----------
    pes : int
        Processing elements P.
    lanes : int
        MAC lanes per PE L (input channels per beat).
    act_width, weight_width : int
        Signed operand widths.
    acc_width : int
        Accumulator, threshold and output width (signed).
    kernel, stride, padding : int
        Convolution geometry. For a build (the Verilog, :meth:`check_layer`) the largest kernel, stride and
        padding its run-time registers take; for a layer's run (:meth:`for_layer`, the cycle model) the
        layer's own. ``padding`` bounds a tile's ``pad_top``/``pad_left``.
    groups : int
        Channel groups G (G = 1: a fixed base fraction set per tile); for a build the largest G.
    input_depth, weight_depth, output_depth, threshold_depth : int
        Buffer depths in words / entries.
    counter_width : int
        Performance counter width.
    window : int
        Places of the phase-2 selection window W (docs/chip-design.md, section 2): each phase-2 round takes
        the oldest waiting activation and, oldest first, the ones that share no input or weight bank with
        its members so far.
    """

    pes: int = 8
    lanes: int = 8
    act_width: int = 8
    weight_width: int = 8
    acc_width: int = 32
    kernel: int = 7
    stride: int = 2
    padding: int = 3
    groups: int = 4
    input_depth: int = 4096
    weight_depth: int = 4096
    output_depth: int = 4096
    threshold_depth: int = 256
    counter_width: int = 48
    window: int = 24

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise ConfigError(f"config field {f.name!r}: expected an integer, got {value!r}")
            lo, hi = FIELD_LIMITS[f.name]
            if not lo <= value <= hi:
                raise ConfigError(f"config field {f.name!r} = {value}: must lie in [{lo}, {hi}]")
        if self.padding >= self.kernel:
            raise ConfigError(
                f"config field 'padding' = {self.padding}: must be smaller than kernel = {self.kernel}"
            )
        if self.acc_width < self.act_width + self.weight_width:
            raise ConfigError(
                f"config field 'acc_width' = {self.acc_width}: must hold one product "
                f"(act_width + weight_width = {self.act_width + self.weight_width})"
            )

    # Derived widths of the hardware interface (section 4 of the spec).
    @property
    def data_width(self) -> int:
        """Bits of a load-stream word and of an unload response: an input or weight word, an output entry,
        a counter, or a whole work-queue entry (written by the host for a phase-2-only run)."""
        return max(
            self.lanes * self.act_width,
            self.lanes * self.weight_width,
            self.acc_width + 1,
            self.counter_width,
            self.queue_entry_width,
        )

    @property
    def resp_width(self) -> int:
        """Bits of an unload response: a data word, or a whole row of P output (or queue-result) entries of
        ``acc_width + 1`` bits (the output buffer and the work queue unload a row of their P banks per
        response)."""
        return max(self.data_width, self.pes * (self.acc_width + 1))

    @property
    def queue_entry_width(self) -> int:
        """Bits of one work-queue entry, ``spec.protocol.queue_layout(config).size`` (written out here, where
        the layouts cannot be imported; a test holds the two equal): channel, gate group, input word, the
        tap box (two fields up to the padding, two up to the kernel) and the partial sum."""

        def bits(n: int) -> int:
            return max(1, (n - 1).bit_length())

        box = 2 * self.padding.bit_length() + 2 * self.kernel.bit_length()
        return bits(self.threshold_depth) + bits(self.groups) + bits(self.input_depth) + box + self.acc_width

    @property
    def addr_width(self) -> int:
        # At least 5 bits: the 29 configuration registers (spec.protocol.ConfigRegister) share the field; and
        # the banked addresses of the output buffer, the work queue and the thresholds (row << bank_bits |
        # bank).
        depth = max(
            self.input_depth,
            self.weight_depth,
            self.output_depth,
            self.threshold_depth,
            32,
            self.bank_rows << self.bank_bits,
            self.threshold_rows << self.bank_bits,
        )
        # ... plus the top bit: the buffer half (spec.protocol.ConfigRegister.HALF) a write or a read targets.
        return (depth - 1).bit_length() + 1

    @property
    def half_bit(self) -> int:
        """The bit of a load or unload address that selects the buffer half (the address field's top bit)."""
        return self.addr_width - 1

    @property
    def bank_bits(self) -> int:
        """Bits of the bank index in a banked address ``row << bank_bits | bank`` (P banks)."""
        return (self.pes - 1).bit_length()

    @property
    def bank_rows(self) -> int:
        """Rows of each of the P banks of the output buffer and of the work queue: ceil(output_depth / P)."""
        return -(-self.output_depth // self.pes)

    @property
    def threshold_rows(self) -> int:
        """Rows of each of the P banks of the threshold buffer: ceil(threshold_depth / P)."""
        return -(-self.threshold_depth // self.pes)

    # The fields a layer sets at run time (configuration registers); a build holds their maxima.
    LAYER_FIELDS = ("kernel", "stride", "padding", "groups")

    def for_layer(self, kernel: int, stride: int, padding: int, groups: int) -> EngineConfig:
        """The configuration of one layer run on this build: its kernel, stride, padding and groups, every
        other field the build's; refused (:class:`ConfigError`, naming the field) beyond the maxima."""
        layer = dataclasses.replace(self, kernel=kernel, stride=stride, padding=padding, groups=groups)
        self.check_layer(layer)
        return layer

    def check_layer(self, layer: EngineConfig) -> None:
        """Refuse a layer configuration this build cannot run (:class:`ConfigError` naming the field).

        The build's ``kernel``, ``stride``, ``padding`` and ``groups`` are maxima (G = 1, the fixed base
        fraction, runs on every build); every other field must be equal: it shapes the hardware.
        """
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(layer, f.name)
            if f.name in self.LAYER_FIELDS:
                if theirs > mine and not (f.name == "groups" and theirs == 1):
                    raise ConfigError(
                        f"layer {f.name} = {theirs}: above the build's {f.name} = {mine} (config field "
                        f"{f.name!r} is the largest the engine runs)"
                    )
            elif mine != theirs:
                raise ConfigError(f"layer config field {f.name!r} = {theirs}: the build has {mine}")

    def to_dict(self) -> dict[str, int]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_dict(cls, data: dict, source: str = "configuration") -> EngineConfig:
        return table_to_dataclass(cls, data, source)


def table_to_dataclass(cls, data: dict, source: str, table: str | None = None):
    """``cls(**data)`` for a table read from ``source``, whose dataclass checks its fields by raising
    :class:`ConfigError`; an unknown key or a bad value is named with the file (and ``[table]``)."""
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f" in [{table}]" if table else ""
        raise ConfigError(
            f"{source}: unknown key {unknown[0]!r}{where} (known keys: {', '.join(sorted(known))})"
        )
    try:
        return cls(**data)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
