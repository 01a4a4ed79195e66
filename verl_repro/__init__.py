"""verl-repro: RePro and CorR-PO for veRL.

Importing this package is cheap and does not import veRL; the veRL registrations live in
:mod:`verl_repro.plugin.entry`, which veRL imports through its ``verl.plugins`` entry point.
"""

__version__ = "0.1.0"
