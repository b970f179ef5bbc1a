"""The learning-rate range test (``lr_find``) on the device schedule."""

from fused_lrs.range_test.result import LRFindResult
from fused_lrs.range_test.sweep import lr_find

__all__ = ["lr_find", "LRFindResult"]
