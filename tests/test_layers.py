"""What QAT keeps for the backward: the LSQ / LSQ+, APoT and FAQ quantizer functions keep their input
itself (a view of it), never a float tensor of its size, and recompute what their gradients need."""
from collections.abc import Callable

import pytest
import torch

from qbench.quant import LearnedStepFakeQuant
from qbench.quant.apot import LevelTable, RCFQuantize, apot_levels
from qbench.quant.faq import FixedPointFakeQuant


def _saved_storages(fn: Callable[[], torch.Tensor]) -> list[int]:
    """The storage pointers of the float tensors of more than one element autograd saves while ``fn`` runs."""
    saved = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.is_floating_point() and t.numel() > 1:
            saved.append(t.untyped_storage().data_ptr())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return saved


@pytest.mark.parametrize("quantize", [
    lambda v: LearnedStepFakeQuant.apply(v, torch.tensor(0.3, requires_grad=True), None, -4, 3, 1.0),
    lambda v: LearnedStepFakeQuant.apply(v, torch.tensor(0.3, requires_grad=True),
                                         torch.tensor(-0.1, requires_grad=True), -4, 3, 1.0),
    lambda v: RCFQuantize.apply(v, torch.tensor(1.5, requires_grad=True),
                                LevelTable.build(apot_levels(4, False), 0.0), 0.0, 0.0, False),
    lambda v: RCFQuantize.apply(v, torch.tensor(3.0, requires_grad=True),
                                LevelTable.build(apot_levels(4, True), -1.0), -1.0, 0.0, True),
    lambda v: FixedPointFakeQuant.apply(v, torch.tensor(0.25), -8, 7, True),
], ids=["lsq", "lsqplus", "apot", "apot-weight-norm", "faq"])
def test_the_backward_keeps_the_input_itself_and_no_float_tensor_of_its_size(quantize):
    v = torch.randn(8, 6, 5, 5).contiguous(memory_format=torch.channels_last).requires_grad_(True)
    assert set(_saved_storages(lambda: quantize(v))) == {v.untyped_storage().data_ptr()}
