#!/usr/bin/env python3
"""Prepare the recipes' data as veRL parquet (thin CLI over ``verl_repro.evaluation.datasets``; ``--help``
lists the data sets and options).

    python scripts/prepare_data.py all --out ~/data/verl_repro
"""

import sys

from verl_repro.evaluation.datasets import main

if __name__ == "__main__":
    sys.exit(main())
