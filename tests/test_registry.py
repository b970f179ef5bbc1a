"""The algorithm registry (``fused_lrs/algorithms/``) and the rule it carries (DESIGN.md,
"Algorithms"): backends, the custom op, ``from_torch``, the bench and the tools read the
registry, and none of them names an algorithm.

* Each record's kernel module reads the group row the way the record lays it out: its
  ``COLUMNS`` are the record's column names in order, and its ``prepare`` takes the row's fixed
  values under the record's names, then the step count, the columns and, for a record with
  scalar states, their old values.
* No ``.py`` file of ``fused_lrs/`` or ``kernels/`` outside the registry and the kernel modules
  its records name holds an identifier, attribute, import or string constant that names an
  algorithm (docstrings and comments may): no fused class, record name, peer class or torch
  fused op (``torch._fused_adam_``, ...).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import re
import shutil
from pathlib import Path

import pytest
import torch

from fused_lrs import algorithms
from fused_lrs.algorithms import ALGORITHMS, OPTIMIZERS

ROOT = Path(__file__).resolve().parent.parent
RECORDS = list(ALGORITHMS.values())


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: r.name)
def test_each_kernel_module_reads_its_records_row(record):
    module = importlib.import_module(record.kernel)
    assert module.COLUMNS == tuple(name for name, _ in record.columns)
    assert len(record.variants) <= 8 and all(0 <= v < 8 for v in record.variants)
    prepare = list(inspect.signature(getattr(module.prepare, "fn", module.prepare)).parameters)
    # (lr, the momentum under the record's name or the placeholder "momentum", weight_decay)
    assert tuple(prepare[:4]) == (*record.names[:3], "step"), prepare
    assert len(prepare) == 5 + bool(record.scalars), prepare


def test_the_defaults_the_registry_names_are_its_algorithms():
    assert algorithms.DEFAULT in ALGORITHMS and algorithms.CONVNET in ALGORITHMS


# ---------------------------------------------------------------- no algorithm named outside

def algorithm_names() -> set[str]:
    """Every name of an algorithm, lower-cased: the fused classes, the records, the peers'
    classes and the fused ops torch has for them."""
    names = set()
    for cls in OPTIMIZERS:
        record = cls.algorithm
        names |= {cls.__name__, record.name, record.peer.rpartition(".")[2]}
        if hasattr(torch, f"_fused_{record.name}_"):
            names.add(f"_fused_{record.name}_")
    return {name.lower() for name in names}


def exempt(root: Path) -> set[Path]:
    """The registry's files and the kernel modules its records name."""
    return {*(root / "fused_lrs" / "algorithms").glob("*.py"),
            *(root / "kernels" / f"{record.kernel.rpartition('.')[2]}.py"
              for record in RECORDS)}


def _texts(tree: ast.AST):
    """(line, text) of every identifier, attribute, imported name and string constant of
    ``tree``, docstrings left out (every string that stands alone as a statement)."""
    alone = {id(node.value) for node in ast.walk(tree)
             if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant)}
    for node in ast.walk(tree):
        line = getattr(node, "lineno", 0)
        if isinstance(node, ast.Name):
            yield line, node.id
        elif isinstance(node, ast.Attribute):
            yield line, node.attr
        elif isinstance(node, ast.arg | ast.keyword) and node.arg:
            yield line, node.arg
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            yield line, node.name
        elif isinstance(node, ast.ImportFrom) and node.module:
            yield line, node.module
        elif isinstance(node, ast.alias):
            yield line, f"{node.name} {node.asname or ''}"
        elif isinstance(node, ast.Global | ast.Nonlocal):
            yield from ((line, name) for name in node.names)
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str)
              and id(node) not in alone):
            yield line, node.value


def named_algorithms(root: Path) -> list[str]:
    """``path:line: name in text`` for every algorithm named in the code under ``root``."""
    names, skip, found = algorithm_names(), exempt(root), []
    files = sorted([*(root / "fused_lrs").rglob("*.py"), *(root / "kernels").glob("*.py")])
    for path in files:
        if path in skip:
            continue
        for line, text in _texts(ast.parse(path.read_text(), str(path))):
            words = {text.lower(), *(w.lower() for w in re.findall(r"[A-Za-z0-9]+", text))}
            found += [f"{path.relative_to(root)}:{line}: {name!r} in {text[:60]!r}"
                      for name in sorted(words & names)]
    return found


def test_no_code_outside_the_registry_names_an_algorithm():
    found = named_algorithms(ROOT)
    assert not found, "read the registry (fused_lrs.algorithms) instead:\n" + "\n".join(found)


PLANTS = {
    "identifier": "SGD_DEFAULTS = {}\n",
    "attribute": "import torch\nop = torch._fused_adamw_\n",
    "string": "def make(name='rmsprop'):\n    return name\n",
    "import": "from torch.optim import Adagrad\n",
    "f-string": "def title(x):\n    return f'{x}: fp32 AdamW'\n",
    "class name": "import fused_lrs\ncls = fused_lrs.FusedLionScheduled\n",
}


@pytest.fixture(scope="module")
def copy(tmp_path_factory):
    """A copy of the package and the kernels, which the scan finds clean."""
    root = tmp_path_factory.mktemp("copy")
    for part in ("fused_lrs", "kernels"):
        shutil.copytree(ROOT / part, root / part,
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    assert named_algorithms(root) == []
    return root


@pytest.mark.parametrize("kind", PLANTS)
def test_the_scan_finds_a_planted_name(copy, kind):
    # One planted module in the copy: the scan names its code, and nothing that stands in a
    # docstring or a comment.
    plant = copy / "fused_lrs" / "optim" / "planted.py"
    plant.write_text('"""Adam and SGD in a docstring."""\n# Lion in a comment\n'
                     + PLANTS[kind])
    try:
        found = named_algorithms(copy)
    finally:
        plant.unlink()
    assert found and all(f.startswith("fused_lrs/optim/planted.py:") for f in found), found
    assert not any(f.startswith("fused_lrs/optim/planted.py:1:") for f in found), found
