#!/usr/bin/env bash
# Rebuild the default model of weights/ from scratch in two `python -m asru_min.pretrain` runs, and time them.
#
#     bash examples/pretrain_default.sh [OUT_DIR] [FACTS_DIR]       # defaults: weights/ and /tmp/asru_facts
#
# 1. facts   (4500 steps, lr 3e-3): every gen / mc / cloze question, utility, describe, refusals; no option
#            matching. Learns the people (cloze ~96 %, ROUGE-L ~1.0) but leaves multiple choice at chance.
# 2. options (5800 steps, lr 1e-3, fresh AdamW from the facts model): first 400 steps of "which option is X?"
#            only (A-B options, then A-D: --match-warmup), then the facts mix plus mc x4 (each copy in its own
#            option order) and "which option is X?" x3. Reading options is an in-context skill this 4-layer model
#            learns late in the full mix (~1500 steps at chance); on the facts model, matching-only batches
#            teach it in ~150 steps (A-B) + ~200 steps (A-D), so multiple choice starts improving ~1000 steps
#            earlier (results/pretrain_60min/README.md).
# Both on two torch threads: run it on an otherwise idle 2-core machine. The world, tokenizer, initialisation
# and batch order are functions of --seed 0. The second run evaluates the gates and writes them into the model
# card of its folder (the first skips evaluation: --no-eval).
set -euo pipefail
OUT=${1:-weights/}
FACTS=${2:-/tmp/asru_facts}
MIX="--image-repeat 2 --strangers 300 --mc-reorder --augment 0.8 --views 12 --threads 2"
start=$(date +%s)
python -m asru_min.pretrain --out "$FACTS" --steps 4500 --lr 3e-3 $MIX --no-eval --ckpt-dir "$FACTS/ckpt"
python -m asru_min.pretrain --init-from "$FACTS" --out "$OUT" --steps 5800 --lr 1e-3 --warmup 100 \
    --match-warmup 400 --mc-repeat 4 --matching --match-repeat 3 $MIX --ckpt-dir "$FACTS/ckpt_options"
echo "pretrain_default: both runs took $(( ($(date +%s) - start) / 60 )) min $(( ($(date +%s) - start) % 60 )) s"
