"""The layout of the tables a step hands to a backend: plain Python ints, no triton import.

The optimizer (``fused_lrs/optim/step.py``) writes these tables and every backend reads them;
the Triton kernel (``kernels/optim.py``) wraps the same numbers as ``tl.constexpr``. One home,
so a column cannot mean one thing to the writer and another to the kernel.
"""

# The group row, float64, one per parameter group: the group's base lr and hyperparameters.
#   Adam: lr, beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled
#   SGD:  lr, momentum, dampening, -, weight_decay, nesterov, maximize, -
G_LR, G_A, G_B, G_EPS, G_WD, G_FLAG, G_MAXIMIZE, G_DECOUPLED = range(8)
GROUP_COLS = 8

# The kernel's tensor table, int64, one row per parameter with a gradient: the addresses that
# stay put from step to step, the element count, and ``group * META_GROUP + dtype code``. The
# gradients' and step counts' addresses are separate int64 arrays, one entry per row: gradient
# addresses are the one thing that changes from step to step (zero_grad(set_to_none=True)),
# so that array is all a steady-state step uploads; the step-count array is contiguous so that
# the counter epilogue gathers it with every thread of a program.
(COL_PARAM, COL_STATE1, COL_STATE2, COL_STATE3, COL_MASTER, COL_NUMEL, COL_META) = range(7)
TENSOR_COLS = 7
META_GROUP = 8

# dtype codes of the tensor table: the parameter's dtype, and for 3 and 4 a 16-bit parameter
# with an fp32 master copy and fp32 states (master_weights=True).
DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}
MASTER_CODE_OFFSET = 2
