"""Cache-sized waves for the CPU updates made of torch foreach ops (RMSprop, Lion).

A foreach op walks its whole list before the next op starts, so a chain of k ops over tensors
larger than the caches moves every tensor through memory k times. Split into waves of at most
``WAVE`` elements (whole tensors while they fit, chunks of larger ones), the chain runs wave by
wave, and each op after the first finds its operands where the previous one left them, in
cache. The ops are elementwise, so the result is the same, bit for bit.

Slices are views of each tensor's storage in its own element order, so a tensor is sliced only
when it and every tensor aligned with it (its gradient, its states) are contiguous; any other
goes whole, in a wave of its own. The slices of the weights and states are made once per plan
(``Bucket.cache``); the gradients', which are new tensors every step, at each step. A bucket
small enough to stay in cache runs whole (``WHOLE``).
"""

from __future__ import annotations

import torch

_CONTIGUOUS = torch.Tensor.is_contiguous
#: Elements per wave: 128K fp32 is 512 KB a list, 2.5 MB for Lion's five operands.
WAVE = 1 << 17
#: A bucket of at most this many elements runs whole, in one wave: its lists stay in the last
#: level cache from one op to the next (4 MB a list in fp32, against the tens of MB of a
#: server CPU's L3), and every wave costs every op its fixed cost (~5 us a foreach call).
#: Measured (torch 2.13, one thread, benchmarks/bench_cpu_algorithms.py): at 7.1M parameters
#: in 12 tensors waves take Lion from 1.09x lion_pytorch's foreach step to 0.5x, RMSprop from
#: 1.0x torch's to 0.33x; at 0.7M in 76 tensors, waves of 64K cost Lion 20%.
WHOLE = 1 << 20


def plan(numels: list[int], sliceable: list[bool], wave: int | None = None
         ) -> list[list[tuple]]:
    """Waves of ``(tensor, start, stop)``: runs of whole tensors up to ``wave`` (default
    ``WAVE``) elements, a larger sliceable tensor in chunks of ``wave``, one that is not in a
    wave of its own (its slice ``(tensor, None, None)``: the whole tensor)."""
    wave = wave or WAVE
    waves, current, size = [], [], 0
    for i, (n, ok) in enumerate(zip(numels, sliceable)):
        if not ok:
            waves.append([(i, None, None)])
            continue
        for start in range(0, max(n, 1), wave) if n > wave else (0,):
            stop = min(start + wave, n)
            if current and size + stop - start > wave:
                waves.append(current)
                current, size = [], 0
            current.append((i, start, stop))
            size += stop - start
    if current:
        waves.append(current)
    return waves


def _slices(tensors: list[torch.Tensor], waves: list[list[tuple]]) -> list[list[torch.Tensor]]:
    flat = [t.view(-1) if t.is_contiguous() else t for t in tensors]
    return [[tensors[i] if a is None else flat[i][a:b] for i, a, b in wave] for wave in waves]


def split(bucket, grads: list[torch.Tensor], lists: tuple) -> list[tuple]:
    """The bucket's weights, ``grads`` and each of ``lists`` (states; an empty list stays
    empty) as waves: ``[(weights, grads, *lists)]``, one tuple of aligned lists per wave. A
    gradient that is not contiguous (the weights' slices assume it is) takes the whole lists
    in one wave, this step."""
    whole = bucket.cache.get("whole")
    if whole is None:
        whole = bucket.cache["whole"] = sum(w.numel() for w in bucket.weights) <= WHOLE
    if whole or not all(map(_CONTIGUOUS, grads)):
        return [(bucket.weights, grads, *lists)]
    cache = bucket.cache.get("waves")
    if cache is None:
        aligned = [bucket.weights, *(x for x in lists if x)]
        sliceable = [all(x[i].is_contiguous() for x in aligned)
                     for i in range(len(bucket.weights))]
        waves = plan([w.numel() for w in bucket.weights], sliceable)
        cache = bucket.cache["waves"] = (
            waves, [_slices(x, waves) if x else [[] for _ in waves]
                    for x in (bucket.weights, *lists)])
    waves, sliced = cache
    return list(zip(*[sliced[0], _slices(grads, waves), *sliced[1:]]))
