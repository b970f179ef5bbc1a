"""The algorithm registry: the one place that lists the optimizers fused_lrs implements.

Each entry is a fused optimizer class; its ``algorithm`` is the record every other piece reads
(``record.py``: the peer class, the state keys, the group row's columns, the reference, CPU and
kernel updates). Adding an elementwise optimizer is one file here (record, updates, class), one
kernel module (``kernels/<name>.py``), one line below and one row in the tests' table of
optimizers (``tests/optimizers.py``).
"""

from fused_lrs.algorithms.adadelta import FusedAdadeltaScheduled
from fused_lrs.algorithms.adagrad import FusedAdagradScheduled
from fused_lrs.algorithms.adam import FusedAdamScheduled, FusedAdamWScheduled
from fused_lrs.algorithms.adamax import FusedAdamaxScheduled
from fused_lrs.algorithms.asgd import FusedASGDScheduled
from fused_lrs.algorithms.lion import FusedLionScheduled
from fused_lrs.algorithms.nadam import FusedNAdamScheduled
from fused_lrs.algorithms.radam import FusedRAdamScheduled
from fused_lrs.algorithms.record import Algorithm
from fused_lrs.algorithms.rmsprop import FusedRMSpropScheduled
from fused_lrs.algorithms.sgd import FusedSGDScheduled

#: Every fused optimizer class, in the order the docs and the bench list them.
OPTIMIZERS = (FusedAdamScheduled, FusedAdamWScheduled, FusedSGDScheduled,
              FusedAdamaxScheduled,
              FusedNAdamScheduled,
              FusedRAdamScheduled,
              FusedAdadeltaScheduled,
              FusedASGDScheduled,
              FusedRMSpropScheduled,
              FusedAdagradScheduled,
              FusedLionScheduled)
#: Every algorithm record, by name.
ALGORITHMS: dict[str, Algorithm] = {cls.algorithm.name: cls.algorithm for cls in OPTIMIZERS}
#: The algorithm a tool uses where none is named: AdamW, what transformers train with (the
#: bench's GPT scenarios, the examples in messages).
DEFAULT = "adamw"
#: The algorithm convolutional networks train with in torchvision's ResNet recipe, SGD with
#: momentum (the bench's ResNet-50 scenario).
CONVNET = "sgd"


def optimizer_class(name: str) -> type:
    """The fused class of algorithm ``name`` ("adam", "adamw", "sgd", ...)."""
    for cls in OPTIMIZERS:
        if cls.algorithm.name == name:
            return cls
    raise KeyError(f"no algorithm {name!r}; there are {sorted(ALGORITHMS)}")


def for_peer(peer: type) -> type | None:
    """The fused class that mirrors exactly ``peer`` (a subclass may change the update)."""
    for cls in OPTIMIZERS:
        if cls.algorithm.peer_class() is peer:
            return cls
    return None


__all__ = ["ALGORITHMS", "CONVNET", "DEFAULT", "OPTIMIZERS", "Algorithm", "for_peer",
           "optimizer_class",
           *(cls.__name__ for cls in OPTIMIZERS)]
