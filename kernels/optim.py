"""One launch per step: the schedule, the optimizer's update and the counters, for every
parameter of every group on a device.

The algorithm arrives as two compile-time functions from its own module
(``kernels/<algorithm>.py``, named by its record in ``fused_lrs/algorithms/``):
  * ``prepare(lr, momentum, weight_decay, step, cols)``: the group's scheduled values (fp64),
    the tensor's step count and a pointer to the group's own columns in, a tuple of
    per-program scalars out, once per program;
  * ``update(p, g, s1_ptr, s2_ptr, s3_ptr, offs, mask, scalars, VARIANT, BF16)``: one block's new
    weights from its fp32 weights and (unscaled, sign-flipped) gradient; it loads and stores
    its own state columns.
An algorithm with scalar states (SCALARS > 0: NAdam's mu_product, ASGD's eta and mu) has
``prepare(lr, momentum, weight_decay, step, cols, old)`` return ``(scalars, new)``: ``old`` and
``new`` are pairs of float32 values, the tensor's scalar states before and after this update
(the second unused with one state).
This file names no algorithm: it walks the tensors, loads and stores weights and gradients, and
advances the counters.

Design
------
Addressing. The launcher writes a device table with one int64 row per parameter that has a
gradient (``kernels/layout.py``): the addresses of the parameter, up to three state tensors and
its fp32 master copy (master_weights=True), its element count, and its group and combo (below).
Two more int64 arrays, one entry per row, hold the gradients' addresses (the only thing that
changes from step to step, so a steady-state step uploads nothing else) and the float32 step
counts' addresses. A program turns an address into a typed pointer with
``.to(tl.pointer_type(...))``, which works compiled and interpreted. The alternatives cost
more: flattening every tensor into one buffer forces users' parameters to be views of it; one
launch per dtype or per group breaks the one-launch promise. A tensor is walked in storage
order, so any dense, non-overlapping layout (channels_last) works when its gradient and states
have the parameter's strides (the launcher checks that).

Work. One program per (tensor, chunk) pair, listed in a second table. A chunk is a whole number
of BLOCKs, chosen by the launcher from the compiled kernel's occupancy; inside a chunk the
program walks BLOCK elements at a time. Full blocks of a tensor whose every address is a
multiple of 16 bytes (decided per tensor, here, from the addresses) take an unmasked path with
alignment hints, which the compiler turns into 128-bit accesses; the ragged block, and every
block of a misaligned tensor, take masked scalar paths. Offsets are int64, so a tensor of
more than 2^31 elements is addressed correctly.

Layouts. ``tl.max_contiguous(offs, 4)`` caps every access at 4 elements per thread: 16 bytes of
fp32, 8 of bf16/fp16. Without it a bf16 tensor loads 8 elements per thread and its fp32 master
and states 4, and each change between the two goes through shared memory. The misaligned path
works on blocks of another shape (SCALAR_BLOCK), and the counter epilogue too (COUNTER_BLOCK):
the compiler lays out accesses of one shape alike, so a scalar path sharing BLOCK's shape drags
1-wide stores into the vector path's layout: the conversions cost shared-memory round trips
(bar.sync) and registers. tests/test_kernels_aot.py holds every variant to its ptxas budget.

dtypes and variants. A program branches once, at run time, on its tensor's combo (dtype code
and the group's variant, e.g. amsgrad) into a body compiled for that pair; only the pairs
present (COMBOS) are compiled. Math is fp32 whatever the storage dtype; schedule and
bias-correction scalars are fp64 and cast once.

Counters. Every program reads the schedule counter ``t`` and its tensor's step count at the
start, and none of them writes those. When a program finishes, it takes a ticket with an
acq_rel atomic on a per-optimizer int32; the program that draws the last ticket knows every
other program has finished (and so has read the counters), advances every listed tensor's step
count and ``t``, and resets the ticket to 0 for the next launch. It advances the step counts
with all of its threads, 256 tensors at a time: three dependent memory round trips per 256
tensors rather than two per tensor (148 tensors: 3 round trips, not 296). A CTA barrier before
the ticket makes the reads of all of a program's threads precede its release. No second launch and
no host involvement, so the counters also advance on every replay of a captured CUDA graph.
Two launches for the same optimizer must not overlap (they would also race on the parameters):
the launcher orders an eager step after the last one when the stream changes; replays of CUDA
graphs that hold the same optimizer's step must be ordered by the caller.

Scalar states. Every program of a tensor reads the old values (in ``prepare``), so none of them
may write the new ones: the tensor's chunk-0 program writes them to a launcher-owned scratch
row (float32 [n_tensors, SCALARS]) and the last program copies every row into the states, as
it advances the step counts (a skipped step copies nothing). A tensor without elements still
gets its chunk-0 program (the launcher lists one): its scalars advance, as torch's do. Without
scalar states (SCALARS = 0) none of this is compiled.

GradScaler. With UNSCALE the gradients are divided by the scaler's scale as they are loaded;
with CHECK_INF every program reads found_inf first and, if it is set, updates nothing, and the
last program leaves the step counts (and, on request, the schedule counter) where they were.
The scaler's tensors are passed as pointers, so no copy precedes the launch.
"""

import triton
import triton.language as tl

from fused_lrs.kernels import layout
from fused_lrs.kernels.access import rne_bf16, typed
from fused_lrs.kernels.schedule import ROW, schedule_lr

# The table layout of kernels/layout.py as constexpr globals (the only globals a jit function
# may read). Tensor table: int64 columns. Group table: float64 columns.
COL_PARAM = tl.constexpr(layout.COL_PARAM)
COL_STATE1 = tl.constexpr(layout.COL_STATE1)
COL_STATE2 = tl.constexpr(layout.COL_STATE2)
COL_STATE3 = tl.constexpr(layout.COL_STATE3)
COL_MASTER = tl.constexpr(layout.COL_MASTER)
COL_NUMEL = tl.constexpr(layout.COL_NUMEL)
COL_META = tl.constexpr(layout.COL_META)
TENSOR_COLS = tl.constexpr(layout.TENSOR_COLS)
META_GROUP = tl.constexpr(layout.META_GROUP)
VARIANTS = tl.constexpr(layout.VARIANTS)
G_LR = tl.constexpr(layout.G_LR)
G_MOMENTUM = tl.constexpr(layout.G_MOMENTUM)
G_WD = tl.constexpr(layout.G_WD)
G_MAXIMIZE = tl.constexpr(layout.G_MAXIMIZE)
G_COLUMNS = tl.constexpr(layout.G_COLUMNS)
GROUP_COLS = tl.constexpr(layout.GROUP_COLS)
# Elements per thread per access (see Layouts above): 16 bytes of fp32.
VEC = tl.constexpr(4)
# A misaligned tensor's block: a shape of its own, so that the compiler lays its scalar
# accesses out apart from the vector path's (a shared shape shares constants, and the vector
# path's 4-wide layout then meets 1-wide stores: 12 more bar.sync, 126 registers for fp32 Adam).
SCALAR_BLOCK = tl.constexpr(512)
# Step counts the last program advances per iteration, 2 per thread of 4 warps; a shape of its
# own too (sharing BLOCK's, the gathered step pointers were converted to the vector layout: 6
# bar.sync).
COUNTER_BLOCK = tl.constexpr(256)


# A block's loads, the algorithm's update and the weights' stores. ``mask=None`` for full
# blocks (unmasked, vectorizable), a mask for the ragged tail. BF16 rounds by hand (see
# access.rne_bf16); other dtypes round in the store's cast.
@triton.jit
def _block(w_ptr, p_ptr, g_ptr, s1_ptr, s2_ptr, s3_ptr, offs, mask, sign, grad_scale, S,
           UPDATE: tl.constexpr, VARIANT: tl.constexpr, S_BF16: tl.constexpr,
           UNSCALE: tl.constexpr, MASTER: tl.constexpr, P_BF16: tl.constexpr):
    p = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    if UNSCALE:
        g = tl.div_rn(g, grad_scale)                  # GradScaler: unscale, as torch's fused
    g = g * sign                                      # maximize flips the gradient
    p = UPDATE(p, g, s1_ptr, s2_ptr, s3_ptr, offs, mask, S, VARIANT, S_BF16)
    # With a master copy, the fp32 result goes to the master and its rounding to the parameter,
    # in the same pass; without one, the rounding is the parameter.
    if MASTER:
        tl.store(w_ptr + offs, p, mask=mask)
    if P_BF16:
        p = rne_bf16(p)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _chunk(trow, g_addr, S, sign, start, end, grad_scale, UPDATE: tl.constexpr,
           CODE: tl.constexpr, VARIANT: tl.constexpr, BLOCK: tl.constexpr,
           UNSCALE: tl.constexpr):
    """Update elements [start, end) of one tensor. CODE 3 and 4 are bf16 and fp16 parameters
    with fp32 master weights and states."""
    # Annotated: a plain assignment would turn these compile-time values into run-time ones.
    MASTER: tl.constexpr = CODE > 2
    P_CODE: tl.constexpr = CODE - 2 if CODE > 2 else CODE     # the parameter's and gradient's
    S_CODE: tl.constexpr = 0 if CODE > 2 else CODE            # the states' dtype
    p_addr = tl.load(trow + COL_PARAM)
    s1_addr = tl.load(trow + COL_STATE1)
    s2_addr = tl.load(trow + COL_STATE2)
    s3_addr = tl.load(trow + COL_STATE3)
    w_addr = p_addr
    if MASTER:
        w_addr = tl.load(trow + COL_MASTER)
    # Alignment is decided per tensor, from all of its addresses (an absent one is 0), so one
    # misaligned view does not turn every tensor of the launch to scalar access.
    aligned = ((p_addr | g_addr | s1_addr | s2_addr | s3_addr | w_addr) & 15) == 0
    W_CODE: tl.constexpr = 0 if MASTER else P_CODE
    S_BF16: tl.constexpr = S_CODE == 1
    P_BF16: tl.constexpr = P_CODE == 1
    off = start
    if aligned:
        # Hinted pointers, used only where the hint is true.
        wa, pa, ga = typed(w_addr, W_CODE, True), typed(p_addr, P_CODE, True), typed(
            g_addr, P_CODE, True)
        s1a, s2a, s3a = typed(s1_addr, S_CODE, True), typed(s2_addr, S_CODE, True), typed(
            s3_addr, S_CODE, True)
        while off < end:  # a while, not range(): the interpreter cannot range over loaded ints
            offs = tl.max_contiguous(tl.multiple_of(off + tl.arange(0, BLOCK), VEC), VEC)
            if off + BLOCK <= end:
                _block(wa, pa, ga, s1a, s2a, s3a, offs, None, sign, grad_scale, S, UPDATE,
                       VARIANT, S_BF16, UNSCALE, MASTER, P_BF16)
            else:
                _block(wa, pa, ga, s1a, s2a, s3a, offs, offs < end, sign, grad_scale, S,
                       UPDATE, VARIANT, S_BF16, UNSCALE, MASTER, P_BF16)
            off += BLOCK
    else:
        w_ptr, p_ptr, g_ptr = typed(w_addr, W_CODE), typed(p_addr, P_CODE), typed(
            g_addr, P_CODE)
        s1_ptr, s2_ptr, s3_ptr = typed(s1_addr, S_CODE), typed(s2_addr, S_CODE), typed(
            s3_addr, S_CODE)
        while off < end:
            offs = off + tl.arange(0, SCALAR_BLOCK)
            _block(w_ptr, p_ptr, g_ptr, s1_ptr, s2_ptr, s3_ptr, offs, offs < end, sign,
                   grad_scale, S, UPDATE, VARIANT, S_BF16, UNSCALE, MASTER, P_BF16)
            off += SCALAR_BLOCK


@triton.jit
def _dispatch(trow, g_addr, S, sign, start, end, combo, grad_scale, UPDATE: tl.constexpr,
              COMBOS: tl.constexpr, BLOCK: tl.constexpr, UNSCALE: tl.constexpr):
    # One run-time branch per program picks the body compiled for this tensor's dtype and its
    # group's variant; pairs absent from the optimizer are never compiled.
    for i in tl.static_range(len(COMBOS)):
        if combo == COMBOS[i]:
            # (.value: under the interpreter COMBOS[i] is a plain int, which a constexpr's
            # operators do not take from the left.)
            _chunk(trow, g_addr, S, sign, start, end, grad_scale, UPDATE,
                   COMBOS[i] // VARIANTS.value, COMBOS[i] % VARIANTS.value, BLOCK, UNSCALE)


@triton.jit(do_not_specialize=["n_tensors", "n_programs", "blocks_per_program", "hold_on_skip"])
def fused_step_kernel(
    tensors_ptr,   # int64 [n_tensors, TENSOR_COLS]: addresses, numel, group * META_GROUP + combo
    grads_ptr,     # int64 [n_tensors]: the gradients' addresses
    steps_ptr,     # int64 [n_tensors]: the addresses of the float32 step counts
    work_ptr,      # int32 [n_programs, 2]: (tensor row, chunk index); row -1 = no work
    groups_ptr,    # float64 [n_groups, GROUP_COLS]: base lr and hyperparameters
    table_ptr,     # float64 [n_groups * n_leaves, ROW]: per group, the leaves of the lr,
                   # momentum and wd schedules
    t_ptr,         # int64 []: the schedule counter, steps completed
    ticket_ptr,    # int32 []: programs finished in this launch (0 between launches)
    scale_ptr,     # float32 []: GradScaler's scale, gradients are divided by it (if UNSCALE)
    found_inf_ptr,  # float32 []: GradScaler's found_inf, > 0 skips the step (if CHECK_INF)
    skipped_ptr,   # float32 []: written 1.0 if this step was skipped, else 0.0
    scalars_ptr,   # int64 [n_tensors, SCALARS]: the addresses of the float32 scalar states
    scratch_ptr,   # float32 [n_tensors, SCALARS]: the next scalar states, until the last program
    n_tensors,     # rows of the tensor table (every one's step count advances)
    n_programs,    # rows of the work table = programs in this launch
    blocks_per_program,  # elements per program / BLOCK (a count, so that every block start
                         # is visibly a multiple of BLOCK to the compiler: aligned vector access)
    hold_on_skip,  # 1: a skipped step leaves the schedule counter too; 0: it advances (torch's)
    PREPARE: tl.constexpr,     # the algorithm's per-program scalars (kernels/<algorithm>.py)
    UPDATE: tl.constexpr,      # the algorithm's update of one block
    KINDS: tl.constexpr,       # the lr schedule's leaf kinds (its rows open the table)
    KINDS_M: tl.constexpr,     # the momentum schedule's (Adam's beta1, SGD's momentum); () none
    KINDS_WD: tl.constexpr,    # the weight-decay schedule's; () none
    COMBOS: tl.constexpr,      # the (dtype code * VARIANTS + variant) pairs present
    BLOCK: tl.constexpr,       # elements per inner iteration
    UNSCALE: tl.constexpr,     # a GradScaler's scale applies to this step
    CHECK_INF: tl.constexpr,   # a GradScaler's found_inf applies to this step
    SCALARS: tl.constexpr,     # the algorithm's scalar states per tensor: 0, 1 or 2
):
    pid = tl.program_id(0)
    row = tl.load(work_ptr + pid * 2)
    t = tl.load(t_ptr)
    grad_scale = 1.0
    if UNSCALE:
        grad_scale = tl.load(scale_ptr)
    work = row >= 0
    if CHECK_INF:
        # GradScaler saw an inf or NaN: the step changes nothing but the counters.
        work = work & (tl.load(found_inf_ptr) == 0.0)
    if work:
        r = row.to(tl.int64)
        trow = tensors_ptr + r * TENSOR_COLS
        meta = tl.load(trow + COL_META)
        group = meta // META_GROUP
        grow = groups_ptr + group * GROUP_COLS
        # The schedule table holds one block of rows per group: per-group values (CyclicLR's
        # lists) and run-time state (a plateau's scale) are numbers of the group's own block.
        table = table_ptr + group * ((len(KINDS) + len(KINDS_M) + len(KINDS_WD)) * ROW)
        step = tl.load(tl.load(steps_ptr + r).to(tl.pointer_type(tl.float32))).to(tl.float64)
        # Each schedule maps its group's base value: the lr, the momentum, the weight decay.
        # An empty schedule (KINDS_M or KINDS_WD = ()) folds to the base value itself.
        tf = t.to(tl.float64)
        lr = schedule_lr(tf, tl.load(grow + G_LR), table, KINDS)
        momentum = schedule_lr(tf, tl.load(grow + G_MOMENTUM), table + len(KINDS) * ROW,
                               KINDS_M)
        wd = schedule_lr(tf, tl.load(grow + G_WD), table + (len(KINDS) + len(KINDS_M)) * ROW,
                         KINDS_WD)
        # (The algorithm loads its own columns where it needs them: fp64 values live across the
        # slow-path calls of an fp64 divide or square root are spilled around them.)
        if SCALARS == 0:
            S = PREPARE(lr, momentum, wd, step, grow + G_COLUMNS)
        else:
            srow = scalars_ptr + r * SCALARS
            s0 = tl.load(tl.load(srow).to(tl.pointer_type(tl.float32)))
            s1 = s0
            if SCALARS > 1:
                s1 = tl.load(tl.load(srow + 1).to(tl.pointer_type(tl.float32)))
            S, new = PREPARE(lr, momentum, wd, step, grow + G_COLUMNS, (s0, s1))
            first = tl.load(work_ptr + pid * 2 + 1) == 0      # the tensor's chunk-0 program
            tl.store(scratch_ptr + r * SCALARS, new[0], mask=first)
            if SCALARS > 1:
                tl.store(scratch_ptr + r * SCALARS + 1, new[1], mask=first)
        sign = tl.where(tl.load(grow + G_MAXIMIZE) != 0.0, -1.0, 1.0).to(tl.float32)
        start = tl.load(work_ptr + pid * 2 + 1).to(tl.int64) * blocks_per_program * BLOCK
        end = tl.minimum(start + blocks_per_program * BLOCK, tl.load(trow + COL_NUMEL))
        _dispatch(trow, tl.load(grads_ptr + r), S, sign, start, end, meta % META_GROUP,
                  grad_scale, UPDATE, COMBOS, BLOCK, UNSCALE)
    tl.debug_barrier()
    if tl.atomic_add(ticket_ptr, 1) == n_programs - 1:
        # Last program of the launch: every other one has read the counters. A skipped step
        # leaves the step counts (torch's fused Adam subtracts found_inf back), and the
        # schedule counter too when asked. All threads advance COUNTER_BLOCK step counts at a time.
        # found_inf and t are read again rather than kept: values live across the whole body
        # cost registers, and spills around the fp64 cos slow-path call of the schedules.
        # t too: only this program writes it, below, so it still holds what all of them read.
        t = tl.load(t_ptr)
        skip = t != t                                 # False, as a tensor
        if CHECK_INF:
            skip = tl.load(found_inf_ptr) != 0.0
        advance = tl.where(skip, 0.0, 1.0)
        lane = tl.arange(0, COUNTER_BLOCK)
        first = 0
        while first < n_tensors:
            idx = first + lane
            mask = idx < n_tensors
            step_ptrs = tl.load(steps_ptr + idx, mask=mask, other=0).to(
                tl.pointer_type(tl.float32))
            tl.store(step_ptrs, tl.load(step_ptrs, mask=mask) + advance, mask=mask)
            first += COUNTER_BLOCK
        if SCALARS > 0:
            # Every program has read the old scalar states: the new ones go in, unless skipped.
            n_scalars = tl.where(skip, 0, n_tensors * SCALARS)
            done = 0
            while done < n_scalars:
                idx = done + lane
                mask = idx < n_scalars
                scalar_ptrs = tl.load(scalars_ptr + idx, mask=mask, other=0).to(
                    tl.pointer_type(tl.float32))
                tl.store(scalar_ptrs, tl.load(scratch_ptr + idx, mask=mask), mask=mask)
                done += COUNTER_BLOCK
        tl.store(t_ptr, t + tl.where(skip & (hold_on_skip != 0), 0, 1))
        tl.store(skipped_ptr, 1.0 - advance)
        tl.store(ticket_ptr, 0)


# Argument types as the launcher passes them: ahead-of-time compilation (tests/test_kernels_aot.py)
# builds the kernel from this, so a change to the arguments must change it too.
SIGNATURE = {"tensors_ptr": "*i64", "grads_ptr": "*i64", "steps_ptr": "*i64", "work_ptr": "*i32",
             "groups_ptr": "*fp64", "table_ptr": "*fp64", "t_ptr": "*i64", "ticket_ptr": "*i32",
             "scale_ptr": "*fp32", "found_inf_ptr": "*fp32", "skipped_ptr": "*fp32",
             "scalars_ptr": "*i64", "scratch_ptr": "*fp32", "n_tensors": "i32",
             "n_programs": "i32", "blocks_per_program": "i32", "hold_on_skip": "i32"}
