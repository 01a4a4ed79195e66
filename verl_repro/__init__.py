"""verl-repro: RePro and CorR-PO for veRL.

Importing this package is cheap and does not import veRL; the veRL registrations live in
:mod:`verl_repro.plugin.entry`, which veRL imports through its ``verl.plugins`` entry point.
"""

__version__ = "0.1.0"


class UsageError(ValueError):
    """Something the user gave — a command-line option, a setting, an input file — is wrong.

    The message names the input and says what to do; every command prints it as one line on
    stderr, without a traceback, and exits 2 (:func:`verl_repro.cli.report_usage_errors`).
    """
