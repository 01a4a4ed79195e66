"""Data preparation and offline evaluation: the math training and test sets in veRL's layout
(:mod:`~verl_repro.evaluation.datasets`) and avg@n / pass@k of a model on them
(:mod:`~verl_repro.evaluation.evaluate`), behind ``scripts/prepare_data.py`` and ``scripts/evaluate.py``."""
