"""The table of optimizers (``tests/optimizers.py``) against the registry and itself: every
fused class has one row, and each row's few configurations (representative and sample) cover
what the suites that run only those rely on them to cover."""

import inspect

import pytest
import torch
from optimizers import ANY, OPTIMIZER_INFOS, infos

from fused_lrs.algorithms import OPTIMIZERS


def test_one_row_per_fused_class():
    assert [info.cls for info in OPTIMIZER_INFOS] == list(OPTIMIZERS)


def test_some_rows_carry_the_costly_suites():
    assert ANY.sweep and sum(info.sweep for info in OPTIMIZER_INFOS) <= 2


def _value(info, options, key):
    """``options[key]``, or the class's default for it."""
    if key in options:
        return options[key]
    return inspect.signature(info.cls).parameters[key].default


@pytest.mark.parametrize("info", infos())
def test_few_take_every_value_of_every_option_of_the_grid(info):
    keys = {key for _, options in info.options for key in options}
    for key in sorted(keys):
        grid = {_value(info, options, key) for _, options in info.options}
        few = {_value(info, options, key) for _, options in info.few}
        assert grid <= few, f"{info.name}: {key} takes {grid - few} in the grid, not in the few"


@pytest.mark.parametrize("info", infos())
def test_few_take_every_kernel_variant(info):
    record, seen = info.record, set()
    for _, options in info.few:
        opt = info.cls([torch.zeros(1, requires_grad=True)], impl="reference", **options)
        for group in opt.param_groups:
            seen.add(record.variant(record.hyperparameters(record.row(group, opt.defaults))))
    assert seen == set(record.variants), f"{info.name}: variants {seen}"
