"""``accel sweep``: one trace over a grid of configuration parameters, every point in its own process.

A parameter is named as in a system configuration file: an engine field (``pes``, ``lanes``,
``input_depth``, ...; ``engine.pes`` also works), or ``dram.bytes_per_cycle``, ``dram.latency_cycles``,
``report.prune_threshold``. The engine's kernel, stride, padding and groups are refused: they are the
build's maxima and every layer runs with its own, so they change no figure. Each grid point runs the
whole network (:func:`sim.network.run_network`) and keeps the network figures of its report; the table goes to
``sweep.csv`` and ``sweep.json`` and the plots (speed-up and energy against each parameter) next to them.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import json
import math
import multiprocessing
import multiprocessing.connection
import os
import re
import signal
import traceback
from collections.abc import Callable

from outfiles.interrupts import on_stop, signals_blocked
from sim.results import DESIGNS
from spec.config import ConfigError, EngineConfig
from spec.errors import UserError
from spec.system import DramConfig, ReportOptions, SystemConfig

__all__ = ["PER_LAYER_FIELDS", "SWEEP_COLUMNS", "parse_param", "run_sweep", "sweep_points"]

# Network figures kept per grid point (keys of report.json's "network").
SWEEP_COLUMNS = (
    "cycles_dense",
    "cycles_gated",
    "speedup",
    "theoretical_speedup",
    "speedup_ratio",
    *(f"{figure}_{design}" for figure in ("energy_pj", "dram_bytes") for design in DESIGNS),
)

_SECTIONS = {"engine": EngineConfig, "dram": DramConfig, "report": ReportOptions}
# Engine fields that are the build's maxima, each layer running with its own (sim.network.engine_config_for):
# sweeping them would run the same network at every grid point (or refuse it), so they are refused.
PER_LAYER_FIELDS = EngineConfig.LAYER_FIELDS
MAX_GRID_POINTS = 10_000  # a grid larger than this is a typo, not a sweep (one network run per point)
_NUMBER = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?", re.ASCII)
_BOOLS = {"true": True, "yes": True, "1": True, "false": False, "no": False, "0": False}


def _field_type(section: str, name: str):
    for f in dataclasses.fields(_SECTIONS[section]):
        if f.name == name:
            return type(f.default) if not isinstance(f.default, dataclasses._MISSING_TYPE) else int
    return None


def _sweepable_engine_fields() -> list[str]:
    return [f.name for f in dataclasses.fields(EngineConfig) if f.name not in PER_LAYER_FIELDS]


def parse_param(text: str) -> tuple[str, list]:
    """``NAME=V1,V2,...`` → (``section.field``, values); refuses unknown names, bad values and the engine
    fields that are the build's maxima (:data:`PER_LAYER_FIELDS`)."""
    if "=" not in text:
        raise ConfigError(f"sweep parameter {text!r}: expected NAME=V1,V2,... (e.g. pes=4,8,16)")
    name, _, values = text.partition("=")
    name = name.strip()
    section, dot, field = name.rpartition(".")
    section = section or ("" if dot else "engine")  # ".pes" names no section
    if section not in _SECTIONS or _field_type(section, field) is None:
        known = _sweepable_engine_fields() + [
            f"{s}.{f.name}" for s in ("dram", "report") for f in dataclasses.fields(_SECTIONS[s])
        ]
        raise ConfigError(f"sweep parameter {name!r}: unknown (known: {', '.join(known)})")
    if section == "engine" and field in PER_LAYER_FIELDS:
        raise ConfigError(
            f"sweep parameter {name!r}: cannot be swept: the engine's {field} is the largest the build "
            "runs and every layer runs with its own, so every grid point would run the same network "
            f"(sweepable engine fields: {', '.join(_sweepable_engine_fields())})"
        )
    kind = _field_type(section, field)
    expected = {int: "an integer", float: "a number", bool: "true or false"}.get(kind, kind.__name__)
    out = []
    for v in values.split(","):
        v = v.strip()
        try:
            if kind is bool:
                if v.lower() not in _BOOLS:
                    raise ValueError(v)
                out.append(_BOOLS[v.lower()])
            elif not _NUMBER.fullmatch(v) or (kind is int and not v.lstrip("+-").isdigit()):
                raise ValueError(v)  # plain ASCII numbers only: no "1_6", no other scripts' digits
            else:
                out.append(kind(v))
        except ValueError:
            raise ConfigError(f"sweep parameter {name!r}: value {v!r} is not {expected}") from None
    if not out or len(set(out)) != len(out):
        raise ConfigError(f"sweep parameter {name!r}: give distinct values, got {values!r}")
    return f"{section}.{field}", out


def _apply(base: SystemConfig, point: dict) -> SystemConfig:
    changes: dict[str, dict] = {}
    for key, value in point.items():
        section, field = key.split(".")
        changes.setdefault(section, {})[field] = value
    try:
        return dataclasses.replace(
            base,
            **{s: dataclasses.replace(getattr(base, s), **kw) for s, kw in changes.items()},
        )
    except ConfigError as exc:
        raise ConfigError(f"sweep point {point}: {exc}") from None


def sweep_points(base: SystemConfig, params: list[tuple[str, list]]) -> list[tuple[dict, SystemConfig]]:
    """Every grid point and its configuration (all checked before anything runs)."""
    names = [n for n, _ in params]
    size = math.prod(len(values) for _, values in params)
    if size > MAX_GRID_POINTS:
        raise ConfigError(
            f"sweep: {' x '.join(str(len(v)) for _, v in params)} = {size} grid points; at most "
            f"{MAX_GRID_POINTS} (each point runs the whole network)"
        )
    for name in names:
        if name.removeprefix("engine.") in PER_LAYER_FIELDS:
            parse_param(f"{name}=0")  # refused there, with the reason
    points = []
    for combo in itertools.product(*(v for _, v in params)):
        point = dict(zip(names, combo, strict=True))
        points.append((point, _apply(base, point)))
    return points


def _run_point(args) -> dict:
    trace_path, config, samples, point = args
    # Each worker process runs one grid point on one core (Numba's cache is shared on disk).
    from accel.energy import load_energy_table
    from accel.report import build_report
    from sim.network import run_network
    from trace_format import load_trace

    try:
        trace = load_trace(trace_path, verify_data=False)  # its data was verified once, before the sweep
        table = load_energy_table(config.energy_table)
        run = run_network(trace, config, samples=samples)
        net = build_report(run, trace, table)["network"]
    except UserError as exc:  # this point's configuration does not fit the trace: its row says why
        return {**point, **dict.fromkeys(SWEEP_COLUMNS), "error": str(exc)}
    bad = [k for k in SWEEP_COLUMNS if net[k] is not None and not math.isfinite(net[k])]
    if bad:
        return {**point, **dict.fromkeys(SWEEP_COLUMNS), "error": f"{bad[0]} is not finite ({net[bad[0]]})"}
    return {**point, **{k: net[k] for k in SWEEP_COLUMNS}, "error": ""}


def run_sweep(
    trace_path: str,
    base: SystemConfig,
    params: list[tuple[str, list]],
    samples: int | None = None,
    jobs: int | None = None,
    progress: Callable[[], None] | None = None,
) -> list[dict]:
    """Run every grid point (``jobs`` processes, default all cores); rows in grid order."""
    points = sweep_points(base, params)
    jobs = min(jobs or os.cpu_count() or 1, os.cpu_count() or 1)  # one process per core at most
    work = [(trace_path, cfg, samples, point) for point, cfg in points]
    rows: list[dict] = []
    if jobs == 1:
        for w in work:
            rows.append(_run_point(w))
            if progress:
                progress()
        return rows
    return _run_in_processes(work, min(jobs, len(work)), progress)


def _run_in_processes(work: list[tuple], jobs: int, progress: Callable[[], None] | None) -> list[dict]:
    """``_run_point`` of every item, one forked process per item, at most ``jobs`` at a time.

    One process per grid point, each answering through its own pipe, rather than a pool: the workers share
    no lock, so on Ctrl-C, SIGTERM or an error the parent kills the running ones and returns at once (a
    pool stopped at the wrong moment waits forever on a queue lock that a killed worker held).
    """
    rows: list[dict | None] = [None] * len(work)
    pending = iter(enumerate(work))
    running: dict = {}  # the pipe's reading end -> (index, process)

    def kill_running() -> None:
        for _, proc in list(running.values()):
            proc.kill()

    stopping = on_stop(kill_running)  # Ctrl-C or SIGTERM: the grid points' processes are killed first
    stopping.__enter__()
    try:
        while True:
            while len(running) < jobs and (item := next(pending, None)) is not None:
                reader, writer = multiprocessing.Pipe(duplex=False)
                # Forked with Ctrl-C and SIGTERM held back: the child resets their handlers (it must not run
                # the parent's clean-up) before it takes them.
                with signals_blocked():  # and registered before a stop signal can look for it
                    proc = multiprocessing.Process(target=_point_process, args=(writer, item[1]), daemon=True)
                    proc.start()
                    running[reader] = (item[0], proc)
                writer.close()
            if not running:
                break
            for reader in multiprocessing.connection.wait(list(running)):
                index, proc = running.pop(reader)
                try:
                    status, value = reader.recv()
                except (EOFError, OSError):
                    status, value = "lost", None
                reader.close()
                proc.join()
                if status == "lost":  # killed from outside (the OOM killer): this point's row says so
                    point = work[index][3]
                    why = f"the grid point's process ended with status {proc.exitcode} and no result"
                    value = {**point, **dict.fromkeys(SWEEP_COLUMNS), "error": why}
                elif status != "ok":
                    raise RuntimeError(f"sweep grid point {index}: {value}")
                rows[index] = value
                if progress:
                    progress()
    finally:
        for reader, (_, proc) in running.items():
            proc.kill()
            proc.join()
            reader.close()
        stopping.__exit__(None, None, None)
    return rows


def _point_process(conn, item: tuple) -> None:
    # The parent handles Ctrl-C (the terminal sends it to the whole process group) and kills this process;
    # SIGTERM ends it at once. It was forked with both held back and the parent's handlers installed.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        conn.send(("ok", _run_point(item)))
    except Exception:
        conn.send(("error", traceback.format_exc()))
    finally:
        conn.close()


def sweep_csv(rows: list[dict], names: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=[*names, *SWEEP_COLUMNS, "error"], lineterminator="\n")
    writer.writeheader()
    for r in rows:
        writer.writerow({k: ("" if r.get(k) is None else r.get(k, "")) for k in writer.fieldnames})
    return buf.getvalue()


def sweep_json(rows: list[dict], names: list[str], trace: str, base: SystemConfig) -> str:
    return json.dumps(
        {"trace": trace, "base_config": base.to_dict(), "parameters": names, "rows": rows}, indent=1
    )
