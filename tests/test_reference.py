"""The functional reference (sim/reference.py) against the formula of spec section 1 written out literally:
one output activation and one product at a time (tiny shapes only)."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.reference import base_mask, conv2d, gated_conv


def naive(x, w, thresholds, stride, top, left, h_out, w_out, groups, base_channels, dense):
    c_out, c_in, k, _ = w.shape
    _, h, wd = x.shape
    y = np.zeros((c_out, h_out, w_out), dtype=np.int64)
    gates = np.zeros(y.shape, dtype=bool)
    for co in range(c_out):
        if groups > 1:
            grp = co // (c_out // groups)
            base = set(range(grp * (c_in // groups), (grp + 1) * (c_in // groups)))
        else:
            base = set(range(base_channels))
        for oy in range(h_out):
            for ox in range(w_out):
                p = r = 0
                for ci in range(c_in):
                    for ky in range(k):
                        for kx in range(k):
                            iy, ix = oy * stride + ky - top, ox * stride + kx - left
                            v = int(x[ci, iy, ix]) if 0 <= iy < h and 0 <= ix < wd else 0
                            if ci in base:
                                p += v * int(w[co, ci, ky, kx])
                            else:
                                r += v * int(w[co, ci, ky, kx])
                on = dense or p > int(thresholds[co])
                y[co, oy, ox], gates[co, oy, ox] = (p + r if on else p), on
    return y, gates


@st.composite
def cases(draw):
    groups = draw(st.sampled_from([1, 2, 3]))
    c_in = groups * draw(st.integers(1, 3)) + (1 if groups == 1 else 0)
    c_out = groups * draw(st.integers(1, 2))
    k = draw(st.integers(1, 3))
    stride = draw(st.integers(1, 2))
    h, wd = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    top, left = draw(st.integers(0, k - 1)), draw(st.integers(0, k - 1))
    h_out, w_out = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    wide = draw(st.booleans())  # 16-bit operands: the int64 path
    lo, hi = (-(1 << 15), (1 << 15) - 1) if wide else (-128, 127)
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    x = rng.integers(lo, hi + 1, size=(c_in, h, wd)).astype(np.int16 if wide else np.int8)
    w = rng.integers(lo, hi + 1, size=(c_out, c_in, k, k)).astype(np.int16 if wide else np.int8)
    thresholds = rng.integers(-2000, 2000, size=c_out)
    base = draw(st.integers(1, c_in - 1)) if groups == 1 else 0
    return x, w, thresholds, stride, top, left, h_out, w_out, groups, base, draw(st.booleans())


@settings(max_examples=150, deadline=None)
@given(cases())
def test_gated_conv_equals_the_formula(case):
    x, w, thresholds, stride, top, left, h_out, w_out, groups, base, dense = case
    want_y, want_gates = naive(*case)
    mask = base_mask(x.shape[0], w.shape[0], groups, base)
    geometry = dict(stride=stride, pad_top=top, pad_left=left, h_out=h_out, w_out=w_out)
    y, gates, p = gated_conv(x, w, thresholds, mask, dense=dense, **geometry)
    assert y.dtype == np.int64 and np.array_equal(y, want_y) and np.array_equal(gates, want_gates)
    assert np.array_equal(p, conv2d(x, np.where(mask[:, :, None, None], w, 0), **geometry))


def test_layer_padding_and_extremes():
    # Symmetric layer padding, and the int8 extremes (-128 · -128 sums) on the exact float path.
    x = np.full((4, 5, 6), -128, dtype=np.int8)
    w = np.full((3, 4, 3, 3), -128, dtype=np.int8)
    out = conv2d(x, w, stride=2, padding=1)
    assert out.shape == (3, 3, 3)
    assert out[0, 1, 1] == 4 * 9 * 128 * 128  # an inner position reads all nine taps
    assert out[0, 0, 0] == 4 * 4 * 128 * 128  # a corner reads four


def test_base_mask():
    assert base_mask(4, 2, 2).tolist() == [[True, True, False, False], [False, False, True, True]]
    assert base_mask(3, 2, 1, base_channels=1).tolist() == [[True, False, False], [True, False, False]]
