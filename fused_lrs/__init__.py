"""fused_lrs: the learning-rate schedule and the optimizer update in one GPU launch per step."""

import os as _os

# Run from a source checkout (no install), the kernels live in the sibling top-level kernels/
# directory; installed, they are fused_lrs/kernels. Extending __path__ lets `fused_lrs.kernels`
# resolve in both cases without ever installing a top-level `kernels` module.
_checkout = _os.path.dirname(_os.path.dirname(_os.path.abspath(__file__)))
if not _os.path.isdir(_os.path.join(__path__[0], "kernels")) and _os.path.isfile(
        _os.path.join(_checkout, "kernels", "kinds.py")):
    __path__.append(_checkout)

__version__ = "0.1.0"

from fused_lrs import algorithms, schedules  # noqa: E402
from fused_lrs.migrate import from_torch  # noqa: E402
from fused_lrs.range_test import LRFindResult, lr_find  # noqa: E402

# Every optimizer class the registry lists, as fused_lrs.<ClassName>.
globals().update({cls.__name__: cls for cls in algorithms.OPTIMIZERS})

__all__ = ["schedules", "from_torch", "lr_find", "LRFindResult",
           *(cls.__name__ for cls in algorithms.OPTIMIZERS)]
