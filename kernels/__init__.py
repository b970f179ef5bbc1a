"""Triton kernels of fused_lrs, installed as ``fused_lrs.kernels``.

``kinds`` is plain Python and imports no triton, so the specs work where triton is absent. The
kernel modules (``schedule``, ``optim``) import triton: import them only when a kernel runs, and
only after ``TRITON_INTERPRET`` has its final value (``@triton.jit`` reads it when the decorator
runs).
"""
