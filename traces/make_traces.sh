#!/usr/bin/env bash
# Regenerate the trained traces shipped in traces/ (docs/trace-format.md) from a fresh clone:
#   (a) traces/cgnet-resnet20-digits.npz         CGNet ResNet-20 (G = 4), >= 3x fewer FLOPs than dense
#   (b) traces/pruned-resnet20-digits.npz        polarization-pruned ResNet-20, 50% FLOP target (Algorithm 1)
#   (c) traces/pruned-cgnet-resnet20-digits.npz  (b) then gated (G = 4)
# Needs the train extra (pip install '.[train]': torch==2.13.0 CPU build, scikit-learn for the digits set).
# Everything is seeded; about 30 minutes on 2 CPU cores. Run directories go to runs/ (git-ignored). The
# command lines below are the ones recorded in each trace's meta.made_by.command.
set -euo pipefail
cd "$(dirname "$0")/.."

# The dense baseline (accuracy reference of all three).
accel train --model resnet20 --dense --epochs 20 --batch-size 64 --seed 0 --out runs/resnet20-dense --no-progress

# (a) Gated (G = 4) starting from the dense weights; the gating target T is searched for 72% of the FLOPs
# removed (3.6x) within 3%, then 20 epochs of training.
accel train --model resnet20 --gating-groups 4 --target 1.5 --epochs 20 --batch-size 64 --lr 0.05 --seed 0 \
    --gate-flop-target 0.72 --search-delta 0.03 --init-from runs/resnet20-dense --out runs/resnet20-cg4 --no-progress
accel trace export runs/resnet20-cg4 --out traces/cgnet-resnet20-digits.npz --samples 4 --no-progress

# (b) Polarization pruning: Algorithm 1 on (t, lambda) for a 50% FLOP reduction (delta 5%) from
# (t, lambda) = (1.2, 0.01), 15-epoch trials (the trial that lands in range is the model kept), channel
# counts kept at multiples of 4, then 10 epochs of fine-tuning of the pruned network.
accel train --model resnet20 --dense --epochs 15 --batch-size 64 --seed 0 --prune-target 0.5 --prune-lam0 0.01 \
    --prune-multiple-of 4 --search-epochs 15 --finetune-epochs 10 --baseline runs/resnet20-dense \
    --out runs/resnet20-pruned --no-progress
accel trace export runs/resnet20-pruned --out traces/pruned-resnet20-digits.npz --samples 4 --no-progress

# (c) The pruned network of (b), gated (G = 4) and trained 20 more epochs; T searched as in (a).
accel train --model resnet20 --gating-groups 4 --target 1.5 --epochs 20 --batch-size 64 --lr 0.05 --seed 0 \
    --gate-flop-target 0.72 --search-delta 0.03 --init-from runs/resnet20-pruned \
    --out runs/resnet20-pruned-cg4 --no-progress
accel trace export runs/resnet20-pruned-cg4 --out traces/pruned-cgnet-resnet20-digits.npz --samples 4 --no-progress
