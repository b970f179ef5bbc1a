"""lr_find puts everything back, bitwise, however the sweep ends: the model's parameters and
buffers (BatchNorm statistics and counts), the gradients, the optimizer's state tensors and
step counts, its groups, schedule, schedule counter and plateau state, GradScaler's attributes
and the random number generators.

The strongest check is a twin: two identical runs, one of which calls lr_find halfway; both
then train on, and must stay bitwise equal, so nothing that lr_find touched (the caches behind
the optimizer's step included) differs afterwards.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from fused_lrs import FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled, lr_find
from fused_lrs import schedules as S

# One CPU thread: these steps are tiny, and where other jobs share the cores a preempted OpenMP
# worker stalls each of them (conftest.one_thread): a restore test takes 0.07 s on one thread,
# 0.6-4 s on two.
pytestmark = pytest.mark.usefixtures("one_thread")

PLATEAU = S.warmup(S.plateau(patience=0, factor=0.5), steps=3)


class Net(nn.Module):
    """BatchNorm (buffers that every forward changes), dropout (the RNG), and a parameter
    that no loss reaches (no gradient, so no optimizer state)."""

    def __init__(self):
        super().__init__()
        self.fc1, self.bn = nn.Linear(6, 12), nn.BatchNorm1d(12)
        self.drop, self.fc2 = nn.Dropout(0.2), nn.Linear(12, 2)
        self.unused = nn.Parameter(torch.ones(3))

    def forward(self, x):
        return self.fc2(self.drop(torch.relu(self.bn(self.fc1(x)))))


def batches(n=6):
    gen = torch.Generator().manual_seed(7)
    return [(torch.randn(8, 6, generator=gen), torch.randint(0, 2, (8,), generator=gen))
            for _ in range(n)]


def loss_fn(model, batch):
    return F.cross_entropy(model(batch[0]), batch[1])


OPTIMIZERS = {
    "adamw-plateau": lambda m: FusedAdamWScheduled(
        [{"params": [m.fc1.weight, m.fc2.weight, m.unused]},
         {"params": [m.fc1.bias, m.fc2.bias, *m.bn.parameters()], "lr": 3e-3,
          "weight_decay": 0.0}], lr=1e-2, amsgrad=True, schedule=PLATEAU),
    "sgd-momentum": lambda m: FusedSGDScheduled(m.parameters(), lr=0.05, momentum=0.9,
                                                dampening=0.1, weight_decay=1e-3,
                                                schedule=S.cosine(T_max=40)),
    "adam-reference": lambda m: FusedAdamScheduled(m.parameters(), lr=torch.tensor(1e-2),
                                                   impl="reference",
                                                   schedule=S.exponential(0.95)),
}


def setup(name):
    torch.manual_seed(0)
    model = Net()
    return model, OPTIMIZERS[name](model)


def train(model, opt, data, steps, report=False, seed=0):
    torch.manual_seed(seed)              # the same dropout masks in a run and its twin
    for k in range(steps):
        opt.zero_grad()
        loss = loss_fn(model, data[k % len(data)])
        loss.backward()
        opt.step()
        if report:
            opt.report(loss.detach() * (1 + k % 2))      # the plateau sees a bad epoch or two


def everything(model, opt) -> dict:
    """Clones of all that lr_find must restore, and the identity of the tensors it must keep."""
    sd = opt.state_dict()
    return {
        "params": [p.detach().clone() for p in model.parameters()],
        "buffers": [b.clone() for b in model.buffers()],
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "grad_ids": [id(p.grad) for p in model.parameters()],
        "state": {i: {k: v.clone() for k, v in s.items()} for i, s in sd["state"].items()},
        "state_ids": {id(p): {k: id(v) for k, v in s.items()} for p, s in opt.state.items()},
        "groups": [{k: v.clone() if isinstance(v, torch.Tensor) else v
                    for k, v in g.items() if k != "params"} for g in sd["param_groups"]],
        "fused_lrs": {k: v.clone() if isinstance(v, torch.Tensor) else v
                      for k, v in sd["fused_lrs"].items() if k != "plateau"},
        "plateau": ({k: v.clone() for k, v in sd["fused_lrs"]["plateau"].items()}
                    if "plateau" in sd["fused_lrs"] else None),
        "schedule": opt.schedule, "t": opt.schedule_step.clone(), "last_lr": opt.last_lr,
        "rng": torch.get_rng_state(),
    }


def values(snapshot: dict) -> dict:
    """A snapshot without the tensor identities (a run and its twin hold other objects)."""
    return {k: v for k, v in snapshot.items() if not k.endswith("_ids")}


def assert_equal(a, b, where="") -> None:
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b) or (a.isnan() == b.isnan()).all() and torch.equal(
            a.nan_to_num(), b.nan_to_num()), f"{where}: {a} != {b}"
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), f"{where}: keys {sorted(a)} != {sorted(b)}"
        for k in a:
            assert_equal(a[k], b[k], f"{where}[{k!r}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_equal(x, y, f"{where}[{i}]")
    else:
        assert a == b, f"{where}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_restored_bitwise_and_trains_on_like_an_untouched_twin(name):
    plateau = name.endswith("plateau")
    data = batches()
    (model, opt), (twin, twin_opt) = setup(name), setup(name)
    for m, o in ((model, opt), (twin, twin_opt)):
        train(m, o, data, 5, report=plateau)
        loss_fn(m, data[0]).backward()        # gradients present when lr_find is called
    if plateau:
        assert opt.state_dict()["fused_lrs"]["plateau"]["scales"].tolist() != [1.0, 1.0]
    before = everything(model, opt)
    result = lr_find(model, opt, loss_fn, data, steps=30)
    assert len(result.lrs) > 10 and not torch.equal(model.bn.running_mean, torch.zeros(12))
    assert_equal(everything(model, opt), before, name)
    # lr_find changed nothing that the next steps read: the two runs stay bitwise equal.
    assert_equal(values(everything(twin, twin_opt)), values(before), "twin")
    train(model, opt, data, 6, report=plateau, seed=1)
    train(twin, twin_opt, data, 6, report=plateau, seed=1)
    assert_equal(values(everything(model, opt)), values(everything(twin, twin_opt)),
                 f"{name} after 6 more steps")


@pytest.mark.parametrize("error", [ValueError, KeyboardInterrupt])
def test_restored_when_the_sweep_is_interrupted(error):
    data = batches()
    model, opt = setup("adamw-plateau")
    train(model, opt, data, 4, report=True)
    before = everything(model, opt)
    calls = []

    def failing(m, batch):
        calls.append(1)
        if len(calls) == 7:
            raise error("stop")
        return loss_fn(m, batch)

    with pytest.raises(error, match="stop"):
        lr_find(model, opt, failing, data, steps=30)
    assert len(calls) == 7
    assert_equal(everything(model, opt), before, error.__name__)
    assert "found_inf" not in vars(opt) and "grad_scale" not in vars(opt)


def test_a_fresh_optimizer_and_model_stay_fresh():
    model, opt = setup("sgd-momentum")
    lr_find(model, opt, loss_fn, batches(), steps=20)
    assert not opt.state and opt.schedule_step.item() == 0
    assert all(p.grad is None for p in model.parameters())
    assert model.bn.num_batches_tracked.item() == 0
    # and trains like a twin that never saw lr_find
    twin, twin_opt = setup("sgd-momentum")
    train(model, opt, batches(), 4)
    train(twin, twin_opt, batches(), 4)
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_gradscaler_attributes_the_user_set_are_put_back():
    model, opt = setup("sgd-momentum")
    found_inf = torch.zeros(())
    opt.found_inf = found_inf
    lr_find(model, opt, loss_fn, batches(), steps=10)
    assert opt.found_inf is found_inf and "grad_scale" not in vars(opt)
