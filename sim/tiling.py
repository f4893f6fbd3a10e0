"""How a convolution layer is cut into engine tiles that fit the buffers (docs/network.md, "Tiling").

The plan depends only on the layer's geometry and the engine configuration, never on data: the network
runner, the synthetic tile cutter (``sim.synthetic.cut_tiles``) and the off-chip traffic count share it.

Rules:

* every tile holds **all input channels** of the layer (the channel segmentation is then the layer's, and
  no partial sum ever leaves the engine between tiles);
* output channels are cut into blocks of ``m`` channels **per group**: a tile takes the same block
  ``[b*m, (b+1)*m)`` of every group's ``c_out / G`` channels and lists them group by group, so tile channel
  ``j`` belongs to tile group ``j // m`` = its layer group, and each tile has whole groups (``c_out`` of the
  tile = ``G*m``). With G = 1 the blocks are plain runs of channels;
* output rows and columns are cut into blocks; a tile holds the input rows/columns its outputs read (the
  halo), its ``pad_top``/``pad_left`` is the part of the layer's padding that falls before them, and reads
  beyond its last row/column are the layer's zero padding;
* each dimension in turn (columns, then channels, then rows) takes the largest block that fits the
  buffers, then splits evenly into as many blocks as that block size implies (sizes differ by at most
  one), and the next dimension is fitted with the largest of those blocks; input halos count only real
  rows and columns, not padding (docs/network.md, "Tiling", has the formulas).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass

from spec.config import ConfigError, EngineConfig
from spec.tile import TileGeometry

__all__ = ["LayerPlan", "TilePlan", "plan_layer"]


@dataclass(frozen=True)
class TilePlan:
    """One tile of a layer: which outputs it computes and which inputs it reads.

    ``channels[j]`` is the layer output channel of tile channel ``j``; outputs cover rows ``[r0, r1)`` and
    columns ``[x0_out, x1_out)``; the tile reads input rows ``[y0, y1)`` and columns ``[x0, x1)``.
    ``chan_block``, ``row_block`` and ``col_block`` number the blocks the tile belongs to.
    """

    geometry: TileGeometry
    channels: tuple[int, ...]
    r0: int
    r1: int
    x0_out: int
    x1_out: int
    y0: int
    y1: int
    x0: int
    x1: int
    chan_block: int
    row_block: int
    col_block: int


@dataclass(frozen=True)
class LayerPlan:
    """All tiles of a layer, channel block outermost, then row block, then column block."""

    tiles: tuple[TilePlan, ...]
    n_chan_blocks: int
    n_row_blocks: int
    n_col_blocks: int

    def __len__(self) -> int:
        return len(self.tiles)

    def __iter__(self):
        return iter(self.tiles)

    @property
    def block_channels(self) -> list[tuple[int, ...]]:
        """The layer output channels of each channel block (every tile of a block has the same)."""
        return [t.channels for t in self.tiles if t.row_block == 0 and t.col_block == 0]


def _blocks(total: int, largest: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into the fewest blocks of at most ``largest``, as even as possible."""
    n = math.ceil(total / largest)
    size, extra = divmod(total, n)
    out, start = [], 0
    for i in range(n):
        length = size + (1 if i < extra else 0)
        out.append((start, start + length))
        start += length
    return out


def _input_span(o0: int, o1: int, size: int, kernel: int, stride: int, padding: int) -> tuple[int, int, int]:
    """Input rows (or columns) ``[i0, i1)`` that outputs ``[o0, o1)`` read, and the tile's padding before."""
    lo = o0 * stride - padding
    hi = (o1 - 1) * stride - padding + kernel  # exclusive
    i0, i1 = max(lo, 0), min(hi, size)
    return i0, i1, i0 - lo


def _up(n: int, s: int) -> int:
    """``n`` rounded up to a multiple of the stride: the input plane's rows or columns (the buffer holds
    them deinterleaved by S, spec section 3)."""
    return -(-n // s) * s


def _widest_block(w_out: int, w: int, rows: int, k: int, s: int, mult: int, config: EngineConfig) -> int:
    """The widest block of output columns (0: none) whose input columns fit the input buffer beside
    ``rows`` chunk-rows (``rows * _up(min(w, (w_blk - 1)*s + k), s) <= input_depth``) and whose outputs
    fit the output buffer (``mult * w_blk <= output_depth``).

    Both needs grow with the width, so the widths that fit are ``1..w_blk``: computed directly, not by
    trying every width from ``w_out`` down (a layer millions of columns wide would take minutes).
    """
    cap = min(w_out, config.output_depth // mult)
    budget = config.input_depth // rows // s * s  # input columns a block may read (a multiple of S)
    if cap < 1 or _up(min(w, (cap - 1) * s + k), s) <= budget:
        return max(cap, 0)
    # w > budget here (else every width fits): the block's (w_blk - 1)*s + k columns must fit the budget.
    return max(0, min(cap, (budget - k) // s + 1)) if budget >= k else 0


@functools.lru_cache(maxsize=1024)
def plan_layer(
    config: EngineConfig,
    c_in: int,
    c_out: int,
    h: int,
    w: int,
    h_out: int,
    w_out: int,
    base_channels: int = 0,
    padding: int | None = None,
) -> LayerPlan:
    """Cut a layer of the configuration's kernel, stride and groups into tiles.

    ``padding`` is the layer's (default: the configuration's; it may not exceed it). The layer's
    ``(h_out, w_out)`` must be what kernel, stride and padding give for ``(h, w)``. Raises
    :class:`ConfigError` when not even one output activation fits the buffers. Plans are remembered per
    argument list (they are immutable and depend on nothing else).
    """
    k, s, g = config.kernel, config.stride, config.groups
    p = config.padding if padding is None else padding
    probe = TileGeometry(c_in, g if g > 1 else 1, 1, 1, 1, 1, base_channels=base_channels)
    n_chunks = probe.segments(config).n_chunks
    per_group = c_out // g if g > 1 else c_out
    mult = g if g > 1 else 1

    def rows_in(n_out: int, size: int) -> int:
        return min(size, (n_out - 1) * s + k)

    # Columns: a full output row if its input rows fit, else the widest block that does.
    w_blk = _widest_block(w_out, w, n_chunks * _up(rows_in(1, h), s), k, s, mult, config)
    if w_blk >= 1:
        w_blk = -(-w_out // -(-w_out // w_blk))  # the largest of _blocks(w_out, w_blk), evened out
    m = min(
        per_group,
        config.weight_depth // (mult * n_chunks * k * k),
        config.threshold_depth // mult,
        config.output_depth // (mult * max(w_blk, 1)),
    )
    # Channel-minor weights: segments start on a bank boundary (TileGeometry.weight_segment).
    while m >= 1 and dataclasses.replace(probe, c_out=mult * m).weight_words(config) > config.weight_depth:
        m -= 1
    if w_blk < 1 or m < 1:
        raise ConfigError(
            f"layer with c_in = {c_in}, c_out = {c_out}, kernel = {k}, w = {w}: not even one output "
            f"activation per tile fits the buffers (input_depth = {config.input_depth}, weight_depth = "
            f"{config.weight_depth}, output_depth = {config.output_depth}, threshold_depth = "
            f"{config.threshold_depth})"
        )
    col_blocks = _blocks(w_out, w_blk)
    chan_blocks = _blocks(per_group, m)
    m = max(c1 - c0 for c0, c1 in chan_blocks)  # evened out: may leave room for more rows
    h_blk = 1
    while (
        h_blk < h_out
        and n_chunks * _up(rows_in(h_blk + 1, h), s) * _up(rows_in(w_blk, w), s) <= config.input_depth
        and mult * m * (h_blk + 1) * w_blk <= config.output_depth
    ):
        h_blk += 1
    row_blocks = _blocks(h_out, h_blk)

    tiles = []
    for cb, (c0, c1) in enumerate(chan_blocks):
        if g > 1:
            channels = tuple(grp * per_group + c for grp in range(g) for c in range(c0, c1))
        else:
            channels = tuple(range(c0, c1))
        for rb, (r0, r1) in enumerate(row_blocks):
            y0, y1, pad_top = _input_span(r0, r1, h, k, s, p)
            for xb, (x0_out, x1_out) in enumerate(col_blocks):
                x0, x1, pad_left = _input_span(x0_out, x1_out, w, k, s, p)
                geometry = TileGeometry(
                    c_in=c_in,
                    c_out=len(channels),
                    h_in=y1 - y0,
                    w_in=x1 - x0,
                    h_out=r1 - r0,
                    w_out=x1_out - x0_out,
                    pad_top=pad_top,
                    pad_left=pad_left,
                    base_channels=base_channels if g == 1 else 0,
                )
                geometry.check(config)
                geometry.check_counters(config)  # its counts are read as figures
                tiles.append(TilePlan(geometry, channels, r0, r1, x0_out, x1_out, y0, y1, x0, x1, cb, rb, xb))
    return LayerPlan(tuple(tiles), len(chan_blocks), len(row_blocks), len(col_blocks))
