"""The host-side engine driver: typed verbs over the engine's streams, written once for every simulator.

:class:`EngineDriver` (in the spirit of Glasgow's ``SPIControllerInterface``) turns ``load_tile(tile)``,
``run()``, ``read_outputs(geometry)`` and ``read_counters()`` into stream transfers, packed with
:mod:`verification.layout`. It talks to the design through an :class:`EngineTransport`: three streams
(``load``, ``req``, ``resp``; each with ``put``/``get`` and ``last_wait``, see :mod:`verification.streams`),
``start()`` (``start`` high for one cycle) and ``wait_done(timeout_cycles)`` (until the run is over;
whatever it returns is what ``run()`` returns). Transports: :class:`~verification.amaranth_transport.
AmaranthTransport` (Amaranth's simulator) and :class:`~verification.cocotb_transport.CocotbTransport` (the
generated Verilog under cocotb).

Handshakes that wait although the spec says the engine takes them at once (ready while idle, a response the
cycle after its request) are reported as text through the ``on_protocol`` callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from spec.config import EngineConfig
from spec.protocol import COUNTER_NAMES, LoadTarget, RunMode, UnloadTarget
from spec.tile import QueueLoad, Tile, TileGeometry
from verification.layout import (
    LoadWrites,
    banked_address,
    decode_counter,
    decode_output,
    load_writes,
    pack_payloads,
    pack_request,
    queue_writes,
)

__all__ = ["LOAD_MODES", "EngineDriver", "EngineTransport", "Outputs", "decode_outputs"]

# What load_tile writes: every write of the tile, only its configuration registers, or nothing (the
# buffers still hold the previous tile's data and the run simply starts again).
LOAD_MODES = ("all", "registers", "none")


class Stream(Protocol):
    last_wait: int

    async def put(self, payload: int) -> int: ...

    async def get(self, care: int | None = None) -> int: ...


class EngineTransport(Protocol):
    load: Stream
    req: Stream
    resp: Stream

    async def start(self) -> None: ...

    async def wait_done(self, timeout_cycles: int | None) -> Any: ...


@dataclass
class Outputs:
    """The output-buffer entries of a tile: raw words (by ``lin``) and decoded ``[c_out, h_out, w_out]``."""

    words: list[int]
    y: np.ndarray  # int64
    gate: np.ndarray  # bool


def decode_outputs(config: EngineConfig, geometry: TileGeometry, words: Sequence[int]) -> Outputs:
    shape = (geometry.c_out, geometry.h_out, geometry.w_out)
    decoded = [decode_output(config, w) for w in words]
    y = np.array([d[0] for d in decoded], dtype=np.int64).reshape(shape)
    gate = np.array([d[1] for d in decoded], dtype=bool).reshape(shape)
    return Outputs(list(words), y, gate)


class EngineDriver:
    """Load, run and unload the engine through ``transport``."""

    def __init__(
        self,
        config: EngineConfig,
        transport: EngineTransport,
        *,
        on_protocol: Callable[[str], None] | None = None,
    ) -> None:
        self.config = config
        self.transport = transport
        self.on_protocol = on_protocol

    def _protocol(self, text: str) -> None:
        if self.on_protocol is not None:
            self.on_protocol(text)

    async def load_tile(
        self,
        tile: Tile,
        load: str = "all",
        layer: EngineConfig | None = None,
        run: RunMode = RunMode.FULL,
        queue: QueueLoad | None = None,
        keep: np.ndarray | None = None,
        half: int = 0,
        poison: bool = False,
    ) -> int:
        """Write the tile (``load``: one of :data:`LOAD_MODES`) for a run of mode ``run``; return the number
        of writes.

        ``layer`` is the configuration of the layer the tile belongs to (its kernel, stride, padding and
        groups go into the registers); default: the build's own (``self.config``). Two-pass runs
        (:func:`verification.layout.load_writes`): ``PHASE1`` loads the base-path weights only; ``PHASE2``
        the registers, the conditional-path weights of the channels ``keep`` (default: those of the
        queued activations) and the work queue ``queue`` (``load`` = "all"; "registers": only those and
        the queue). ``half``: the buffer half the tile goes into and its run uses; while the engine runs
        in the other half, every write here is taken at once (double buffering). ``poison``: make every
        write first with its data inverted, so that a write the engine takes but drops leaves a wrong word
        rather than an earlier run's identical one (an earlier run of the same tile, or of a tile of the
        same channels, wrote the same words).
        """
        if load not in LOAD_MODES:
            raise ValueError(f"load = {load!r}, expected one of {LOAD_MODES}")
        if load == "none":
            return 0
        if layer is None:
            layer = self.config
        self.config.check_layer(layer)
        run = RunMode(run)
        n_queue = 0
        if run is RunMode.PHASE2 and not tile.geometry.dense:
            if queue is None:
                raise ValueError("a PHASE2 run needs the work queue to write")
            n_queue = len(queue.lins)
            if keep is None:
                hw = tile.geometry.h_out * tile.geometry.w_out
                keep = np.zeros(tile.geometry.c_out, dtype=bool)
                keep[np.asarray(queue.lins, dtype=np.int64) // hw] = True
        writes = load_writes(layer, tile, run, n_queue, keep, half)
        if load == "registers":
            chosen = writes.sel == LoadTarget.CONFIG.value
            writes = LoadWrites(writes.sel[chosen], writes.addr[chosen], writes.data[chosen])
        if n_queue:
            extra = queue_writes(self.config, layer, tile.geometry, queue, half)
            writes = LoadWrites(
                np.concatenate([writes.sel, extra.sel]),
                np.concatenate([writes.addr, extra.addr]),
                np.concatenate([writes.data.astype(object), extra.data.astype(object)])
                if self.config.data_width > 64
                else np.concatenate([writes.data, extra.data]),
            )
        payloads = pack_payloads(self.config, writes)
        if poison:  # every write first with its data inverted (see the docstring)
            mask = (1 << self.config.data_width) - 1
            bad = LoadWrites(
                writes.sel, writes.addr, np.array([int(d) ^ mask for d in writes.data], dtype=object)
            )
            payloads = [*pack_payloads(self.config, bad), *payloads]
        if hasattr(self.transport, "load_burst"):  # one write per cycle, checked by the transport
            await self.transport.load_burst(payloads)
            return len(payloads)
        for i, payload in enumerate(payloads):
            waited = await self.transport.load.put(payload)  # (i counts the poisoned writes too)
            if waited:
                sel, addr, _ = writes[i]
                self._protocol(
                    f"load write {i} (sel {sel}, addr {addr}) waited {waited} cycles for ready "
                    "(spec: ready is high while the engine is idle)"
                )
        return len(writes)

    async def run(self, timeout_cycles: int | None = None) -> Any:
        """Raise ``start`` for one cycle and wait until the run is over (the transport's run record)."""
        await self.transport.start()
        return await self.transport.wait_done(timeout_cycles)

    def _wire_address(self, sel: UnloadTarget, addr: int, half: int) -> int:
        if sel == UnloadTarget.COUNTERS:
            return addr
        if sel == UnloadTarget.QUEUE_ENTRY:
            return banked_address(self.config, addr) | (half << self.config.half_bit)
        return (addr << self.config.bank_bits) | (half << self.config.half_bit)

    async def read_many(
        self,
        sel: UnloadTarget,
        addrs: Sequence[int],
        half: int = 0,
        cares: Sequence[int | None] | None = None,
    ) -> list[int]:
        """:meth:`read` of each of ``addrs`` (``cares``: each response's defined bits); back to back, one
        request per cycle, when the transport takes bursts (``request_burst``)."""
        sel = UnloadTarget(sel)
        cares = list(cares) if cares is not None else [None] * len(addrs)
        if not hasattr(self.transport, "request_burst"):
            return [await self.read(sel, a, half, c) for a, c in zip(addrs, cares, strict=True)]
        payloads = [pack_request(self.config, sel, self._wire_address(sel, a, half)) for a in addrs]
        return [int(w) for w in await self.transport.request_burst(payloads, cares)]

    async def read(self, sel: UnloadTarget, addr: int, half: int = 0, care: int | None = None) -> int:
        """One unload request and its response word; ``addr`` is a counter's index, a queue entry's
        (``QUEUE_ENTRY``, sent as its banked address) or, for ``OUTPUT`` and ``QUEUE``, a **row**'s (the
        response holds its P entries, :meth:`split_row`); ``half``: the buffer half; ``care``: the bits of
        the response that must be defined (a row's entries the host wants; default all)."""
        t = self.transport
        sel = UnloadTarget(sel)
        waited = await t.req.put(pack_request(self.config, sel, self._wire_address(sel, addr, half)))
        if waited:
            self._protocol(
                f"request (sel {sel.value}, addr {addr}) waited {waited} cycles for ready "
                "(spec: ready while idle and no response is waiting)"
            )
        try:
            word = await t.resp.get(care)
        except AssertionError as exc:  # a stall or X/Z bits: say what was asked for
            what = {
                UnloadTarget.OUTPUT: f"output row {addr}",
                UnloadTarget.QUEUE: f"work-queue row {addr}",
                UnloadTarget.QUEUE_ENTRY: f"work-queue entry {addr} (whole)",
            }.get(sel) or f"counter {addr} ({COUNTER_NAMES[addr]})"
            raise AssertionError(f"reading {what}: {exc}") from None
        if t.resp.last_wait:
            self._protocol(
                f"response to (sel {sel.value}, addr {addr}) became valid {t.resp.last_wait + 1} cycles "
                "after the request was accepted (spec: from the cycle after)"
            )
        return int(word)

    def split_row(self, word: int) -> list[int]:
        """The P entries of a row response (entry ``b`` in bits ``[b·(acc_width + 1), …)``)."""
        e = self.config.acc_width + 1
        return [(int(word) >> (b * e)) & ((1 << e) - 1) for b in range(self.config.pes)]

    async def _read_entries(self, sel: UnloadTarget, entries: Iterable[int], half: int) -> dict[int, int]:
        """Entries of the output buffer or the work queue's results, by index, one response per row."""
        wanted = sorted(set(entries))
        out: dict[int, int] = {}
        P = self.config.pes
        e = self.config.acc_width + 1
        rows: dict[int, int] = {}
        for n in wanted:  # the bits of the entries wanted in each row (the rest may be undefined)
            rows[n // P] = rows.get(n // P, 0) | (((1 << e) - 1) << (n % P * e))
        order = sorted(rows)
        words = await self.read_many(sel, order, half, [rows[r] for r in order])
        for row, word in zip(order, words, strict=True):
            for b, entry in enumerate(self.split_row(word)):
                out[row * P + b] = entry
        return {n: out[n] for n in wanted}

    async def read_words(self, addrs: Iterable[int], half: int = 0) -> dict[int, int]:
        """Raw output-buffer entries by ``lin`` (of half ``half``), read a row of P at a time."""
        return await self._read_entries(UnloadTarget.OUTPUT, addrs, half)

    async def merge_results(
        self, geometry: TileGeometry, words: dict[int, int], half: int = 0
    ) -> dict[int, int]:
        """The tile's results from its raw output entries ``words`` (``lin`` 0 … N − 1): a gated run leaves
        ``(p, gate 1)`` in the output buffer for a gated-on activation and its result ``p + r`` in the
        work queue, the n-th gated-on entry (in ``lin`` order) in queue entry n; those are read here."""
        results = dict(words)
        if not geometry.dense:
            on = [lin for lin in range(geometry.n_outputs) if decode_output(self.config, words[lin])[1]]
            queued = await self._read_entries(UnloadTarget.QUEUE, range(len(on)), half)
            for n, lin in enumerate(on):
                results[lin] = queued[n]
        return results

    async def read_outputs(self, geometry: TileGeometry, half: int = 0) -> Outputs:
        """Every output of a tile of ``geometry`` run in half ``half``, decoded (output buffer and, gated,
        work queue)."""
        words = await self.read_words(range(geometry.n_outputs), half)
        results = await self.merge_results(geometry, words, half)
        return decode_outputs(self.config, geometry, [results[lin] for lin in range(geometry.n_outputs)])

    async def read_queue(self, n: int, half: int = 0) -> list[int]:
        """The raw words of work-queue entries ``0 … n − 1`` (each a result as an output entry: ``y``, gate
        bit 1)."""
        queued = await self._read_entries(UnloadTarget.QUEUE, range(n), half)
        return [queued[i] for i in range(n)]

    async def read_queue_entries(self, n: int, half: int = 0) -> list[int]:
        """Work-queue entries ``0 … n − 1`` whole (:func:`spec.protocol.queue_layout`): after a ``PHASE1`` run
        the gated-on activations with their partial sums, to count by channel and write back those kept."""
        return await self.read_many(UnloadTarget.QUEUE_ENTRY, range(n), half)

    async def read_counters(self) -> dict[str, int]:
        words = await self.read_many(UnloadTarget.COUNTERS, range(len(COUNTER_NAMES)))
        return {name: decode_counter(self.config, w) for name, w in zip(COUNTER_NAMES, words, strict=True)}
