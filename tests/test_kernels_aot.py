"""Every Triton kernel compiles ahead of time for sm_80 and sm_90, with no GPU present.

``triton.compile`` runs the whole NVIDIA pipeline (TTIR, TTGIR, LLVM, PTX, and ptxas to a cubin),
so a kernel that would fail to compile on an A100 or H100 fails here. The PTX also shows the
performance property CI can check without a GPU: full blocks of 16-byte-aligned fp32 (and
bf16) tensors move through 128-bit vector accesses (ld/st.global.v4).

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

ARCHS = [80, 90]
LEAF_KINDS = ("SCALE", "EXP", "ANNEAL", "POLY", "COSINE", "COSINE_RESTARTS", "CYCLIC",
              "INV_SQRT")
# ALGO 0 = Adam, 1 = SGD; dtype codes 0 fp32, 1 bf16, 2 fp16, 3 and 4 bf16 and fp16 with fp32
# master weights and states.
STEP_VARIANTS = {
    "adam-fp32-amsgrad": dict(ALGO=0, DTYPES=(0,), HAS_OPTION=True, ALIGNED=True),
    "adam-bf16": dict(ALGO=0, DTYPES=(1,), HAS_OPTION=False, ALIGNED=True),
    "adam-mixed": dict(ALGO=0, DTYPES=(0, 1, 2), HAS_OPTION=True, ALIGNED=True),
    "adam-master-weights": dict(ALGO=0, DTYPES=(0, 3, 4), HAS_OPTION=False, ALIGNED=True),
    "sgd-master-weights": dict(ALGO=1, DTYPES=(3,), HAS_OPTION=True, ALIGNED=True),
    "adam-unaligned": dict(ALGO=0, DTYPES=(0,), HAS_OPTION=False, ALIGNED=False),
    "sgd-fp32-momentum": dict(ALGO=1, DTYPES=(0,), HAS_OPTION=True, ALIGNED=True),
    "sgd-fp16": dict(ALGO=1, DTYPES=(2,), HAS_OPTION=True, ALIGNED=True),
}


def compile_all() -> dict:
    """Compile every kernel variant; return {name: sorted global-memory access kinds}."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from fused_lrs.kernels import kinds
    from fused_lrs.kernels import optim as K
    from fused_lrs.kernels import schedule as KS

    all_kinds = tuple(int(getattr(kinds, name)) for name in LEAF_KINDS)

    def accesses(fn, signature, constexprs, arch):
        sig = dict(signature, **{name: "constexpr" for name in constexprs})
        src = ASTSource(fn=fn, signature=sig, constexprs=constexprs)
        ptx = triton.compile(src, target=GPUTarget("cuda", arch, 32)).asm["ptx"]
        return sorted(set(re.findall(r"(?:ld|st)\.global(?:\.nc)?(?:\.v\d)?\.\w+", ptx)))

    report = {}
    for arch in ARCHS:
        for name, variant in STEP_VARIANTS.items():
            # The adam-fp32 variants also compile the GradScaler path and momentum and
            # weight-decay schedules.
            extras = name.startswith("adam-fp32")
            constexprs = dict(variant, KINDS=(int(kinds.ANNEAL), int(kinds.COSINE)), BLOCK=1024,
                              UNSCALE=extras, CHECK_INF=extras,
                              KINDS_M=(int(kinds.ANNEAL),) * extras,
                              KINDS_WD=(int(kinds.COSINE),) * extras)
            report[f"{name}-sm_{arch}"] = accesses(K.fused_step_kernel, K.SIGNATURE, constexprs,
                                                   arch)
        report[f"evaluate-all-kinds-sm_{arch}"] = accesses(
            KS._evaluate_kernel, KS.SIGNATURE, dict(KINDS=all_kinds, BLOCK=256), arch)
    report["step-all-kinds-sm_90"] = accesses(
        K.fused_step_kernel, K.SIGNATURE,
        dict(STEP_VARIANTS["adam-fp32-amsgrad"], KINDS=all_kinds, BLOCK=1024, UNSCALE=False,
             CHECK_INF=False, KINDS_M=(), KINDS_WD=()), 90)
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
    if STEP_VARIANTS[variant]["ALIGNED"]:
        assert any(a.startswith("ld.global.v4") for a in vector), accesses
        assert any(a.startswith("st.global.v4") for a in vector), accesses
    else:
        # No alignment promise: the compiler must not assume one.
        assert not vector, accesses


@pytest.mark.parametrize("arch", ARCHS, ids=lambda a: f"sm_{a}")
def test_every_leaf_kind_compiles(report, arch):
    assert "st.global.b64" in " ".join(report[f"evaluate-all-kinds-sm_{arch}"])


def test_the_step_kernel_compiles_every_leaf_kind(report):
    assert any(a.startswith("ld.global.v4") for a in report["step-all-kinds-sm_90"])


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    print(json.dumps(compile_all()))
