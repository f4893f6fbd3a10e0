"""Real traces through the Verilog (``accel cosim``, verification/trace_cosim.py), on one build.

* Verilator: one tile of every engine layer of every shipped trace, in every design (dense, gated, the
  pruned design's two passes), against the cycle model.
* Icarus (about 100 times slower on this design): each trace's last layer and the cheapest gated tile of
  the CGNet trace in every design.
* Network-level agreement: the layers of the CGNet trace with at most two tiles, co-simulated in full, take
  the engine cycles per design that the network runner's report counts for them.
* The checker can fail: a wrong expectation is reported with the layer, tile, output and cycle.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest

from sim.network import run_network
from spec.system import SystemConfig
from trace_format import load_trace
from verification.build import default_cache_root
from verification.simulators import simulator_status
from verification.trace_cosim import cheapest_tile, design_cycles, engine_layers, layer_cases, run_recorded

TRACES = Path(__file__).resolve().parents[2] / "traces"
SHIPPED = sorted(p.name for p in TRACES.glob("*.npz"))
DESIGNS = ("dense", "gated", "pruned")
SYSTEM = SystemConfig()


def _needs(sim: str):
    ok, why = simulator_status(sim)
    return pytest.mark.skipif(not ok, reason=f"{sim} unavailable: {why}")


def _run(sim: str, tiles, tmp_path: Path):
    result = run_recorded(sim, SYSTEM, [t.case for t in tiles], default_cache_root(), tmp_path)
    assert not result.failures, "\n".join(f["message"] for f in result.failures)
    assert len(result.stats) == len(tiles)
    return sorted(result.stats, key=lambda s: s["tile"])


@_needs("verilator")
@pytest.mark.parametrize("trace", SHIPPED)
def test_a_tile_of_every_layer_on_verilator(trace: str, tmp_path: Path) -> None:
    """Each layer's cheapest tile (the fewest cycles; an edge tile where the layer has several)."""
    cuts = engine_layers(load_trace(TRACES / trace), SYSTEM)
    tiles = [t for cut in cuts for t in layer_cases(cut, SYSTEM, DESIGNS, indices=[cheapest_tile(cut)])]
    assert {t.layer for t in tiles} == {cut.layer.name for cut in cuts}
    stats = _run("verilator", tiles, tmp_path)
    assert [s["cycles"] for s in stats] == [t.case.counters["cycles"] for t in tiles]


def _cheapest_gated_tile(trace) -> tuple:
    from sim.engine import run_tile

    best = None
    for cut in engine_layers(trace, SYSTEM):
        if cut.gated:
            i = cheapest_tile(cut)
            cycles = run_tile(cut.config, cut.tile(i), outputs=False).counters["cycles"]
            if best is None or cycles < best[0]:
                best = (cycles, cut, i)
    return best[1], best[2]


@_needs("icarus")
def test_a_sample_on_icarus(tmp_path: Path) -> None:
    tiles = []
    for trace in SHIPPED:
        last = engine_layers(load_trace(TRACES / trace), SYSTEM)[-1]
        tiles += layer_cases(last, SYSTEM, DESIGNS, tiles_per_layer=1)
    cut, index = _cheapest_gated_tile(load_trace(TRACES / "cgnet-resnet20-digits.npz"))
    tiles += layer_cases(cut, SYSTEM, DESIGNS, indices=[index])
    assert {t.design for t in tiles} == set(DESIGNS)
    _run("icarus", tiles, tmp_path)


@_needs("verilator")
def test_layers_cosimulated_in_full_take_the_reports_compute_cycles(tmp_path: Path) -> None:
    trace = load_trace(TRACES / "cgnet-resnet20-digits.npz")
    cuts = [cut for cut in engine_layers(trace, SYSTEM) if len(cut.plan) <= 2]
    assert any(cut.gated for cut in cuts) and any(not cut.gated for cut in cuts)
    tiles = [t for cut in cuts for t in layer_cases(cut, SYSTEM, DESIGNS)]
    stats = _run("verilator", tiles, tmp_path)
    rtl = design_cycles(tiles, [s["cycles"] for s in stats])
    report = {lr.name: lr for lr in run_network(trace, SYSTEM, samples=1).layers}
    for cut in cuts:
        for design in DESIGNS:
            assert rtl[(cut.layer.name, design)] == report[cut.layer.name].designs[design].compute_cycles, (
                cut.layer.name,
                design,
            )


@_needs("verilator")
def test_a_wrong_expectation_is_reported_with_its_place(tmp_path: Path) -> None:
    trace = load_trace(TRACES / "cgnet-resnet20-digits.npz")
    cut, index = _cheapest_gated_tile(trace)
    (tile,) = layer_cases(cut, SYSTEM, ("gated",), indices=[index])
    wrong = dataclasses.replace(tile.case, outputs=np.array(tile.case.outputs, copy=True))
    wrong.outputs[0, 0, 1] += 1
    result = run_recorded("verilator", SYSTEM, [wrong], default_cache_root(), tmp_path)
    assert len(result.failures) == 1
    message = result.failures[0]["message"]
    assert cut.layer.name in message and f"tile {index}" in message
    assert "first diverging output (co=0, oy=0, ox=1)" in message and "cycle" in message


@_needs("icarus")
def test_cli_mismatch_exits_1_naming_the_place_and_keeping_the_waveform(tmp_path, monkeypatch, capsys):
    import verification.trace_cosim as trace_cosim
    from accel.cli import main

    real = trace_cosim.expectations

    def wrong(*args, **kwargs):
        case = real(*args, **kwargs)
        case.outputs = np.array(case.outputs, copy=True)
        case.outputs.flat[0] += 1
        return case

    monkeypatch.setattr(trace_cosim, "expectations", wrong)
    out = tmp_path / "out"
    argv = [
        "cosim",
        "--sim",
        "icarus",
        "--layers",
        "fc",
        "--design",
        "dense",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main([*argv, "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "'fc tile 0 image 0 dense'" in err and "first diverging output (co=0, oy=0, ox=0)" in err
    assert "written in cycle" in err
    assert len(list(out.glob("fc_tile_0_image_0_dense.fst"))) == 1 and (out / "fc-sim.log").is_file()
    result = json.loads((out / "cosim.json").read_text())
    assert result["mismatches"] == 1 and result["layers"][0]["mismatches"] == 1


def test_cli_refuses_an_unknown_layer_and_a_bad_design(tmp_path, capsys):
    from accel.cli import main

    assert main(["cosim", "--layers", "conv9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no layer 'conv9'" in err and "cgnet-resnet20-digits.npz" in err and "layer1.0.conv1" in err
    assert main(["cosim", "--design", "dense,sparse"]) == 2
    assert "invalid design 'sparse'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
