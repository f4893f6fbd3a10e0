"""Make the co-simulation helpers importable (``cosim_harness``, ``cosim_data``, ``engine_tb``) and the
repository root too: the cocotb simulator process receives this ``sys.path`` as its PYTHONPATH."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
for path in (str(HERE.parents[1]), str(HERE)):
    if path not in sys.path:
        sys.path.insert(0, path)
