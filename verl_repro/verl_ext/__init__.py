"""The only place that imports veRL internals: estimators, reward managers, engine vendor,
ground-truth scoring through workers, trainer wiring and the ``repro`` config group."""
