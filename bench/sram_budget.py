"""Figures of docs/chip-design.md: SRAM budget, tile fit under the banked layout, efficiency estimates.

    python bench/sram_budget.py

Pure arithmetic on the default EngineConfig, the shipped traces' tile plans (sim.tiling.plan_layer, as the
network runner cuts them) and bench/results/phase2_designs.json (the phase-2 study). Prints every figure the
design document quotes; nothing here is a measurement of hardware that does not exist yet.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from sim.network import engine_config_for  # noqa: E402
from sim.tiling import plan_layer  # noqa: E402
from spec.config import EngineConfig  # noqa: E402
from trace_format import load_trace  # noqa: E402

CFG = EngineConfig()
P, L = CFG.pes, CFG.lanes
WINDOW = (16, 64)
K_MAX, G_MAX = 7, 4

# Queue entry of the chip design (docs/chip-design.md, section 1): field -> bits.
ENTRY = {
    "lin (output entry)": (CFG.output_depth - 1).bit_length(),
    "co (tile output channel)": (CFG.threshold_depth - 1).bit_length(),
    "ia (input position offset oy*Wp+ox)": (CFG.input_depth - 1).bit_length(),
    "g (gate group)": (G_MAX - 1).bit_length(),
    "pad box (ky_lo, ky_hi, kx_lo, kx_hi)": 4 * (K_MAX - 1).bit_length(),
}
TODAY_ENTRY = 109  # rtl.engine.queue_layout on the default configuration (docs/phase2-designs.md)


def budget() -> None:
    e = sum(ENTRY.values())
    print("queue entry:", ENTRY, "=", e, "bits")
    inp = CFG.input_depth * L * CFG.act_width
    wt = CFG.weight_depth * L * CFG.weight_width
    thr = CFG.threshold_depth * CFG.acc_width
    out_g = CFG.output_depth * (CFG.acc_width + 1)
    out_d = CFG.output_depth * CFG.acc_width
    queue = CFG.output_depth * e
    queue_today = CFG.output_depth * TODAY_ENTRY
    print(f"input {inp:,}  weight {wt:,}  threshold {thr:,}  output gated {out_g:,} dense {out_d:,}")
    today = f"today {CFG.output_depth} x {TODAY_ENTRY} = {queue_today:,}"
    print(f"queue {CFG.output_depth} x {e} = {queue:,}   ({today})")
    dense1 = inp + wt + out_d
    dense2 = 2 * dense1
    rows = {
        "today, single buffers (study)": (inp + wt + thr + out_g + queue_today, dense1),
        "chip, single buffers": (inp + wt + thr + out_g + queue, dense1),
        "chip, ping-pong (queue single) vs dense ping-pong": (2 * (inp + wt + thr + out_g) + queue, dense2),
        "chip, ping-pong vs dense single (worst reading)": (2 * (inp + wt + thr + out_g) + queue, dense1),
        "today's queue, ping-pong vs dense ping-pong": (2 * (inp + wt + thr + out_g) + queue_today, dense2),
    }
    for name, (g, d) in rows.items():
        print(f"  {name:52} gated {g:>10,}  dense {d:>10,}  ratio {g / d:.3f}  1.5x = {int(1.5 * d):,}")
    for w in WINDOW:
        slots = (G_MAX - 1) * (P - 1).bit_length()  # per-slot input bank keys
        ent = w * (e + slots + 1)
        print(
            f"  window {w}: entries {w} x ({e} + {slots} bank keys + 1 valid) = {ent:,} flops; "
            f"compat {w * w:,} + age {w * w:,} flops; total {ent + 2 * w * w:,}"
        )


def fit() -> None:
    """Per-bank capacity of every shipped tile under the banked layouts; B2 of the gated tiles."""
    bank_w = CFG.weight_depth // P
    for path in sorted((REPO / "traces").glob("*.npz")):
        trace = load_trace(path)
        bad_w = bad_in = gated_tiles = 0
        b2_min = None
        tiles = 0
        max_dims = [0, 0, 0, 0]
        for layer in trace:
            m = layer.meta
            if not m.is_engine_layer or (m.kind == "conv" and m.groups != 1) or m.c_in < 2:
                continue
            cfg, base = engine_config_for(CFG, layer)
            for t in plan_layer(cfg, m.c_in, m.c_out, m.h, m.w, m.h_out, m.w_out, base, cfg.padding):
                g = t.geometry
                seg = g.segments(cfg)
                k, s = cfg.kernel, cfg.stride
                tiles += 1
                # weights: channel-minor banks, ceil(c_out/P) channel slots per bank
                if -(-g.c_out // P) * seg.n_chunks * k * k > bank_w:
                    bad_w += 1
                # inputs: stride-deinterleaved layout, h_in and w_in rounded up to a multiple of S
                hp, wp = -(-g.h_in // s) * s, -(-g.w_in // s) * s
                if seg.n_chunks * hp * wp > CFG.input_depth:
                    bad_in += 1
                dims = (g.h_in, g.w_in, g.h_out, g.w_out)
                max_dims = [max(a, b) for a, b in zip(max_dims, dims, strict=True)]
                if m.gated:
                    gated_tiles += 1
                    b2 = k * k * (seg.n_seg - 1) * seg.nch_c
                    b2_min = b2 if b2_min is None else min(b2_min, b2)
        print(
            f"  {path.stem:32} tiles {tiles:4}  weight-bank overflow {bad_w:3}  input overflow {bad_in:3}  "
            f"gated tiles {gated_tiles:4}  min B2 {b2_min}  max h_in,w_in,h_out,w_out {max_dims}"
        )


def efficiency() -> None:
    """Section 6 bound example and the study's B64 figures with this design's fixed overheads."""
    n, b = 4096, 36
    b1 = b2 = b
    n_on = round(0.3 * n)
    w_issue = (n * b1 + n_on * b2) / P
    for f in (1.0, 0.97, 0.86):
        fill_loss = (1 / f - 1) * n_on * b2 / P
        fixed = 3 * P + 8 + min(64, n_on)
        eta = w_issue / (w_issue + fill_loss + b2 + fixed)
        print(
            f"  bound N={n} rho=0.3 B1=B2={b} f={f}: W={w_issue:.1f} fill loss {fill_loss:.1f} "
            f"+ B2 {b2} + fixed {fixed} -> eta >= {eta:.4f}"
        )
    study = json.loads((REPO / "bench" / "results" / "phase2_designs.json").read_text())
    by_trace: dict[str, list] = {}
    for lay in study["layers"]:
        by_trace.setdefault(lay["trace"], []).append(lay)
    for name, layers in by_trace.items():
        e = study["traces"][name]
        theo = e["theoretical_speedup"]
        tiles = sum(x["tiles"] for x in layers)  # over all samples
        dense = sum(x["dense_cycles"] for x in layers)
        gated = sum(x["designs"]["B64"]["gated_cycles"] for x in layers)
        p1_extra = sum(x["designs"]["B64"]["phase1_replay_cycles"] for x in layers) - e["model_phase1_cycles"]
        # fixed cycles: today dense 3, gated 6 (when gates_on > 0); chip dense P + 4, gated
        # P + 4 + (F + P) + (4 + P) with F <= 64: upper bound, every tile taken with gates on and F = 64
        dense_new = dense + tiles * (P + 4 - 3)
        gated_new = gated + p1_extra + tiles * ((P + 4 + 64 + P + 4 + P) - 6)
        print(
            f"  {name:32} tiles {tiles:5} B64 study {dense / gated / theo:.4f}; +phase-1 stalls "
            f"{dense / (gated + p1_extra) / theo:.4f}; +chip fixed cycles (upper bound) "
            f"{dense_new / gated_new / theo:.4f}"
        )


if __name__ == "__main__":
    print("== SRAM budget (default configuration)")
    budget()
    print("== tile fit under the banked layouts (every tile of every shipped trace)")
    fit()
    print("== efficiency")
    efficiency()
