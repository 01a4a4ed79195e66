"""``verl-repro demo``: the command (:mod:`~verl_repro.demo.command`, also the one-batch walkthrough)
and the short veRL training runs it starts (:mod:`~verl_repro.demo.training`)."""
