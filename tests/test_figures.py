"""Every figure of report.json and layers.csv on the four shipped traces equals the recorded digests
(bench/figures.py): a refactor changes no figure unless it records new digests and says why."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _figures_module():
    spec = importlib.util.spec_from_file_location("bench_figures", ROOT / "bench" / "figures.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_report_figures_equal_the_recorded_digests():
    figures = _figures_module()
    assert figures.check(ROOT / "bench" / "results" / "figures.json") == []
