"""The machinery every fused optimizer shares: the base class (``base.py``), the step
description (``step.py``), its backends (``backends/``), the compiled step's custom op
(``op.py``), the schedule state and checkpoints. The classes themselves are the registry's
(``fused_lrs.algorithms``); ``fused_lrs.optim.FusedAdamScheduled`` and the like resolve there."""


def __getattr__(name: str):
    # Lazily: the classes import this package's base, so it cannot import them first.
    from fused_lrs import algorithms

    if name in algorithms.__all__:
        return getattr(algorithms, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
