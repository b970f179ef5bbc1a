"""Triton kernels of fused_lrs, installed as ``fused_lrs.kernels``.

Import these modules only after ``TRITON_INTERPRET`` has its final value: ``@triton.jit``
reads it when the decorator runs.
"""
