"""The banked input/weight buffer (rtl/banked_buffer.py) in Amaranth's simulator: its construction errors,
and its reads against the rule of docs/microarchitecture.md section 3 ("Banked reads") written out here."""

from __future__ import annotations

import numpy as np
import pytest
from amaranth.sim import Simulator

from rtl.banked_buffer import BankedBuffer


def _word(addr: int) -> int:
    return (addr * 2654435761) & 0xFFFF  # a distinct 16-bit value per address


async def _fill(ctx, dut, depth: int) -> None:
    """Write every word through the load port, word ``a`` = ``_word(a)``."""
    for a in range(depth):
        ctx.set(dut.waddr, a)
        ctx.set(dut.wdata, _word(a))
        ctx.set(dut.wen, 1)
        await ctx.tick()
    ctx.set(dut.wen, 0)


def _run(dut, bench) -> None:
    sim = Simulator(dut)
    sim.add_clock(1e-6)
    sim.add_testbench(bench)
    sim.run()


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(pes=0, bank_bits=2, width=8, depth=16), "pes >= 1"),
        (dict(pes=4, bank_bits=-1, width=8, depth=16), "bank_bits >= 0"),
        (dict(pes=4, bank_bits=2, width=0, depth=16), "width and depth"),
        (dict(pes=4, bank_bits=2, width=8, depth=0), "width and depth"),
    ],
)
def test_construction_errors(kwargs, message):
    with pytest.raises(ValueError, match=message):
        BankedBuffer(arbitrate=True, **kwargs)


def _expected_grants(addrs: list[int], asking: list[bool], banks: int) -> list[bool]:
    """The spec's rule: a bank reads the word of its lowest-numbered asking PE and serves every asking PE
    that wants that word."""
    first_word: dict[int, int] = {}
    for a, ask in zip(addrs, asking, strict=True):
        if ask:
            first_word.setdefault(a % banks, a)
    return [ask and first_word[a % banks] == a for a, ask in zip(addrs, asking, strict=True)]


@pytest.mark.parametrize("pes, bank_bits", [(4, 2), (3, 2), (8, 3), (2, 0)])
def test_arbitrated_reads_serve_one_word_per_bank_and_cycle(pes, bank_bits):
    depth, banks = 64, 1 << bank_bits
    dut = BankedBuffer(pes, bank_bits, 16, depth, arbitrate=True)
    rng = np.random.default_rng(pes * 10 + bank_bits)
    # Requests drawn from a few words so that PEs often share a word or a bank.
    beats = [
        (
            [int(a) for a in rng.choice(rng.integers(0, depth, 5), pes)],
            [bool(b) for b in rng.random(pes) < 0.8],
        )
        for _ in range(60)
    ]

    async def bench(ctx):
        await _fill(ctx, dut, depth)
        for addrs, asking in beats:
            pending = list(asking)
            distinct = {}
            for a, ask in zip(addrs, asking, strict=True):
                if ask:
                    distinct.setdefault(a % banks, set()).add(a)
            cycles = 0
            while any(pending):
                for i in range(pes):
                    ctx.set(dut.raddr[i], addrs[i])
                ctx.set(dut.rreq, sum(1 << i for i in range(pes) if pending[i]))
                grants = [bool((ctx.get(dut.grant) >> i) & 1) for i in range(pes)]
                assert grants == _expected_grants(addrs, pending, banks)
                await ctx.tick()
                ctx.set(dut.rreq, 0)
                for i in range(pes):
                    if grants[i]:
                        assert ctx.get(dut.rdata[i]) == _word(addrs[i])
                pending = [p and not g for p, g in zip(pending, grants, strict=True)]
                cycles += 1
            # A beat takes as many cycles as its busiest bank has distinct words.
            assert cycles == max((len(w) for w in distinct.values()), default=0)

    _run(dut, bench)


def test_unarbitrated_reads_grant_every_request_and_broadcast():
    pes, bank_bits, depth = 4, 2, 32
    dut = BankedBuffer(pes, bank_bits, 16, depth, arbitrate=False)
    # Weight-like requests: PEs of one channel share a word, channels differ mod 4.
    beats = [[5, 5, 6, 7], [8, 9, 9, 9], [3, 0, 1, 2], [12, 12, 12, 12]]

    async def bench(ctx):
        await _fill(ctx, dut, depth)
        for addrs in beats:
            for i in range(pes):
                ctx.set(dut.raddr[i], addrs[i])
            ctx.set(dut.rreq, (1 << pes) - 1)
            assert ctx.get(dut.grant) == (1 << pes) - 1
            await ctx.tick()
            ctx.set(dut.rreq, 0)
            assert [ctx.get(dut.rdata[i]) for i in range(pes)] == [_word(a) for a in addrs]
        # A bank nobody reads holds its word, and so does each PE's selection.
        await ctx.tick()
        assert [ctx.get(dut.rdata[i]) for i in range(pes)] == [_word(a) for a in beats[-1]]

    _run(dut, bench)
