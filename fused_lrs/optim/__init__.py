"""The optimizer classes: torch.optim drop-ins with a device-side schedule."""

from fused_lrs.optim.adam import FusedAdamScheduled, FusedAdamWScheduled
from fused_lrs.optim.sgd import FusedSGDScheduled

__all__ = ["FusedAdamScheduled", "FusedAdamWScheduled", "FusedSGDScheduled"]
