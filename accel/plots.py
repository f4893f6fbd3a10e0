"""PNG plots of a report (``accel report``) and of a sweep (``accel sweep``), drawn with matplotlib's Agg."""

from __future__ import annotations

import functools
import warnings
from pathlib import Path

import matplotlib

from accel.terminal import printable

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

__all__ = [
    "conditional_work_figure",
    "dram_figure",
    "energy_figure",
    "report_plots",
    "speedup_figure",
    "sweep_plots",
]

DESIGN_COLORS = {"dense": "#7f7f7f", "gated": "#1f77b4", "pruned": "#2ca02c"}


def _mapped(report: dict) -> list[dict]:
    return [e for e in report["layers"] if e["mapped"]]


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _label(text) -> str:
    """A name as drawn: non-printable characters escaped as ``repr`` does; ``$`` literal (no mathtext)."""
    return printable(text).replace("$", r"\$")


def _layer_axis(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([_label(n) for n in names], rotation=70, ha="right", fontsize=7)
    ax.set_xlim(-0.6, len(names) - 0.4)


def _note(ax, text: str) -> None:
    """Say in the middle of an axes why it holds nothing to compare."""
    ax.text(0.5, 0.5, text, transform=ax.transAxes, ha="center", va="center", fontsize=10, color="0.3")


def _has_gated_layer(report: dict) -> bool:
    return any(e["gated"] for e in _mapped(report))


NO_MAPPED = "no layer of this trace is mapped to the accelerator"
NO_GATED = "no gated layer: gated = dense"


def speedup_figure(report: dict):
    """Theoretical beside achieved speed-up per mapped layer (``speedup.png``)."""
    layers = _mapped(report)
    names = [e["name"] for e in layers]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.2))
    title = f"{_label(report['trace']['name'])}: speed-up per layer"
    if not layers:
        _note(ax, NO_MAPPED)
        ax.set_title(title, fontsize=9)
        return fig
    ax.bar(
        x - 0.2,
        [e["theoretical_speedup"] or 0 for e in layers],
        0.4,
        label="theoretical (dense / gated MACs)",
        color="#c7c7c7",
    )
    ax.bar(
        x + 0.2,
        [e["speedup"] or 0 for e in layers],
        0.4,
        label="achieved (cycles, DRAM included)",
        color=DESIGN_COLORS["gated"],
    )
    ax.plot(x + 0.2, [e["compute_speedup"] or 0 for e in layers], "k.", label="achieved, compute only")
    ax.axhline(1.0, color="k", lw=0.5)
    if _has_gated_layer(report):
        ratio = report["network"]["gated_layers"].get("speedup_ratio")
        if ratio:
            title += f" (gated layers: {ratio:.3f} of theoretical)"
    else:
        title += f" ({NO_GATED}: every speed-up is 1)"
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("speed-up over dense (x)")
    _layer_axis(ax, names)
    ax.legend(fontsize=7)
    return fig


def conditional_work_figure(report: dict):
    """Share of the conditional path used per gated layer (``conditional_work.png``)."""
    layers = [e for e in _mapped(report) if e["gated"]]
    names = [e["name"] for e in layers]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.2))
    if layers:
        ax.bar(
            x - 0.2,
            [100 * (e["conditional_work_share"] or 0) for e in layers],
            0.4,
            label="conditional-path work done, gated",
            color=DESIGN_COLORS["gated"],
        )
        ax.bar(
            x + 0.2,
            [100 * (e["channels_used_pruned"] or 0) for e in layers],
            0.4,
            label="channels keeping their conditional path (pruning at "
            f"{report['trace']['pruning_threshold']:g})",
            color=DESIGN_COLORS["pruned"],
        )
        ax.legend(fontsize=7)
    else:
        _note(ax, f"{NO_GATED}\n(no conditional path to show)")
    ax.set_ylabel("percent")
    ax.set_ylim(0, 100)
    ax.set_title(
        "Share of the conditional path used per gated layer (cf. the rebuttal's Figure A)", fontsize=9
    )
    _layer_axis(ax, names)
    return fig


def energy_figure(report: dict):
    """Energy per layer and per network, by component (``energy.png``)."""
    layers = _mapped(report)
    names = [e["name"] for e in layers]
    parts = list(layers[0]["energy_breakdown_dense"]) if layers else []
    x = np.arange(len(layers))
    cmap = plt.get_cmap("tab10")
    fig, (ax, ax2) = plt.subplots(
        1, 2, figsize=(max(8, 0.45 * len(layers) + 5), 4.6), gridspec_kw={"width_ratios": [4, 1]}
    )
    for offset, design, hatch in ((-0.2, "dense", "//"), (0.2, "gated", "")):
        bottom = np.zeros(len(layers))
        for i, part in enumerate(parts):
            vals = np.array([e[f"energy_breakdown_{design}"][part] / 1e6 for e in layers])
            ax.bar(
                x + offset,
                vals,
                0.4,
                bottom=bottom,
                color=cmap(i % 10),
                hatch=hatch,
                label=part if design == "dense" else None,
                edgecolor="white",
                lw=0.3,
            )
            bottom += vals
    ax.set_ylabel("energy per image (uJ)")
    title = "Energy per layer: left bar dense (hatched), right bar gated"
    if layers and not _has_gated_layer(report):
        title += f" ({NO_GATED})"
    ax.set_title(title, fontsize=9)
    _layer_axis(ax, names)
    if layers:
        ax.legend(fontsize=7, ncol=2)
    else:
        _note(ax, NO_MAPPED)
    totals = report["network"].get("energy_breakdown", {})
    for j, design in enumerate(("dense", "gated", "pruned")):
        bottom = 0.0
        for i, part in enumerate(parts):
            v = totals.get(design, {}).get(part, 0.0) / 1e6
            ax2.bar(j, v, 0.6, bottom=bottom, color=cmap(i % 10))
            bottom += v
    ax2.set_xticks(range(3))
    ax2.set_xticklabels(["dense", "gated", "pruned"], fontsize=8)
    ax2.set_title("network", fontsize=9)
    return fig


def dram_figure(report: dict):
    """Off-chip traffic per mapped layer (``dram_traffic.png``)."""
    layers = _mapped(report)
    names = [e["name"] for e in layers]
    x = np.arange(len(layers))
    fig, ax = plt.subplots(figsize=(max(6, 0.35 * len(layers) + 2), 4.2))
    for offset, design in ((-0.27, "dense"), (0.0, "gated"), (0.27, "pruned")):
        ax.bar(
            x + offset,
            [e[f"dram_bytes_{design}"] / 1024 for e in layers],
            0.27,
            label=design,
            color=DESIGN_COLORS[design],
        )
    net = report["network"]
    title = (
        f"Off-chip traffic per layer: network dense {net['dram_bytes_dense'] / 1024:.0f} KB, gated "
        f"{net['dram_bytes_gated'] / 1024:.0f} KB, channel-pruned {net['dram_bytes_pruned'] / 1024:.0f} KB"
    )
    if layers and not _has_gated_layer(report):
        title += f"\n({NO_GATED} = pruned)"
    ax.set_title(title, fontsize=9)
    ax.set_ylabel("KB per image")
    _layer_axis(ax, names)
    if layers:
        ax.legend(fontsize=7)
    else:
        _note(ax, NO_MAPPED)
    return fig


def plot_speedup(report: dict, path: Path) -> Path:
    return _save(speedup_figure(report), path)


def plot_conditional_work(report: dict, path: Path) -> Path:
    return _save(conditional_work_figure(report), path)


def plot_energy(report: dict, path: Path) -> Path:
    return _save(energy_figure(report), path)


def plot_dram(report: dict, path: Path) -> Path:
    return _save(dram_figure(report), path)


def _quiet(draw):
    """Draw without matplotlib's layout and missing-glyph warnings on stderr (a name from a trace may hold
    characters no font has; the plot is written all the same)."""

    @functools.wraps(draw)
    def quiet(*args, **kwargs):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            return draw(*args, **kwargs)

    return quiet


@_quiet
def report_plots(report: dict, folder: Path) -> list[Path]:
    """Write the four plots of a report into ``folder``; return their paths."""
    folder = Path(folder)
    return [
        plot_speedup(report, folder / "speedup.png"),
        plot_conditional_work(report, folder / "conditional_work.png"),
        plot_energy(report, folder / "energy.png"),
        plot_dram(report, folder / "dram_traffic.png"),
    ]


@_quiet
def sweep_plots(rows: list[dict], params: list[str], folder: Path) -> list[Path]:
    """Speed-up and energy against each swept parameter (other parameters: each of their values a line)."""
    folder = Path(folder)
    paths = []
    for p in params:
        others = [q for q in params if q != p]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.8))
        groups: dict[tuple, list[dict]] = {}
        for r in rows:
            groups.setdefault(tuple(r[q] for q in others), []).append(r)
        for key, rs in sorted(groups.items()):
            rs = sorted(rs, key=lambda r: r[p])
            label = ", ".join(f"{q}={v}" for q, v in zip(others, key, strict=True)) or None
            xs = [r[p] for r in rs]
            ax1.plot(xs, [r["speedup"] for r in rs], "o-", label=label)
            ax2.plot(xs, [r["energy_pj_gated"] / 1e6 for r in rs], "o-", label=label)
        ax1.set_xlabel(p)
        ax1.set_ylabel("gated speed-up over dense (x)")
        ax2.set_xlabel(p)
        ax2.set_ylabel("gated energy per image (uJ)")
        if len(groups) > 1 and len(groups) <= 12:
            ax1.legend(fontsize=6)
        fig.suptitle(f"Sweep over {p}", fontsize=10)
        name = p.removeprefix("engine.").replace(".", "_")  # engine fields: named as in --param
        paths.append(_save(fig, folder / f"sweep_{name}.png"))
    return paths
