"""The optimizer classes' docstrings: what each class writes (a summary and its own arguments),
then its record's update in math, then the arguments every fused optimizer shares, written once
here (torch splices its shared argument docs into each optimizer's the same way).
``ScheduledOptimizer.__init_subclass__`` composes them when a class of the registry is made.
"""

from __future__ import annotations

import inspect
import textwrap

_SHARED = """\
schedule: the lr schedule, a spec from ``fused_lrs.schedules`` (default: ``constant()``):
    each group's ``lr`` is its base lr, which the schedule scales.
impl: the backend that runs the step. ``"auto"`` (default) picks the Triton kernel on CUDA,
    torch's CPU kernels on CPU, else the reference; ``"triton"``, ``"torch_fused"`` or
    ``"reference"`` choose one (one that cannot run this optimizer raises, naming why).
hold_schedule_on_skip: when GradScaler skips a step (inf or NaN gradients), hold the
    schedule counter too (default False: it advances, as torch's loop of
    ``scaler.step(opt); sched.step()`` does).
momentum_schedule: {momentum}
weight_decay_schedule: a spec for the weight decay (base: each group's ``weight_decay``),
    e.g. ``cosine(T)``.
master_weights: bf16/fp16 parameters get an fp32 master copy (``state["master"]``) and fp32
    states; the step updates the master and writes its rounding to the parameter. Without it,
    states take the parameter's dtype, as in torch.
"""


def _entries(text: str) -> list[str]:
    """The entries of an ``Args:`` block at column 0, each with its continuation lines."""
    entries: list[str] = []
    for line in text.splitlines(keepends=True):
        if line[:1].isalpha() or not entries:
            entries.append(line)
        else:
            entries[-1] += line
    return entries


def compose(own: str | None, algorithm) -> str:
    """The class docstring: ``own`` (its summary, then its ``Args:`` entries), with the update
    in math (``algorithm.math``) after the summary and the shared arguments after its own."""
    own = inspect.cleandoc(own or "")
    summary, _, rest = own.partition("\nArgs:\n")
    momentum = (f"a spec for {algorithm.momentum} (base: each group's value), e.g. "
                "``one_cycle_momentum(...)`` for torch's ``OneCycleLR(cycle_momentum=True)``."
                if algorithm.momentum else
                "refused: this optimizer has no momentum-like coefficient to schedule.")
    args, _, after = rest.partition("\n\n")
    args = textwrap.dedent(args)
    # An entry the class writes itself (a momentum_schedule with a note of its own) stands.
    written = {name.strip() for line in args.splitlines() if line[:1].isalpha()
               for name in line.partition(":")[0].split(",")}
    shared = "".join(entry for entry in _entries(_SHARED.format(momentum=momentum))
                     if entry.partition(":")[0] not in written)
    math = f"\n\n$$\n{textwrap.dedent(algorithm.math).strip()}\n$$" if algorithm.math else ""
    parts = [summary.strip() + math,
             "Args:\n" + textwrap.indent(args.rstrip() + "\n" + shared, "    ").rstrip()]
    if after.strip():
        parts.append(textwrap.dedent(after).strip())
    return "\n\n".join(parts) + "\n"
