"""Every Triton kernel compiles ahead of time for sm_80 and sm_90, with no GPU present.

``triton.compile`` runs the whole NVIDIA pipeline (TTIR, TTGIR, LLVM, PTX, and ptxas to a cubin),
so a kernel that would fail to compile on an A100 or H100 fails here. The PTX and ``ptxas -v``
also show the performance properties CI can check without a GPU:
  * full blocks of 16-byte-aligned tensors move through 128-bit vector accesses
    (ld/st.global.v4), and a misaligned tensor takes a scalar path in the same kernel
    (alignment is decided per tensor, at run time);
  * the kernel is lean on sm_90: registers within budget (they decide how many programs an SM
    holds: 96 allow 5 of 4 warps, 128 allow 4), no spills, and at most 4 ``bar.sync`` (the
    ticket's barrier and broadcast; each layout conversion in the hot loop adds two or more).

The compiler needs real ``JITFunction`` kernels, while the rest of the suite imports them under
``TRITON_INTERPRET=1``; so this module, run as a script in a clean subprocess, does the
compiling, and the tests read its report.
"""

import json
import os
import re
import subprocess
import sys

import pytest

if __name__ == "__main__":     # the compiling subprocess (below): this checkout's fused_lrs
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

ARCHS = [80, 90]
LEAF_KINDS = ("SCALE", "EXP", "ANNEAL", "POLY", "COSINE", "COSINE_RESTARTS", "CYCLIC",
              "INV_SQRT")
# dtype codes (kernels/layout.py): 0 fp32, 1 bf16, 2 fp16, 3 and 4 bf16 and fp16 with fp32
# master weights and states.
DTYPE_SETS = {"fp32": (0,), "bf16": (1,), "bf16-master": (3,), "mixed": (0, 1, 2),
              "master-weights": (0, 3, 4)}
# Register budgets on sm_90 (ptxas -v): 96 registers allow 5 resident programs of 4 warps,
# 128 allow 4 (programs_per_sm in the launcher). One storage dtype: 96. Several dtypes, and the
# scheduled variants' fp64 schedule math: 128. Every one of the 8 lr leaf kinds in one
# schedule: fp64 math before the loop, not the loop, sets that one (ptxas -v: 165).
ONE_DTYPE_REGISTERS, MAX_REGISTERS, ALL_KINDS_REGISTERS = 96, 128, 192


def step_variants() -> dict:
    """Every algorithm's kernel (one per kernel module of the registry), each with every variant
    of its update compiled in, for each set of dtypes; "-scheduled" also compiles the GradScaler
    path and momentum and weight-decay schedules."""
    from fused_lrs.algorithms import ALGORITHMS
    from fused_lrs.kernels import layout

    modules = {}
    for record in ALGORITHMS.values():
        modules.setdefault(record.kernel, record)
    table = {}
    for module, record in modules.items():
        name = module.rsplit(".", 1)[1]
        for dtypes_name, codes in DTYPE_SETS.items():
            combos = tuple(code * layout.VARIANTS + v for code in codes for v in record.variants)
            registers = ONE_DTYPE_REGISTERS if len(codes) == 1 else MAX_REGISTERS
            table[f"{name}-{dtypes_name}"] = dict(kernel=module, COMBOS=combos, extras=False,
                                                  registers=registers,
                                                  SCALARS=len(record.scalars))
        table[f"{name}-scheduled"] = dict(table[f"{name}-fp32"], extras=True,
                                          registers=MAX_REGISTERS)
    return table


STEP_VARIANTS = step_variants()
# Spills allowed, in bytes: the scheduled variants also evaluate scheduled momentum and weight
# decay (three schedules with fp64 cos): values live across libdevice's cos slow-path call
# (taken only for |x| > 2^20 or so, never by a schedule) are spilled by the call ABI (44 B of
# spill stores for Adam with triton 3.6). Cold code; schedule.py using cospi would remove the
# call.
SCHEDULED_SPILLS = 64
# The spill budgets hold for the PTX of triton 3.6, CI's pinned triton and the GPU machines'.
# With other tritons ptxas allocates the fp64 prologue (the schedules, then each algorithm's
# prepare, with the slow-path calls of fp64 divides, square roots and cosines) differently and
# spills a few bytes around those calls, once per program, never in the elementwise loop: triton
# 3.5.1 (ptxas 12.8) 16 B in adam-master-weights and 4 B in step-all-kinds; 3.9.0 (ptxas 13.4)
# 24 B in adamax-bf16 and up to 40 B in the scheduled variants. There the bound is COLD_CALL_SPILLS.
SPILL_BUDGET_TRITONS = ("3.6",)
COLD_CALL_SPILLS = 64
MAX_BAR_SYNC = 4


def ptxas_resources(ptx: str, arch: int) -> dict:
    """Registers and spilled bytes from ``ptxas -v``, and the PTX's ``bar.sync`` count."""
    import tempfile

    import triton
    from triton.backends.nvidia.compiler import get_ptxas

    # The assembler triton itself compiles with: from 3.9 the bundled bin/ptxas (CUDA 12.9,
    # PTX 8.8) is the legacy one and refuses the PTX 9.4 that triton emits for sm_90; 3.5 takes
    # no arch argument.
    try:
        tool = get_ptxas(arch)
    except TypeError:
        tool = get_ptxas()
    ptxas = tool.path
    release = re.search(r"release (\d+\.\d+)", subprocess.run(
        [ptxas, "--version"], capture_output=True, text=True, check=True).stdout).group(1)
    target = re.search(r"^\.target\s+(\w+)", ptx, re.M).group(1)      # sm_90a for sm_90
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "kernel.ptx")
        with open(path, "w") as f:
            f.write(ptx)
        out = subprocess.run([ptxas, f"-arch={target}", "-v", path, "-o",
                              os.path.join(tmp, "kernel.cubin")],
                             capture_output=True, text=True, check=True).stderr
    return {"registers": int(re.search(r"Used (\d+) registers", out).group(1)),
            "spilled_bytes": sum(int(n) for n in re.findall(r"(\d+) bytes spill stores", out)),
            "bar_sync": len(re.findall(r"\b(?:bar|barrier)\.sync", ptx)), "arch": arch,
            "ptxas": release, "triton": triton.__version__}


def _compile(item) -> dict:
    """One compilation of ``compile_all``'s list: (what, variant name, arch)."""
    import importlib

    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fused_lrs.kernels import kinds
    from fused_lrs.kernels import optim as K
    from fused_lrs.kernels import schedule as KS

    what, name, arch = item
    all_kinds = tuple(int(getattr(kinds, kind)) for kind in LEAF_KINDS)
    report = {}

    def accesses(fn, signature, constexprs, resources=None):
        sig = dict(signature, **{key: "constexpr" for key in constexprs})
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
        if resources is not None:
            report[f"{resources}-resources"] = ptxas_resources(ptx, arch)
        return sorted(set(re.findall(r"(?:ld|st)\.global(?:\.nc)?(?:\.v\d)?\.\w+", ptx)))

    if what == "evaluate":
        report[f"evaluate-all-kinds-sm_{arch}"] = accesses(
            KS._evaluate_kernel, KS.SIGNATURE, dict(KINDS=all_kinds, BLOCK=256))
        return report
    variant = STEP_VARIANTS[name]
    module = importlib.import_module(variant["kernel"])
    extras = variant["extras"] and what == "step"
    constexprs = dict(PREPARE=module.prepare, UPDATE=module.update, COMBOS=variant["COMBOS"],
                      KINDS=all_kinds if what == "all-kinds" else (int(kinds.ANNEAL),
                                                                    int(kinds.COSINE)),
                      BLOCK=1024, UNSCALE=extras, CHECK_INF=extras,
                      KINDS_M=(int(kinds.ANNEAL),) * extras,
                      KINDS_WD=(int(kinds.COSINE),) * extras, SCALARS=variant["SCALARS"])
    key = "step-all-kinds-sm_90" if what == "all-kinds" else f"{name}-sm_{arch}"
    report[key] = accesses(K.fused_step_kernel, K.SIGNATURE, constexprs,
                           key if arch == 90 else None)
    return report


def compile_all() -> dict:
    """Compile every kernel variant, one process per core (CI's 2 cores: half the time);
    return {name: sorted global-memory access kinds}, and {name + "-resources":
    ptxas_resources} for the sm_90 step kernels."""
    from concurrent.futures import ProcessPoolExecutor

    import fused_lrs.kernels.optim  # noqa: F401  (imported once, before the workers fork)

    items = [("step", name, arch) for arch in ARCHS for name in STEP_VARIANTS]
    items += [("evaluate", None, arch) for arch in ARCHS] + [("all-kinds", "adam-fp32", 90)]
    report = {}
    with ProcessPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        for part in pool.map(_compile, items):
            report.update(part)
    return report


@pytest.fixture(scope="module")
def report():
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, __file__], env=env, capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
@pytest.mark.parametrize("variant", sorted(STEP_VARIANTS))
def test_fused_step_kernel_compiles(report, variant, arch):
    accesses = report[f"{variant}-sm_{arch}"]
    vector = [a for a in accesses if ".v4." in a]
    # Aligned tensors: 128-bit accesses (fp32 states and masters are in every variant but the
    # 16-bit ones without masters, whose 4 elements per access are 64 bits: v2.b32).
    assert any(a.startswith("ld.global.v") for a in accesses), accesses
    assert any(a.startswith("st.global.v") for a in accesses), accesses
    if any(combo // 8 in (0, 3, 4) for combo in STEP_VARIANTS[variant]["COMBOS"]):
        assert any(a.startswith("ld.global.v4") for a in vector), accesses
        assert any(a.startswith("st.global.v4") for a in vector), accesses
    # A misaligned tensor, decided per tensor at run time: scalar accesses in the same kernel.
    assert any(re.fullmatch(r"ld\.global(\.nc)?\.(b|f|u)(16|32)", a) for a in accesses), accesses
    assert any(re.fullmatch(r"st\.global\.(b|f|u)(16|32)", a) for a in accesses), accesses


@pytest.mark.parametrize("variant", [*sorted(STEP_VARIANTS), "step-all-kinds"])
def test_the_step_kernel_is_lean_on_sm_90(report, variant):
    res = report[f"{variant}-sm_90-resources"]
    budget = (STEP_VARIANTS[variant]["registers"] if variant in STEP_VARIANTS
              else ALL_KINDS_REGISTERS)
    assert res["registers"] <= budget, res
    if res["triton"].startswith(SPILL_BUDGET_TRITONS):
        allowed = SCHEDULED_SPILLS if variant.endswith("-scheduled") else 0
        assert res["spilled_bytes"] <= allowed, res
    else:
        assert res["spilled_bytes"] <= COLD_CALL_SPILLS, res
    assert res["bar_sync"] <= MAX_BAR_SYNC, res


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_every_leaf_kind_compiles(report, arch):
    assert "st.global.b64" in " ".join(report[f"evaluate-all-kinds-sm_{arch}"])


def test_the_step_kernel_compiles_every_leaf_kind(report):
    assert any(a.startswith("ld.global.v4") for a in report["step-all-kinds-sm_90"])


if __name__ == "__main__":
    print(json.dumps(compile_all()))
