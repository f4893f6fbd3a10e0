"""The report's figures on every shipped trace, as digests: the "no behaviour change" check of a refactor.

``python bench/figures.py --save bench/results/figures.json`` runs ``accel report`` on the four shipped
traces, plain and with ``--zero-compression --prune-threshold 0.05``, and records a SHA-256 digest of each
``report.json`` (canonical JSON, the trace's path left out) and ``layers.csv``. ``--check FILE`` runs the
same reports and names every digest that differs (exit status 1); ``tests/test_figures.py`` runs it on
every CI run. A change that means to change figures saves a new file and says why in its commit.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from accel.cli import main as accel

ROOT = Path(__file__).resolve().parents[1]
TRACES = ROOT / "traces"
OPTIONS = {"plain": [], "zc-0.05": ["--zero-compression", "--prune-threshold", "0.05"]}


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def figures() -> dict[str, dict[str, str]]:
    """``{"<trace>/<options>": {"report.json": digest, "layers.csv": digest}}`` for every shipped trace."""
    out: dict[str, dict[str, str]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for trace in sorted(TRACES.glob("*.npz")):
            for name, extra in OPTIONS.items():
                folder = Path(tmp) / f"{trace.stem}-{name}"
                argv = ["report", str(trace), "--no-plots", "--no-progress", "--out", str(folder), *extra]
                with contextlib.redirect_stdout(io.StringIO()):
                    status = accel(argv)
                if status != 0:
                    raise SystemExit(f"accel {' '.join(argv)}: exit status {status}")
                report = json.loads((folder / "report.json").read_text())
                report["trace"].pop("path", None)  # where the clone lives is not a figure
                canonical = json.dumps(report, sort_keys=True, separators=(",", ":")).encode()
                out[f"{trace.name}/{name}"] = {
                    "report.json": _digest(canonical),
                    "layers.csv": _digest((folder / "layers.csv").read_bytes()),
                }
    return out


def _commit() -> str:
    try:
        return subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def check(path: Path) -> list[str]:
    """The keys whose digests differ from the saved ones (empty: every figure identical)."""
    saved = json.loads(Path(path).read_text())["figures"]
    now = figures()
    return sorted(
        f"{key} {name}"
        for key in sorted(set(saved) | set(now))
        for name in ("report.json", "layers.csv")
        if saved.get(key, {}).get(name) != now.get(key, {}).get(name)
    )


def run(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    action = parser.add_mutually_exclusive_group(required=True)
    action.add_argument("--save", type=Path, metavar="FILE", help="record the digests")
    action.add_argument("--check", type=Path, metavar="FILE", help="compare with recorded digests")
    args = parser.parse_args(argv)
    if args.save:
        record = {"commit": _commit(), "options": OPTIONS, "figures": figures()}
        args.save.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
        print(f"wrote {args.save} ({len(record['figures'])} reports)")
        return 0
    differ = check(args.check)
    for line in differ:
        print(f"differs: {line}")
    print("every figure identical" if not differ else f"{len(differ)} file(s) differ")
    return 1 if differ else 0


if __name__ == "__main__":
    sys.exit(run())
