"""How the package plugs into veRL: the ``verl.plugins`` entry point (:mod:`~verl_repro.plugin.entry`),
registrations deferred until veRL imports a registry (:mod:`~verl_repro.plugin.import_hooks`), and
the pinned veRL release with the record of every patch of its private names
(:mod:`~verl_repro.plugin.patching`)."""
