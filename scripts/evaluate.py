#!/usr/bin/env python3
"""Evaluate a model on the math test sets: avg@n, pass@k, mean length, </think> share (thin CLI over
``verl_repro.evaluation.evaluate``; ``--help`` lists the options). Results go to OUT/results.json and OUT/results.md.

    python scripts/evaluate.py --model deepseek-ai/DeepSeek-R1-Distill-Qwen-1.5B --data-dir ~/data/verl_repro --out eval/base
"""

import sys

from verl_repro.evaluation.evaluate import main

if __name__ == "__main__":
    sys.exit(main())
