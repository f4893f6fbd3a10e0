"""Fixtures shared by test modules."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(scope="session")
def p2():
    """bench/phase2_designs.py, the phase-2 study (its schedules are oracles for the model and the RTL)."""
    spec = importlib.util.spec_from_file_location("phase2_designs", BENCH / "phase2_designs.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module
