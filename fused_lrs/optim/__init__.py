"""The machinery every fused optimizer shares: the base class (``base.py``), the step
description (``step.py``), its backends (``backends/``), the compiled step's custom op
(``op.py``), the schedule state and checkpoints. The classes themselves are the registry's
(``fused_lrs.algorithms``), importable as ``fused_lrs.FusedAdamScheduled`` and the like."""
