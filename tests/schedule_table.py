"""The table of schedule families that the optimizer suites run against torch: each torch
scheduler (a factory over an optimizer) with the spec that mirrors it.

test_optim_vs_torch runs every row, test_migrate converts each with ``from_torch`` mid-run,
test_from_torch converts each after 17 steps, test_optim_checkpoint resumes under some, and
test_distributed_counter loads every spec. Edges (milestones, restarts, cycle turns, the end of
warmup) fall between steps 5 and 40; OneCycleLR's 60 steps outlast the longest run (50 steps:
torch refuses to step past ``total_steps``).
"""

from torch.optim import lr_scheduler as tls

from fused_lrs.schedules import (
    chained,
    constant,
    cosine,
    cosine_restarts,
    cyclic,
    exponential,
    linear,
    multistep,
    one_cycle,
    polynomial,
    sequential,
    step,
)

# (name, torch scheduler factory, our spec): more than five families, composites included.
SCHEDULES = [
    ("step", lambda o: tls.StepLR(o, step_size=7, gamma=0.5), step(7, 0.5)),
    ("multistep", lambda o: tls.MultiStepLR(o, [10, 25, 25, 40], gamma=0.5),
     multistep([10, 25, 25, 40], 0.5)),
    ("exponential", lambda o: tls.ExponentialLR(o, gamma=0.95), exponential(0.95)),
    ("cosine", lambda o: tls.CosineAnnealingLR(o, T_max=20, eta_min=1e-4), cosine(20, 1e-4)),
    ("cosine_restarts", lambda o: tls.CosineAnnealingWarmRestarts(o, T_0=5, T_mult=2,
                                                                  eta_min=1e-5),
     cosine_restarts(5, 2, 1e-5)),
    ("linear", lambda o: tls.LinearLR(o, start_factor=0.1, total_iters=10), linear(0.1, 1.0, 10)),
    ("constant", lambda o: tls.ConstantLR(o, factor=0.5, total_iters=8), constant(0.5, 8)),
    ("polynomial", lambda o: tls.PolynomialLR(o, total_iters=30, power=2.0), polynomial(30, 2.0)),
    ("one_cycle", lambda o: tls.OneCycleLR(o, max_lr=0.05, total_steps=60, cycle_momentum=False),
     one_cycle(0.05, 60)),
    ("cyclic", lambda o: tls.CyclicLR(o, base_lr=1e-3, max_lr=1e-2, step_size_up=5,
                                      step_size_down=8, mode="triangular2",
                                      cycle_momentum=False),
     cyclic(1e-3, 1e-2, 5, 8, "triangular2")),
    ("warmup+cosine", lambda o: tls.SequentialLR(
        o, [tls.LinearLR(o, start_factor=0.1, total_iters=5), tls.CosineAnnealingLR(o, 30)],
        milestones=[5]), sequential([linear(0.1, 1.0, 5), cosine(30)], [5])),
    ("chained", lambda o: tls.ChainedScheduler(
        [tls.StepLR(o, step_size=10, gamma=0.5), tls.ExponentialLR(o, gamma=0.98)]),
     chained([step(10, 0.5), exponential(0.98)])),
]
#: The rows by name: ``(torch factory, spec)``.
BY_NAME = {name: (factory, spec) for name, factory, spec in SCHEDULES}
