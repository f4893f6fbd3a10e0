"""The spec's bound on achieved / theoretical speed-up (docs/microarchitecture.md, section 6) holds."""

from __future__ import annotations

import dataclasses

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.engine import run_tile
from spec.config import EngineConfig
from spec.tile import TileGeometry, random_tile


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

    n, n_on = geometry.n_outputs, gated["gates_on"]
    b1 = kernel**2 * chunks
    b2 = kernel**2 * chunks * (groups - 1)
    w = (n * b1 + n_on * b2) / pes
    eta = achieved / theoretical
    bound = w / (w + b2 + 6)
    if n % pes == 0:
        assert eta >= bound - 1e-12
    # Whatever the tail, the gated run never spends more issue cycles than the balanced ideal plus
    # one round of each phase.
    assert gated["cycles"] - gated["stall_cycles"] <= w + b1 + b2
