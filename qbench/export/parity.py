"""Parity of the simulated, integer and int8 models on the run's test images."""
from __future__ import annotations

from collections.abc import Callable

import torch

from qbench.data import TensorBatches

Model = Callable[[torch.Tensor], torch.Tensor]


@torch.no_grad()
def parity(models: dict[str, Model], batches: TensorBatches) -> dict:
    """Per model its top-1 (%); per pair against the first model (the simulation) the share of
    images whose top-1 class agrees (%) and the largest absolute logit difference; and the
    number of images."""
    names = list(models)
    first = names[0]
    correct = dict.fromkeys(names, 0)
    agree = dict.fromkeys(names[1:], 0)
    largest = dict.fromkeys(names[1:], 0.0)
    count = 0
    for x, y in batches.batches(0):
        logits = {name: model(x).float() for name, model in models.items()}
        top = {name: out.argmax(1) for name, out in logits.items()}
        for name in names:
            correct[name] += int((top[name] == y).sum())
        for name in names[1:]:
            agree[name] += int((top[name] == top[first]).sum())
            largest[name] = max(largest[name], float((logits[name] - logits[first]).abs().max()))
        count += len(y)
    out: dict = {f"{name}_top1": 100.0 * correct[name] / count for name in names}
    for name in names[1:]:
        out[f"{name}_agreement"] = 100.0 * agree[name] / count
        out[f"{name}_max_logit_diff"] = largest[name]
    out["images"] = count
    return out
