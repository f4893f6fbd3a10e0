"""The spec's bound on achieved / theoretical speed-up (docs/microarchitecture.md, section 6) holds."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import run_tile
from spec.config import EngineConfig
from spec.tile import TileGeometry, random_tile
from verification.spec_schedule import spec_round_cycles


@settings(max_examples=40, deadline=None)
@given(
    pes=st.integers(1, 16),
    lanes=st.sampled_from([1, 2, 4, 8]),
    groups=st.sampled_from([2, 4]),
    chunks=st.integers(1, 3),
    kernel=st.sampled_from([1, 3]),
    c_out_per_group=st.integers(1, 6),
    hw=st.integers(1, 12),
    rate=st.floats(0.0, 1.0),
    seed=st.integers(0, 2**16),
)
def test_eta_bound(pes, lanes, groups, chunks, kernel, c_out_per_group, hw, rate, seed):
    config = EngineConfig(
        pes=pes,
        lanes=lanes,
        groups=groups,
        kernel=kernel,
        padding=kernel // 2,
        input_depth=1 << 16,
        weight_depth=1 << 16,
        output_depth=1 << 16,
    )
    c_in = groups * lanes * chunks  # L divides every segment: the bound's premise
    geometry = TileGeometry.full_layer(config, c_in=c_in, c_out=groups * c_out_per_group, h_in=hw, w_in=hw)
    tile = random_tile(config, geometry, np.random.default_rng(seed), gate_rate=rate)
    gated = run_tile(config, tile).counters
    dense_tile = dataclasses.replace(tile, geometry=dataclasses.replace(geometry, dense=True))
    dense = run_tile(config, dense_tile).counters

    macs_dense = dense["base_macs"] + dense["cond_macs"]
    macs_gated = gated["base_macs"] + gated["cond_macs"]
    assert macs_dense == kernel**2 * c_in * geometry.n_outputs
    theoretical = macs_dense / macs_gated
    achieved = dense["cycles"] / gated["cycles"]

    n, n_on, p = geometry.n_outputs, gated["gates_on"], pes
    b1 = kernel**2 * chunks
    b2 = kernel**2 * chunks * (groups - 1)
    r1 = -(-n // p)
    # Phase 1's input-bank stalls (rounds that wrap an output row or channel), from the spec's rule.
    s1 = sum(spec_round_cycles(config, tile, r) for r in range(r1)) - r1 * b1
    # Phase-2 rounds the window formed: the issue cycles beyond phase 1's, B2 each.
    r2 = (gated["cycles"] - gated["stall_cycles"] - r1 * b1) // b2
    assert r2 * b2 == gated["cycles"] - gated["stall_cycles"] - r1 * b1
    assert (r2 == 0) == (n_on == 0) and r2 >= -(-n_on // p)
    # The built schedule's ceiling (docs/microarchitecture.md section 6): SETUP's P cycles, phase 1's beats
    # and bank stalls, DRAIN1's 2;
    # a phase-2 round lasts at most max(B2, 2P + 2) (the next formation: ≤ P inserted + 1 + ≤ P members;
    # the drain of ≤ P results), PREP at most min(W, n_on) + 1 + P + 2, DRAIN2 at most P + 2.
    fixed = min(config.window, n_on) + 2 * p + 5 if n_on else 0
    assert gated["cycles"] <= p + 2 + r1 * b1 + s1 + r2 * max(b2, 2 * p + 2) + fixed
    # The bound in terms of the window's PE-slot fill f = n_on / (P·R2), for P | N and B2 ≥ 2P + 2.
    eta = achieved / theoretical
    if n % p == 0 and b2 >= 2 * p + 2 and n_on:
        w = (n * b1 + n_on * b2) / p
        fill = n_on / (p * r2)
        bound = w / (w + (1 / fill - 1) * n_on * b2 / p + s1 + min(config.window, n_on) + 3 * p + 7)
        assert eta >= bound - 1e-12
    if n_on == 0:
        assert gated["cycles"] == p + 2 + r1 * b1 + s1  # SETUP (P cycles), phase 1, DRAIN1
