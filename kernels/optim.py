"""One launch per step: the schedule, the Adam/AdamW/SGD update and the counters, for every
parameter of every group on a device.

Design
------
Addressing. The launcher writes a device table with one int64 row per parameter that has a
gradient: the addresses of the parameter, its gradient, up to three state tensors, its
float32 step count and its fp32 master copy (master_weights=True), its element count, and
``group * 8 + dtype code``. A program turns an address
into a typed pointer with ``.to(tl.pointer_type(...))``, which works compiled and interpreted.
The alternatives cost more: flattening every tensor into one buffer forces users' parameters to
be views of it; one launch per dtype or per group breaks the one-launch promise. The table is
rebuilt only when a tensor's identity or storage changes (148 rows of 64 B for GPT-2 small).

Work. One program per (tensor, chunk) pair, listed in a second table. A chunk is a whole number
of BLOCKs, chosen by the launcher so that a launch has about eight programs per SM; inside
a chunk the program walks BLOCK elements at a time. Full blocks take an unmasked path, which
the compiler turns into 128-bit accesses when the launcher can promise 16-byte alignment
(ALIGNED); the one ragged block per tensor takes the masked path. Offsets are int64, so a
tensor of more than 2^31 elements is addressed correctly.

dtypes. A program branches once, at run time, on its tensor's dtype code into a body compiled
for that dtype; only the dtypes present (DTYPES) are compiled. Math is fp32 whatever the
storage dtype; schedule and bias-correction scalars are fp64 and cast once.

Counters. Every program reads the schedule counter ``t`` and its tensor's step count at the
start, and none of them writes those. When a program finishes, it takes a ticket with an
acq_rel atomic on a per-optimizer int32; the program that draws the last ticket knows every
other program has finished (and so has read the counters), advances each listed tensor's step
count and ``t``, and resets the ticket to 0 for the next launch. A CTA barrier before the ticket
makes the reads of all of a program's threads precede its release. No second launch and no host
involvement, so the counters also advance on every replay of a captured CUDA graph.

GradScaler. With UNSCALE the gradients are divided by the scaler's scale as they are loaded;
with CHECK_INF every program reads found_inf first and, if it is set, updates nothing, and the
last program leaves the step counts (and, on request, the schedule counter) where they were.
The scaler's tensors are passed as pointers, so no copy precedes the launch.
"""

import triton
import triton.language as tl

from fused_lrs.kernels.schedule import ROW, schedule_lr

ADAM = tl.constexpr(0)
SGD = tl.constexpr(1)

# Tensor table: int64 columns.
(COL_PARAM, COL_GRAD, COL_STATE1, COL_STATE2, COL_STATE3, COL_STEP, COL_NUMEL, COL_META,
 COL_MASTER) = map(tl.constexpr, range(9))
TENSOR_COLS = tl.constexpr(9)
# Group table: float64 columns. Adam: beta1, beta2, eps, amsgrad, decoupled. SGD: momentum,
# dampening, -, nesterov, -.
G_LR, G_A, G_B, G_EPS, G_WD, G_FLAG, G_MAXIMIZE, G_DECOUPLED = map(tl.constexpr, range(8))
GROUP_COLS = tl.constexpr(8)
# dtype codes of the tensor table: the parameter's dtype, and for 3 and 4 a 16-bit parameter
# with an fp32 master copy and fp32 states (master_weights=True). meta = group * 8 + code.
DTYPE_CODES = {"float32": 0, "bfloat16": 1, "float16": 2}
MASTER_CODE_OFFSET = 2
META_GROUP = tl.constexpr(8)


@triton.jit
def _typed(address, CODE: tl.constexpr, ALIGNED: tl.constexpr):
    if CODE == 0:
        ptr = address.to(tl.pointer_type(tl.float32))
    elif CODE == 1:
        ptr = address.to(tl.pointer_type(tl.bfloat16))
    else:
        ptr = address.to(tl.pointer_type(tl.float16))
    if ALIGNED:
        # The launcher checked every address is a multiple of 16 bytes; this hint is what
        # lets the compiler emit ld.global.v4 / st.global.v4.
        ptr = tl.multiple_of(ptr, 16)
    return ptr


@triton.jit
def _rne_bf16(x):
    # fp32 -> bf16, round to nearest even by hand, exactly as c10::BFloat16 does (NaN kept
    # NaN): the interpreter's cast truncates, and its "rtne" mode mishandles a carry out of the
    # mantissa. Four integer ops per element, free in a memory-bound loop.
    bits = x.to(tl.uint32, bitcast=True)
    bits = bits + 0x7FFF + ((bits >> 16) & 1)
    y = (bits >> 16).to(tl.uint16).to(tl.bfloat16, bitcast=True)
    return tl.where(x != x, x.to(tl.bfloat16), y)


@triton.jit
def _store_weights(w_ptr, p_ptr, offs, mask, p, MASTER: tl.constexpr, P_BF16: tl.constexpr):
    # With a master copy, the fp32 result goes to the master and its rounding to the parameter,
    # in the same pass; without one, the rounding is the parameter.
    if MASTER:
        tl.store(w_ptr + offs, p, mask=mask)
    if P_BF16:
        p = _rne_bf16(p)
    tl.store(p_ptr + offs, p.to(p_ptr.dtype.element_ty), mask=mask)


# The block bodies take `mask=None` for full blocks (unmasked, vectorizable) and a mask for the
# ragged tail. Loads and stores are written inline: under the interpreter every nested
# @triton.jit call costs ~0.25 ms of re-patching, so fewer calls keep CI fast. BF16 rounds
# the results by hand (see _rne_bf16); other dtypes round in the store's cast.
@triton.jit
def _adam_block(w_ptr, p_ptr, g_ptr, m_ptr, v_ptr, vmax_ptr, offs, mask, sign, decay, l2,
                one_minus_b1, beta2, one_minus_b2, step_size, bc2_sqrt, eps, grad_scale,
                AMSGRAD: tl.constexpr, BF16: tl.constexpr, UNSCALE: tl.constexpr,
                MASTER: tl.constexpr, P_BF16: tl.constexpr):
    p = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    g = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    if UNSCALE:
        g = tl.div_rn(g, grad_scale)                  # GradScaler: unscale, as torch's fused
    g = g * sign                                      # maximize flips the gradient
    m = tl.load(m_ptr + offs, mask=mask).to(tl.float32)
    v = tl.load(v_ptr + offs, mask=mask).to(tl.float32)
    p = p * decay                                     # AdamW: theta * (1 - lr * wd); else 1
    g = g + l2 * p                                    # Adam: L2 into the gradient; else 0
    m = m + one_minus_b1 * (g - m)                    # exp_avg.lerp_(g, 1 - beta1)
    v = v * beta2 + one_minus_b2 * g * g              # exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
    if AMSGRAD:
        v_hat = tl.maximum(tl.load(vmax_ptr + offs, mask=mask).to(tl.float32), v)
        tl.store(vmax_ptr + offs, (_rne_bf16(v_hat) if BF16 else v_hat).to(
            vmax_ptr.dtype.element_ty), mask=mask)
    else:
        v_hat = v
    # IEEE sqrt and division (tl.sqrt and `/` are approximate on CUDA), as torch computes.
    denom = tl.div_rn(tl.sqrt_rn(v_hat), bc2_sqrt) + eps
    p = p - tl.div_rn(step_size * m, denom)
    _store_weights(w_ptr, p_ptr, offs, mask, p, MASTER, P_BF16)
    if BF16:
        m, v = _rne_bf16(m), _rne_bf16(v)
    tl.store(m_ptr + offs, m.to(m_ptr.dtype.element_ty), mask=mask)
    tl.store(v_ptr + offs, v.to(v_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _sgd_block(w_ptr, p_ptr, g_ptr, buf_ptr, offs, mask, sign, wd, lr, momentum,
               one_minus_dampening, first, nesterov, grad_scale, MOMENTUM: tl.constexpr,
               BF16: tl.constexpr, UNSCALE: tl.constexpr, MASTER: tl.constexpr,
               P_BF16: tl.constexpr):
    p = tl.load(w_ptr + offs, mask=mask).to(tl.float32)
    d = tl.load(g_ptr + offs, mask=mask).to(tl.float32)
    if UNSCALE:
        d = tl.div_rn(d, grad_scale)
    d = d * sign + wd * p
    if MOMENTUM:
        buf = momentum * tl.load(buf_ptr + offs, mask=mask).to(tl.float32)
        buf = tl.where(first, d, buf + one_minus_dampening * d)  # the first copies the grad
        tl.store(buf_ptr + offs, (_rne_bf16(buf) if BF16 else buf).to(
            buf_ptr.dtype.element_ty), mask=mask)
        d = tl.where(nesterov, d + momentum * buf, buf)
    p = p - lr * d
    _store_weights(w_ptr, p_ptr, offs, mask, p, MASTER, P_BF16)


@triton.jit
def _chunk(trow, grow, lr, a, wd, start, end, grad_scale, ALGO: tl.constexpr,
           CODE: tl.constexpr,
           OPTION: tl.constexpr, ALIGNED: tl.constexpr, BLOCK: tl.constexpr,
           UNSCALE: tl.constexpr):
    """Update elements [start, end) of one tensor. OPTION is amsgrad (Adam) or momentum (SGD).
    CODE 3 and 4 are bf16 and fp16 parameters with fp32 master weights and states."""
    # Annotated: a plain assignment would turn these compile-time values into run-time ones.
    MASTER: tl.constexpr = CODE > 2
    P_CODE: tl.constexpr = CODE - 2 if CODE > 2 else CODE     # the parameter's and gradient's
    S_CODE: tl.constexpr = 0 if CODE > 2 else CODE            # the states' dtype
    p_ptr = _typed(tl.load(trow + COL_PARAM), P_CODE, ALIGNED)
    g_ptr = _typed(tl.load(trow + COL_GRAD), P_CODE, ALIGNED)
    if MASTER:
        w_ptr = _typed(tl.load(trow + COL_MASTER), 0, ALIGNED)
    else:
        w_ptr = p_ptr
    s1_ptr = _typed(tl.load(trow + COL_STATE1), S_CODE, ALIGNED)
    step = tl.load(tl.load(trow + COL_STEP).to(tl.pointer_type(tl.float32))).to(tl.float64)
    sign = tl.where(tl.load(grow + G_MAXIMIZE) != 0.0, -1.0, 1.0).to(tl.float32)
    if ALGO == ADAM:
        s2_ptr = _typed(tl.load(trow + COL_STATE2), S_CODE, ALIGNED)
        s3_ptr = _typed(tl.load(trow + COL_STATE3), S_CODE, ALIGNED)
        beta1 = a
        beta2 = tl.load(grow + G_B)
        decoupled = tl.load(grow + G_DECOUPLED) != 0.0
        k = step + 1.0                                # this update's step count, as torch's
        # beta ** k as exp(k log beta): fp64 keeps it to ~1e-15 relative; beta = 0 gives 0.
        bias_correction1 = 1.0 - tl.exp(k * tl.log(beta1))
        bc2_sqrt = tl.sqrt(1.0 - tl.exp(k * tl.log(beta2))).to(tl.float32)
        step_size = (lr / bias_correction1).to(tl.float32)
        decay = tl.where(decoupled, 1.0 - lr * wd, 1.0).to(tl.float32)
        l2 = tl.where(decoupled, 0.0, wd).to(tl.float32)
        one_minus_b1 = (1.0 - beta1).to(tl.float32)
        one_minus_b2 = (1.0 - beta2).to(tl.float32)
        eps = tl.load(grow + G_EPS).to(tl.float32)
        beta2 = beta2.to(tl.float32)
        off = start
        while off < end:  # a while, not range(): the interpreter cannot range over loaded ints
            offs = off + tl.arange(0, BLOCK)
            if off + BLOCK <= end:
                _adam_block(w_ptr, p_ptr, g_ptr, s1_ptr, s2_ptr, s3_ptr, offs, None, sign, decay,
                            l2, one_minus_b1, beta2, one_minus_b2, step_size, bc2_sqrt, eps,
                            grad_scale, OPTION, S_CODE == 1, UNSCALE, MASTER, P_CODE == 1)
            else:
                _adam_block(w_ptr, p_ptr, g_ptr, s1_ptr, s2_ptr, s3_ptr, offs, offs < end, sign,
                            decay, l2, one_minus_b1, beta2, one_minus_b2, step_size, bc2_sqrt,
                            eps, grad_scale, OPTION, S_CODE == 1, UNSCALE, MASTER, P_CODE == 1)
            off += BLOCK
    else:
        momentum = a.to(tl.float32)
        one_minus_dampening = (1.0 - tl.load(grow + G_B)).to(tl.float32)
        nesterov = tl.load(grow + G_FLAG) != 0.0
        first = step == 0.0
        wd = wd.to(tl.float32)
        lr = lr.to(tl.float32)
        off = start
        while off < end:
            offs = off + tl.arange(0, BLOCK)
            if off + BLOCK <= end:
                _sgd_block(w_ptr, p_ptr, g_ptr, s1_ptr, offs, None, sign, wd, lr, momentum,
                           one_minus_dampening, first, nesterov, grad_scale, OPTION,
                           S_CODE == 1, UNSCALE, MASTER, P_CODE == 1)
            else:
                _sgd_block(w_ptr, p_ptr, g_ptr, s1_ptr, offs, offs < end, sign, wd, lr,
                           momentum, one_minus_dampening, first, nesterov, grad_scale, OPTION,
                           S_CODE == 1, UNSCALE, MASTER, P_CODE == 1)
            off += BLOCK


@triton.jit
def _dispatch(trow, grow, lr, a, wd, start, end, code, option, grad_scale, ALGO: tl.constexpr,
              DTYPES: tl.constexpr, HAS_OPTION: tl.constexpr, ALIGNED: tl.constexpr,
              BLOCK: tl.constexpr, UNSCALE: tl.constexpr):
    # One run-time branch per program picks the body compiled for this tensor's dtype and
    # option; bodies for dtypes or options absent from the optimizer are never compiled.
    for i in tl.static_range(len(DTYPES)):
        if code == DTYPES[i]:
            if HAS_OPTION:
                if option:
                    _chunk(trow, grow, lr, a, wd, start, end, grad_scale, ALGO, DTYPES[i], True,
                           ALIGNED, BLOCK, UNSCALE)
                else:
                    _chunk(trow, grow, lr, a, wd, start, end, grad_scale, ALGO, DTYPES[i], False,
                           ALIGNED, BLOCK, UNSCALE)
            else:
                _chunk(trow, grow, lr, a, wd, start, end, grad_scale, ALGO, DTYPES[i], False,
                       ALIGNED, BLOCK, UNSCALE)


@triton.jit(do_not_specialize=["n_tensors", "n_programs", "blocks_per_program", "hold_on_skip"])
def fused_step_kernel(
    tensors_ptr,   # int64 [n_tensors, TENSOR_COLS]: addresses, numel, group * 8 + dtype code
    work_ptr,      # int32 [n_programs, 2]: (tensor row, chunk index); row -1 = no work
    groups_ptr,    # float64 [n_groups, GROUP_COLS]: base lr and hyperparameters
    table_ptr,     # float64 [n_leaves, ROW]: the leaves of the lr, momentum and wd schedules
    t_ptr,         # int64 []: the schedule counter, steps completed
    ticket_ptr,    # int32 []: programs finished in this launch (0 between launches)
    scale_ptr,     # float32 []: GradScaler's scale, gradients are divided by it (if UNSCALE)
    found_inf_ptr,  # float32 []: GradScaler's found_inf, > 0 skips the step (if CHECK_INF)
    skipped_ptr,   # float32 []: written 1.0 if this step was skipped, else 0.0
    n_tensors,     # rows of the tensor table (every one's step count advances)
    n_programs,    # rows of the work table = programs in this launch
    blocks_per_program,  # elements per program / BLOCK (a count, so that every block start
                         # is visibly a multiple of BLOCK to the compiler: aligned vector access)
    hold_on_skip,  # 1: a skipped step leaves the schedule counter too; 0: it advances (torch's)
    ALGO: tl.constexpr,        # ADAM or SGD
    KINDS: tl.constexpr,       # the lr schedule's leaf kinds (its rows open the table)
    KINDS_M: tl.constexpr,     # the momentum schedule's (Adam's beta1, SGD's momentum); () none
    KINDS_WD: tl.constexpr,    # the weight-decay schedule's; () none
    DTYPES: tl.constexpr,      # dtype codes present
    HAS_OPTION: tl.constexpr,  # some group uses amsgrad (Adam) or momentum (SGD)
    ALIGNED: tl.constexpr,     # every address is 16-byte aligned
    BLOCK: tl.constexpr,       # elements per inner iteration
    UNSCALE: tl.constexpr,     # a GradScaler's scale applies to this step
    CHECK_INF: tl.constexpr,   # a GradScaler's found_inf applies to this step
):
    pid = tl.program_id(0)
    row = tl.load(work_ptr + pid * 2)
    t = tl.load(t_ptr)
    grad_scale = 1.0
    if UNSCALE:
        grad_scale = tl.load(scale_ptr)
    skip = t != t                                     # False, as a tensor
    if CHECK_INF:
        # GradScaler saw an inf or NaN: the step changes nothing but the counters.
        skip = tl.load(found_inf_ptr) != 0.0
    if (row >= 0) & (skip == 0):
        trow = tensors_ptr + row.to(tl.int64) * TENSOR_COLS
        meta = tl.load(trow + COL_META)
        grow = groups_ptr + (meta // META_GROUP) * GROUP_COLS
        # Each schedule maps its group's base value: the lr, beta1 or momentum, weight decay.
        # An empty schedule (KINDS_M or KINDS_WD = ()) folds to the base value itself.
        tf = t.to(tl.float64)
        lr = schedule_lr(tf, tl.load(grow + G_LR), table_ptr, KINDS)
        a = schedule_lr(tf, tl.load(grow + G_A), table_ptr + len(KINDS) * ROW, KINDS_M)
        wd = schedule_lr(tf, tl.load(grow + G_WD), table_ptr + (len(KINDS) + len(KINDS_M)) * ROW,
                         KINDS_WD)
        start = tl.load(work_ptr + pid * 2 + 1).to(tl.int64) * blocks_per_program * BLOCK
        end = tl.minimum(start + blocks_per_program * BLOCK, tl.load(trow + COL_NUMEL))
        option = tl.load(grow + G_FLAG) != 0.0
        if ALGO == SGD:
            option = tl.load(grow + G_A) != 0.0       # momentum on: the buffer exists
        _dispatch(trow, grow, lr, a, wd, start, end, meta % META_GROUP, option, grad_scale, ALGO,
                  DTYPES,
                  HAS_OPTION, ALIGNED, BLOCK, UNSCALE)
    tl.debug_barrier()
    if tl.atomic_add(ticket_ptr, 1) == n_programs - 1:
        # Last program of the launch: every other one has read the counters. A skipped step
        # leaves the step counts (torch's fused Adam subtracts found_inf back), and the
        # schedule counter too when asked.
        advance = tl.where(skip, 0.0, 1.0)
        i = 0
        while i < n_tensors:
            step_ptr = tl.load(tensors_ptr + i * TENSOR_COLS + COL_STEP).to(
                tl.pointer_type(tl.float32))
            tl.store(step_ptr, tl.load(step_ptr) + advance)
            i += 1
        tl.store(t_ptr, t + tl.where(skip & (hold_on_skip != 0), 0, 1))
        tl.store(skipped_ptr, 1.0 - advance)
        tl.store(ticket_ptr, 0)


# Argument types as the launcher passes them: ahead-of-time compilation (tests/test_kernels_aot.py)
# builds the kernel from this, so a change to the arguments must change it too.
SIGNATURE = {"tensors_ptr": "*i64", "work_ptr": "*i32", "groups_ptr": "*fp64",
             "table_ptr": "*fp64", "t_ptr": "*i64", "ticket_ptr": "*i32", "scale_ptr": "*fp32",
             "found_inf_ptr": "*fp32", "skipped_ptr": "*fp32",
             "n_tensors": "i32", "n_programs": "i32", "blocks_per_program": "i32",
             "hold_on_skip": "i32"}
