"""Verilator lint of the default build: no warning code may appear more often than in the baseline."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from spec.config import EngineConfig
from verification.build import generate
from verification.lint import count_by_code, lint_verilog
from verification.simulators import simulator_status

BASELINE = Path(__file__).with_name("lint_baseline.json")

usable, why = simulator_status("verilator")
needs_verilator = pytest.mark.skipif(not usable, reason=why)


@needs_verilator
def test_lint_warnings_do_not_grow():
    verilog, _ = generate(EngineConfig())
    counts = count_by_code(lint_verilog(verilog))
    baseline = {k: v for k, v in json.loads(BASELINE.read_text()).items() if not k.startswith("_")}
    grown = {code: (n, baseline.get(code, 0)) for code, n in counts.items() if n > baseline.get(code, 0)}
    assert not grown, "lint warnings grew (code: now, baseline): " + ", ".join(
        f"{code}: {n} > {b}" for code, (n, b) in grown.items()
    )


@needs_verilator
def test_lint_reports_warnings_and_refuses_errors(tmp_path):
    good = tmp_path / "t.v"
    good.write_text("module t(input wire [7:0] a, output wire b);\n  assign b = a[0];\nendmodule\n")
    warnings = lint_verilog(good, top="t")
    assert [w.code for w in warnings] == ["UNUSEDSIGNAL"] and warnings[0].line == 1
    bad = tmp_path / "bad.v"
    bad.write_text("module bad(; endmodule\n")
    with pytest.raises(RuntimeError, match="verilator failed"):
        lint_verilog(bad, top="bad")
