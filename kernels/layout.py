"""The layout of the tables a step hands to a backend: plain Python ints, no triton import.

The optimizer (``fused_lrs/optim/step.py``) writes these tables and every backend reads them;
the Triton kernel (``kernels/optim.py``) wraps the same numbers as ``tl.constexpr``. One home,
so a column cannot mean one thing to the writer and another to the kernel.
"""

# The group row, float64, one per parameter group: four columns every algorithm shares, then
# the algorithm's own (named by its record, ``fused_lrs/algorithms/record.py``), zero-padded.
#   lr: the schedule's base lr; momentum: the coefficient a momentum schedule scales (Adam's
#   beta1, SGD's momentum; 0 where there is none); weight_decay: what a weight-decay schedule
#   scales; maximize: 1.0 flips the gradient.
G_LR, G_MOMENTUM, G_WD, G_MAXIMIZE = range(4)
G_COLUMNS = 4          # the algorithm's first own column
GROUP_COLS = 8         # room for four own columns: NAdam's beta2, eps, momentum_decay, decoupled

# The kernel's tensor table, int64, one row per parameter with a gradient: the addresses that
# stay put from step to step, the element count, and ``group * META_GROUP + combo``, where
# ``combo = dtype code * VARIANTS + variant`` picks the body compiled for the tensor's storage
# dtype and its group's options (the algorithm's ``variant``: amsgrad, momentum, ...). The
# gradients' and step counts' addresses are separate int64 arrays, one entry per row: gradient
# addresses are the one thing that changes from step to step (zero_grad(set_to_none=True)),
# so that array is all a steady-state step uploads; the step-count array is contiguous so that
# the counter epilogue gathers it with every thread of a program.
(COL_PARAM, COL_STATE1, COL_STATE2, COL_STATE3, COL_MASTER, COL_NUMEL, COL_META) = range(7)
TENSOR_COLS = 7
VARIANTS = 8          # an algorithm's variants: three option bits
META_GROUP = 64        # > 5 dtype codes * VARIANTS

# dtype codes of the tensor table: the parameter's dtype, and for 3 and 4 a 16-bit parameter
# with an fp32 master copy and fp32 states (master_weights=True).
DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}
MASTER_CODE_OFFSET = 2
