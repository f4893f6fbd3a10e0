"""Real traces through the Verilog (``accel cosim``, verification/trace_cosim.py), on one build.

* Verilator: one tile of every engine layer of every shipped trace, in every design (dense, gated, the
  pruned design's two passes; ResNet-18's in dense and gated), against the cycle model.
* Icarus (about 100 times slower on this design): each trace's last layer in every design and the
  cheapest gated tile of the CGNet trace, gated (tests/cosim/test_engine_cosim.py runs two-pass runs on
  Icarus).
* Network-level agreement: the layers of the CGNet trace that are one tile, co-simulated in full, take
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
    """Each layer's cheapest tile (the fewest cycles; an edge tile where the layer has several), in every
    design (the ImageNet-shaped ResNet-18's in dense and gated: its pruned passes would double CI's time
    for it)."""
    cuts = engine_layers(load_trace(TRACES / trace), SYSTEM)
    designs = DESIGNS if "resnet18" not in trace else ("dense", "gated")
    tiles = [t for cut in cuts for t in layer_cases(cut, SYSTEM, designs, indices=[cheapest_tile(cut)])]
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
    tiles += layer_cases(cut, SYSTEM, ("gated",), indices=[index])
    assert {t.design for t in tiles} == {"dense", "gated"}
    _run("icarus", tiles, tmp_path)


@_needs("verilator")
def test_layers_cosimulated_in_full_take_the_reports_compute_cycles(tmp_path: Path) -> None:
    trace = load_trace(TRACES / "cgnet-resnet20-digits.npz")
    cuts = [cut for cut in engine_layers(trace, SYSTEM) if len(cut.plan) == 1]
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
    assert result["failures"][0]["waves"] == "fc_tile_0_image_0_dense.fst (the rerun failed too)"


def test_cli_refuses_an_unknown_layer_and_a_bad_design(tmp_path, capsys):
    from accel.cli import main

    assert main(["cosim", "--layers", "conv9", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no layer 'conv9'" in err and "cgnet-resnet20-digits.npz" in err and "layer1.0.conv1" in err
    assert main(["cosim", "--design", "dense,sparse"]) == 2
    assert "invalid design 'sparse'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_the_recorders_events_make_the_run_and_its_protocol_problems(tmp_path: Path) -> None:
    """The log reader and the run's protocol checks, on hand-written logs (no simulator)."""
    import types

    from verification.cosim_check import Run
    from verification.trace_tb import RecordedTransport, RecorderLog

    log = tmp_path / "cosim.log"
    t = RecordedTransport(types.SimpleNamespace(wb_addr=[0] * 16), RecorderLog(log), 2, tmp_path / "b.hex")
    t.run = Run()
    # start in cycle 10, busy 11..13, writes of lin 3 (PE 0) in busy cycle 2 and of lin 5 (PE 1) in 3
    log.write_text("S 10\nB 11 120\nW 2 1 0 0003\nW 3 2 0 0500\nF 14 3\nD 14\nQ 1f\nC 7 0 1\n")
    t._read()
    run = t.run
    assert (run.start_cycle, run.rise_cycle, run.fall_cycle, run.busy_cycles, run.done_cycle) == (
        10,
        11,
        14,
        3,
        14,
    )
    assert run.writes == {3: 2, 5: 3} and run.n_writes == 2 and run.rise_ns == 110
    assert t.responses == ["1f"] and t.counts == (7, 0, 1) and not t.errors and not t.run_problems()
    with open(log, "a") as f:  # done again, an error the wrapper saw, and a run late by a cycle
        f.write("D 15\nE wb_valid = 01 while busy is low, cycle 15\n")
    t._read()
    assert len(t.errors) == 2 and "done pulsed again" in t.errors[0] and "busy is low" in t.errors[1]
    late = RecordedTransport(types.SimpleNamespace(wb_addr=[0] * 16), RecorderLog(log), 2, tmp_path / "b.hex")
    late.run = Run()
    log.write_text("S 10\nB 12 130\nF 14 3\nD 15\n")
    late._read()
    problems = late.run_problems()
    assert len(problems) == 3  # busy late, done not right after busy, busy not in one piece
    late.run = None
    log.write_text("D 20\n")
    late.log = RecorderLog(log)
    late._read()
    assert "outside a run" in late.errors[-1]
