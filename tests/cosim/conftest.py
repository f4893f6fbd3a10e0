"""At the end of a session that co-simulated anything, print one line per simulator (tiles, MACs and cycles
co-simulated, wall seconds of the simulations, cycles per second; cycles are the runs' ``cycles`` counters,
and the clock cycles with loading and unloading follow in parentheses) and write the same figures as JSON
to ``.pytest_cache/d/accel-cosim/summary.json``. The figures are those of the successful ``run_cosim`` calls
(``verification.cosim.completed_runs``); they travel to the reporting process in the test reports'
``user_properties``, so pytest-xdist workers' runs count too (when this conftest is loaded in the
controller, e.g. ``pytest -n 2 tests/cosim``).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

PROPERTY = "accel-cosim-run"  # the user_properties entry carrying one run's figures
_runs: list[dict] = []  # the figures of this session's runs, as the reports bring them
_seen: dict[str, int] = {}  # per test, how many of its runs are in _runs already


def pytest_sessionstart(session: pytest.Session) -> None:
    _runs.clear()
    _seen.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    # Attach the runs that this test's phase completed before its report is made (and sent, under xdist).
    harness = sys.modules.get("verification.cosim")
    if harness is not None:
        while harness.completed_runs:
            item.user_properties.append((PROPERTY, harness.completed_runs.pop(0)))
    return (yield)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    # user_properties accumulate over a test's phases: every report repeats the earlier ones, so each
    # run is taken from the first report that carries it.
    runs = [value for name, value in report.user_properties if name == PROPERTY]
    seen = _seen.get(report.nodeid, 0)
    _runs.extend(runs[seen:])
    _seen[report.nodeid] = max(seen, len(runs))


KEYS = ("tiles", "macs", "cycles", "clock_cycles", "wall_s")


def summarize(runs: list[dict]) -> dict[str, dict]:
    """Sum the runs' figures per simulator."""
    out: dict[str, dict] = {}
    for run in runs:
        s = out.setdefault(run["sim"], dict.fromkeys(("runs", *KEYS), 0))
        s["runs"] += 1
        for key in KEYS:
            s[key] += run[key]
    for s in out.values():
        s["wall_s"] = round(s["wall_s"], 3)
        ok = s["wall_s"] > 0
        s["cycles_per_s"] = round(s["cycles"] / s["wall_s"], 1) if ok else None
        s["clock_cycles_per_s"] = round(s["clock_cycles"] / s["wall_s"], 1) if ok else None
    return out


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    if not _runs:
        return
    figures = summarize(_runs)
    terminalreporter.section("accel co-simulation")
    for sim, s in figures.items():
        rate = f"{s['cycles_per_s']:,.0f}" if s["cycles_per_s"] is not None else "-"
        clock = f"{s['clock_cycles_per_s']:,.0f}" if s["clock_cycles_per_s"] is not None else "-"
        terminalreporter.write_line(
            f"{sim}: {s['tiles']} tiles in {s['runs']} simulations, {s['macs']:,} MACs, "
            f"{s['cycles']:,} cycles in {s['wall_s']:.1f} s of simulation: {rate} cycles/s "
            f"({s['clock_cycles']:,} clock cycles with loading and unloading: {clock}/s)"
        )
    cache = getattr(config, "cache", None)
    if cache is not None:
        path = Path(cache.mkdir("accel-cosim")) / "summary.json"
        path.write_text(json.dumps(figures, indent=2) + "\n")
        terminalreporter.write_line(f"figures: {path}")
