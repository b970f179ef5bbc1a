"""conftest.assert_same_optimizer, the one comparison every suite uses, fails where it must:
a parameter, a state entry, a state key or dtype, or the schedule counter that differs."""

import copy

import pytest
import torch
from conftest import assert_same_optimizer
from optimizers import representatives


def stepped(info, options):
    p = torch.nn.Parameter(torch.linspace(-1.0, 1.0, 8))
    opt = info.cls([p], lr=0.1, impl="reference", **options)
    for k in range(3):
        p.grad = torch.linspace(-1.0, 1.0, 8) * (k + 1)
        opt.step()
    return opt


def param_and_state(opt):
    p = opt.param_groups[0]["params"][0]
    return p, opt.state[p]


@pytest.mark.parametrize("info, options", representatives())
def test_each_difference_fails(info, options):
    ours = stepped(info, options)
    assert_same_optimizer(ours, copy.deepcopy(ours), rtol=0, atol=0)
    key = next(k for k in param_and_state(ours)[1] if k != "step")

    def differs(change, match):
        theirs = copy.deepcopy(ours)
        change(*param_and_state(theirs), theirs)
        with pytest.raises(AssertionError, match=match):
            assert_same_optimizer(ours, theirs, rtol=1e-6, atol=0)

    differs(lambda p, s, o: p.data.add_(1e-3), "param 0")
    differs(lambda p, s, o: s[key].add_(1e-3), f"state '{key}'")
    differs(lambda p, s, o: s["step"].add_(1), "state 'step'")
    differs(lambda p, s, o: s.update(extra=torch.zeros(8)), "state keys")
    differs(lambda p, s, o: s.pop(key), "state keys")
    differs(lambda p, s, o: s.update({key: s[key].double()}), "dtype")
    differs(lambda p, s, o: o.step(), "schedule counter")


def test_scaled_and_per_dtype_tolerances():
    info, options = representatives()[0].values
    ours = stepped(info, options)
    theirs = copy.deepcopy(ours)
    p, _ = param_and_state(theirs)
    scale = p.detach().abs().max().item()
    i = p.detach().abs().argmin()
    assert p.detach()[i].abs() < 0.25 * scale
    p.data[i] += 0.5e-3 * scale               # within 1e-3 of the tensor's scale, not the entry's
    assert_same_optimizer(ours, theirs, rtol=1e-3, scaled=True)
    with pytest.raises(AssertionError, match="param 0"):
        assert_same_optimizer(ours, theirs, rtol=1e-3)
    with pytest.raises(AssertionError, match="param 0"):
        assert_same_optimizer(ours, theirs, rtol={torch.float32: 1e-5}, scaled=True)
