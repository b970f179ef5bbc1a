"""as_lr_scheduler: a torch LR scheduler that HF Trainer (and Lightning) accept next to a fused
optimizer, that changes nothing and reports the lr the fused step used; and the warning when a
real torch scheduler drives a fused optimizer.

The Trainer tests train a 2-layer MLP on CPU for 12 steps: Trainer's own AdamW with
get_cosine_schedule_with_warmup against FusedAdamWScheduled(schedule=warmup(cosine(...))) with
the adapter. Losses agree within 1e-4 relative (measured: 2e-7) and the logged lrs within 1e-12;
a run resumed from the step-6 checkpoint logs what the uninterrupted run logged.

Inside real ``Trainer.train()`` and ``lightning.Trainer.fit`` runs, a torch scheduler on a fused
optimizer (Trainer's ``optimizers=(opt, None)``, which builds its LambdaLR on accelerate's wrapper
of the optimizer; a LambdaLR from ``configure_optimizers``) warns once, naming
``as_lr_scheduler()``, and the base lr the steps scale is rewritten under them; with the adapter
nothing warns and every step scales the constructor's base lr, so the lr each step used is the
fused schedule's alone. Taking over a torch run (``from_torch``, a torch checkpoint whose groups
hold ``initial_lr``) does not warn; the distributed flows (DCP, ZeRO) are checked in
test_distributed.py.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import warnings

import pytest
import torch
from optimizers import ANY, representatives
from torch.optim import lr_scheduler as tlr

from fused_lrs import FusedAdamWScheduled
from fused_lrs.adapters import as_lr_scheduler
from fused_lrs.schedules import cosine, step, warmup

STEPS, WARMUP, LR, BATCH = 12, 3, 0.05, 4
WARNING = "torch LR scheduler was attached to FusedAdamWScheduled.*opt\\.as_lr_scheduler\\(\\)"


class Watch:
    """Warnings of a torch scheduler on a fused optimizer, and the base lr of group 0 each step
    of ``opt`` scaled (``group["lr"]`` as the step begins; a step pre-hook)."""

    def __init__(self):
        self.base_lrs = []
        self._catcher = warnings.catch_warnings(record=True)

    def attach(self, opt):
        opt.register_step_pre_hook(lambda o, args, kwargs:
                                   self.base_lrs.append(o.param_groups[0]["lr"]))
        return opt

    def __enter__(self):
        self._seen = self._catcher.__enter__()
        warnings.simplefilter("always")
        return self

    def __exit__(self, *exc):
        self._catcher.__exit__(*exc)

    @property
    def warned(self) -> list[str]:
        return [str(w.message) for w in self._seen if "torch LR scheduler" in str(w.message)]


@pytest.mark.parametrize("info, options", representatives())
def test_adapter_changes_nothing_and_reports_the_used_lr(info, options):
    p = torch.zeros(3, requires_grad=True)
    opt = info.cls([{"params": [p]}, {"params": [], "lr": 0.5}], lr=1.0, schedule=step(2, 0.5),
                   **options)
    groups = [dict(g) for g in opt.param_groups]
    sched = opt.as_lr_scheduler()
    assert isinstance(sched, tlr.LRScheduler)
    assert "step" not in vars(opt)  # torch's LRScheduler would have wrapped opt.step
    assert sched.get_last_lr() == [1.0, 0.5]  # lr(0), which the first step will use
    for k in range(5):
        p.grad = torch.ones(3)
        opt.step()
        assert sched.get_last_lr() == opt.get_last_lr() == [0.5 ** (k // 2), 0.5 ** (k // 2 + 1)]
        sched.step()
        assert [dict(g) for g in opt.param_groups] == groups  # no lr written, no initial_lr
        assert int(opt.schedule_step) == k + 1
    saved = sched.state_dict()
    fresh = as_lr_scheduler(opt)
    fresh.load_state_dict(saved)
    assert fresh.state_dict() == saved == {"last_epoch": 5, "_step_count": 6}
    with pytest.raises(TypeError, match="expected a fused optimizer"):
        as_lr_scheduler(info.peer([p], lr=0.1))


def test_attaching_a_torch_scheduler_warns_once():
    opt = ANY.cls([torch.zeros(2, requires_grad=True)], schedule=cosine(10))
    with pytest.warns(UserWarning, match=f"torch LR scheduler was attached to "
                                         f"{ANY.name}.*opt.as_lr_scheduler\\(\\)"
                       ) as seen:
        tlr.LambdaLR(opt, lambda t: 1.0)
    assert seen[0].filename == __file__  # points at the line that built the scheduler
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tlr.StepLR(opt, 3)  # once per optimizer
        as_lr_scheduler(ANY.cls([torch.zeros(2, requires_grad=True)]))
    # HF Trainer with optimizers=(opt, None) builds its LambdaLR on the fused optimizer.
    transformers, _, _ = transformers_trainer()
    opt = ANY.cls([torch.zeros(2, requires_grad=True)])
    with pytest.warns(UserWarning, match="torch LR scheduler was attached"):
        transformers.get_scheduler("cosine", opt, num_warmup_steps=2, num_training_steps=10)


# ------------------------------------------------------------------ HF Trainer

class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                                       torch.nn.Linear(16, 1))

    def forward(self, x, labels):
        out = self.net(x).squeeze(-1)
        return {"loss": torch.nn.functional.mse_loss(out, labels), "logits": out}


class Data(torch.utils.data.Dataset):
    def __init__(self):
        gen = torch.Generator().manual_seed(1)
        self.x = torch.randn(STEPS * BATCH, 8, generator=gen)
        self.y = self.x[:, :3].sum(1) + 0.1 * torch.randn(STEPS * BATCH, generator=gen)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "labels": self.y[i]}


def transformers_trainer():
    """transformers' Trainer and TrainingArguments, imported with the repository root off
    ``sys.path``: run from the root, this repository's ``kernels/`` folder shadows the PyPI
    package ``kernels`` (HF's hub kernels, installed beside transformers here), and
    transformers, finding that package's metadata, imports names our folder lacks."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")  # Trainer needs it (transformers[torch])
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    ours = sys.modules.get("kernels")
    if ours is not None and os.path.dirname(os.path.abspath(ours.__file__)).startswith(root):
        del sys.modules["kernels"]
    saved = sys.path[:]
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != root]
    try:
        from transformers import Trainer, TrainingArguments
    finally:
        sys.path[:] = saved
    return transformers, Trainer, TrainingArguments


def train(out, fused, resume=None, save=False, adapter=True, watch=None):
    """One Trainer run; returns its per-step logs and the final parameters. ``fused``: our
    optimizer, with ``as_lr_scheduler`` (``adapter``) or with ``optimizers=(opt, None)``, under
    ``watch`` (a ``Watch``) if given."""
    _, Trainer, TrainingArguments = transformers_trainer()

    torch.manual_seed(0)
    model = Tiny()
    args = TrainingArguments(
        output_dir=str(out), max_steps=STEPS, per_device_train_batch_size=BATCH,
        learning_rate=LR, weight_decay=0.01, lr_scheduler_type="cosine", warmup_steps=WARMUP,
        optim="adamw_torch", logging_steps=1, report_to=[], use_cpu=True, seed=0,
        save_strategy="steps" if save else "no", save_steps=6, disable_tqdm=True,
        remove_unused_columns=False, dataloader_num_workers=0)
    optimizers = (None, None)
    if fused:
        # AdamW itself: the peer is Trainer's own optimizer (optim="adamw_torch").
        # Trainer's own grouping: weight decay on the weights, none on the biases.
        decay = [p for n, p in model.named_parameters() if not n.endswith("bias")]
        rest = [p for n, p in model.named_parameters() if n.endswith("bias")]
        opt = FusedAdamWScheduled(
            [{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
            lr=LR, betas=(0.9, 0.999), eps=1e-8, impl="reference",
            schedule=warmup(cosine(T_max=STEPS - WARMUP), steps=WARMUP))
        optimizers = (opt if watch is None else watch.attach(opt),
                      as_lr_scheduler(opt) if adapter else None)
    trainer = Trainer(model=model, args=args, train_dataset=Data(), optimizers=optimizers)
    with watch or contextlib.nullcontext():
        trainer.train(resume_from_checkpoint=resume)
    logs = [e for e in trainer.state.log_history if "loss" in e]
    return logs, [p.detach().clone() for p in model.parameters()]


def column(logs, key):
    return torch.tensor([e[key] for e in logs], dtype=torch.float64)


def test_trainer_with_the_adapter_matches_trainer_adamw_and_resumes(tmp_path):
    theirs, their_params = train(tmp_path / "torch", fused=False)
    watch = Watch()
    ours, our_params = train(tmp_path / "fused", fused=True, save=True, watch=watch)
    assert watch.warned == []
    # Every step scaled the constructor's base lr: the lr it used is the fused schedule's alone,
    # lr(k) of warmup(cosine) from LR, which the logged lrs below are.
    assert watch.base_lrs == [LR] * STEPS
    assert [e["step"] for e in ours] == [e["step"] for e in theirs] == list(range(1, STEPS + 1))
    loss, expected = column(ours, "loss"), column(theirs, "loss")
    assert ((loss - expected).abs() <= 1e-4 * expected.abs()).all(), (loss, expected)
    lr, expected_lr = column(ours, "learning_rate"), column(theirs, "learning_rate")
    assert ((lr - expected_lr).abs() <= 1e-12 * LR).all(), (lr, expected_lr)
    assert lr[0] == 0.0 and lr[WARMUP] == LR  # the lr each step used: lr(0) = 0, then the peak
    for p, q in zip(our_params, their_params):
        assert torch.allclose(p, q, rtol=1e-4, atol=1e-6)

    resumed, resumed_params = train(tmp_path / "fused", fused=True,
                                    resume=str(tmp_path / "fused" / "checkpoint-6"))
    assert [e["step"] for e in resumed] == list(range(1, STEPS + 1))
    assert column(resumed, "loss").tolist() == loss.tolist()
    assert column(resumed, "learning_rate").tolist() == lr.tolist()
    for p, q in zip(resumed_params, our_params):
        assert torch.equal(p, q)


def test_trainer_without_the_adapter_warns_inside_train(tmp_path):
    # optimizers=(opt, None): Trainer builds its cosine LambdaLR on accelerate's wrapper of
    # ours (AcceleratedOptimizer, whose param_groups are ours); the first step finds the
    # initial_lr it wrote into our groups.
    watch = Watch()
    logs, _ = train(tmp_path, fused=True, adapter=False, watch=watch)
    assert len(logs) == STEPS
    assert len(watch.warned) == 1 and re.search(WARNING, watch.warned[0]), watch.warned
    # The LambdaLR rewrote the base lr under the fused schedule: the two multiply. (Its warmup
    # starts at 0, so the first step scaled a base of 0.)
    assert watch.base_lrs[0] == 0.0 and len(set(watch.base_lrs)) > STEPS // 2


# ------------------------------------------------------------------ Lightning

def fit(out, scheduler, watch):
    """One ``lightning.Trainer.fit`` whose ``configure_optimizers`` returns a fused optimizer and
    ``scheduler(opt)``, under ``watch``; the rows of its CSV log that hold the fused lr."""
    L = pytest.importorskip("lightning")
    from lightning.pytorch.loggers import CSVLogger

    class LogFusedLR(L.Callback):  # the README's callback
        """Logs the lr each fused step used. ``last_lr`` is a device tensor: Lightning reads it
        back only when it writes its logs (every ``log_every_n_steps``)."""

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step % trainer.log_every_n_steps == 0:
                for i, lr in enumerate(trainer.optimizers[0].last_lr):
                    pl_module.log(f"lr-fused/pg{i}", lr, on_step=True, on_epoch=False)

    class Module(L.LightningModule):
        def __init__(self):
            super().__init__()
            self.model = Tiny()

        def training_step(self, batch, batch_idx):
            return self.model(**batch)["loss"]

        def configure_optimizers(self):
            opt = ANY.cls(self.parameters(), lr=LR, impl="reference",
                          schedule=warmup(cosine(T_max=STEPS - WARMUP), WARMUP))
            watch.attach(opt)
            return {"optimizer": opt,
                    "lr_scheduler": {"scheduler": scheduler(opt), "interval": "step"}}

    torch.manual_seed(0)
    module = Module()
    trainer = L.Trainer(max_steps=STEPS, accelerator="cpu", logger=CSVLogger(out),
                        log_every_n_steps=1, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False,
                        callbacks=[LogFusedLR()])
    with watch:
        trainer.fit(module, torch.utils.data.DataLoader(Data(), batch_size=BATCH))
    import csv

    with open(trainer.logger.log_dir + "/metrics.csv") as f:
        return [r for r in csv.DictReader(f) if r.get("lr-fused/pg0")]


def test_lightning_accepts_the_adapter_and_logs_the_used_lr(tmp_path):
    watch = Watch()
    rows = fit(tmp_path, as_lr_scheduler, watch)
    assert watch.warned == []
    assert watch.base_lrs == [LR] * STEPS      # each step used the fused schedule's lr alone
    spec = warmup(cosine(T_max=STEPS - WARMUP), WARMUP)
    logged = torch.tensor([float(r["lr-fused/pg0"]) for r in rows], dtype=torch.float64)
    steps = torch.tensor([int(r["step"]) for r in rows])
    assert len(rows) == STEPS
    assert torch.allclose(logged, spec.lr(steps, LR), rtol=1e-12, atol=0)


def test_lightning_with_a_torch_scheduler_warns_inside_fit(tmp_path):
    watch = Watch()
    rows = fit(tmp_path, lambda opt: tlr.LambdaLR(opt, lambda t: 0.5 ** t), watch)
    assert len(rows) == STEPS
    assert len(watch.warned) == 1 and re.search(WARNING, watch.warned[0]), watch.warned
    assert watch.base_lrs == [LR * 0.5 ** k for k in range(STEPS)]   # rewritten under it


# ------------------------------------------------------------------ taking over a torch run

def torch_run(steps=3):
    """torch's AdamW and a CosineAnnealingLR after ``steps`` steps: its groups hold
    ``initial_lr``, as does its checkpoint."""
    gen = torch.Generator().manual_seed(0)
    params = [torch.randn(4, 3, generator=gen).requires_grad_() for _ in range(2)]
    opt = torch.optim.AdamW(params, lr=LR)
    sched = tlr.CosineAnnealingLR(opt, 10)
    for _ in range(steps):
        for p in params:
            p.grad = torch.randn(p.shape, generator=gen)
        opt.step()
        sched.step()
    assert all("initial_lr" in g for g in opt.state_dict()["param_groups"])
    return params, opt, sched


def test_taking_over_a_torch_run_does_not_warn():
    from fused_lrs import from_torch

    params, opt, sched = torch_run()
    fused = [from_torch(opt, sched)]
    mine = [p.detach().clone().requires_grad_() for p in params]
    loaded = FusedAdamWScheduled(mine, lr=1.0, schedule=cosine(10))
    loaded.load_state_dict(opt.state_dict())      # initial_lr becomes the base lr
    fused.append(loaded)
    for f in fused:
        with Watch() as watch:
            for _ in range(2):
                for p in f.param_groups[0]["params"]:
                    p.grad = torch.ones_like(p)
                f.step()
        assert watch.warned == []
        assert all("initial_lr" not in g for g in f.param_groups)
        assert f.param_groups[0]["lr"] == LR
