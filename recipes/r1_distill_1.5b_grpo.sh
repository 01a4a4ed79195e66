#!/usr/bin/env bash
# Baseline: plain GRPO on DeepSeek-R1-Distill-Qwen-1.5B, same data, reward and hyperparameters as
# Config: recipes/r1_distill_1.5b_grpo.yaml (paper hyperparameters: recipes/paper_defaults.yaml).
#
#   bash recipes/r1_distill_1.5b_grpo.sh                      # train on 1 node x 8 GPUs
#   bash recipes/r1_distill_1.5b_grpo.sh --dry-run            # validate the full config on the CPU, start nothing
#   bash recipes/r1_distill_1.5b_grpo.sh --cpu-smoke          # a few steps on a tiny model on the CPU
#   NNODES=2 N_GPUS=8 bash recipes/r1_distill_1.5b_grpo.sh data.max_response_length=32768 trainer.logger='[console,wandb]'
#
# Environment: NNODES, N_GPUS, DATA_DIR, TRAIN_DATA, VAL_DATA, PYTHON (see recipes/common.sh).
set -euo pipefail
RECIPE=r1_distill_1.5b_grpo
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"
run_recipe "$@"
