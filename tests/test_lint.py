"""Verilator lint of the default build: no warning code may appear more often than in the baseline."""

from __future__ import annotations

import json
import re
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
def test_lint_warnings_do_not_grow_and_each_is_explained():
    verilog, _ = generate(EngineConfig())
    warnings = lint_verilog(verilog)
    counts = count_by_code(warnings)
    recorded = json.loads(BASELINE.read_text())
    baseline = {k: v for k, v in recorded.items() if k.isupper()}
    grown = {code: (n, baseline.get(code, 0)) for code, n in counts.items() if n > baseline.get(code, 0)}
    assert not grown, "lint warnings grew (code: now, baseline): " + ", ".join(
        f"{code}: {n} > {b}" for code, (n, b) in grown.items()
    )
    # Every warning is one the baseline explains, and no explanation covers more warnings than it says.
    explained = recorded["explained"]
    assert sum(e["count"] for e in explained) == sum(baseline.values())
    matched = [0] * len(explained)
    for w in warnings:
        hits = [k for k, e in enumerate(explained) if e["code"] == w.code and re.search(e["match"], w.text)]
        assert hits, f"unexplained lint warning {w.code}: {w.text}"
        matched[hits[0]] += 1
    over = [(e["match"], n, e["count"]) for e, n in zip(explained, matched, strict=True) if n > e["count"]]
    assert not over, f"more warnings than explained (match, found, explained): {over}"


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
