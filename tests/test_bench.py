"""The benchmark suite (bench/run_all.py): its numpy reference computes the layers, its one command runs."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tests.test_network import numpy_conv
from tests.test_trace import N, small_trace
from trace_format import load_trace, save_trace

BENCH = Path(__file__).resolve().parent.parent / "bench" / "run_all.py"


@pytest.fixture(scope="module")
def run_all():
    spec = importlib.util.spec_from_file_location("run_all", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_reference_forward_computes_every_engine_layer(run_all, tmp_path):
    """The float32 im2col + BLAS forward the model is timed against does the layers' dense work."""
    meta, arrays = small_trace(seed=5)
    save_trace(tmp_path / "t.npz", meta, arrays)
    trace = load_trace(tmp_path / "t.npz")
    layers = run_all.reference_layers(trace)
    out = run_all.reference_forward(layers, N, keep=True)
    engine = [layer for layer in trace if layer.meta.is_engine_layer]
    assert len(out) == len(engine) * N
    for i, layer in enumerate(engine):
        for n in range(N):
            if layer.meta.kind == "conv":
                m = layer.meta
                want = numpy_conv(layer.inputs[n], layer.weights, m.padding).reshape(m.c_out, -1)
            else:
                want = layer.weights.astype(np.int64) @ layer.inputs[n].reshape(-1).astype(np.int64)
                want = want[:, None]
            np.testing.assert_array_equal(out[i * N + n], want)  # small integers: float32 is exact


def test_network_section_runs_and_writes_its_ratios(run_all, tmp_path):
    out = tmp_path / "bench.json"
    assert run_all.main(["--quick", "--skip", "rtl,scaling,cold", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    net = res["network"]
    assert net["images"] == 2 and net["engine_layers"] == 21
    for key in (
        "ratio_model_over_reference",
        "ratio_model_all_cores_over_reference",
        "ratio_model_with_outputs_all_cores_over_reference",
    ):
        assert net[key] > 0
    # Every counter of the dense and gated designs, as the report has them.
    assert net["model_macs_per_image"]["dense"] == net["dense_macs_per_image"]
    assert 0 < net["model_macs_per_image"]["gated"] < net["dense_macs_per_image"]
