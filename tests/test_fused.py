"""Batch norm + activation + LSQ / LSQ+ input quantizer fused (``runtime.fuse_batch_norm``):
the same values and gradients as the three modules unfused, the same state, the same evaluation,
and only the sites where removing the activation call changes nothing else."""
import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from qbench.methods import create_method
from qbench.models import create_model, model_spec
from qbench.phases import prepare
from qbench.quant import native
from qbench.quant.convert import EdgeLayerPolicy, plan_precision
from qbench.quant.fused import BatchNormActQuant, FusedBatchNormAct2d, fuse_activation_quantizers
from qbench.quant.layers import QuantConv2d
from qbench.quant.lsq import LearnedStepFakeQuant

ACTIVATIONS = {"relu": F.relu, "relu6": F.relu6, "silu": F.silu, "identity": lambda y: y}


def unfused(x, bn, act, step, offset, qmin, qmax, grad_scale):
    return LearnedStepFakeQuant.apply(ACTIVATIONS[act](bn(x)), step, offset, qmin, qmax, grad_scale)


@pytest.mark.parametrize("act", sorted(ACTIVATIONS))
@pytest.mark.parametrize("offset", [None, -0.4])
@pytest.mark.parametrize("batch_stats", [True, False])
@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("size", [5, 1])
def test_values_gradients_and_running_statistics_match_the_unfused_modules(act, offset, batch_stats, layout, size):
    """In float64, so that a difference is a formula's, not a summation order's. ``batch_stats``
    false is evaluation-mode batch norm in a training step (``freeze_bn``); the gradient arrives
    contiguous, a layout other than channels_last's."""
    torch.manual_seed(0)
    x0 = (torch.randn(16, 6, size, size, dtype=torch.float64) * 2 + 0.5).contiguous(memory_format=layout)
    grad = torch.randn(16, 6, size, size, dtype=torch.float64)
    signed = offset is not None
    qmin, qmax = (-8, 7) if signed else (0, 15)
    results = []
    for fused in (False, True):
        torch.manual_seed(1)
        bn = nn.BatchNorm2d(6).double().train(batch_stats)
        with torch.no_grad():
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
            bn.running_var.fill_(1.7)
        x = x0.clone().requires_grad_(True)
        step = torch.tensor(0.3, dtype=torch.float64, requires_grad=True)
        beta = torch.tensor(offset, dtype=torch.float64, requires_grad=True) if signed else None
        if fused:
            out = BatchNormActQuant.apply(x, bn.weight, bn.bias, bn.running_mean, bn.running_var, batch_stats,
                                          bn.momentum, bn.eps, act, step, beta, qmin, qmax, 0.25)
        else:
            out = unfused(x, bn, act, step, beta, qmin, qmax, 0.25)
        out.backward(grad)
        results.append([out, x.grad, bn.weight.grad, bn.bias.grad, step.grad,
                        beta.grad if signed else None, bn.running_mean, bn.running_var])
    def layout_of(t):
        return t.is_contiguous(), t.is_contiguous(memory_format=torch.channels_last)
    assert layout_of(results[1][0]) == layout_of(results[0][0])
    names = ["output", "x grad", "gamma grad", "bn beta grad", "step grad", "offset grad", "running mean",
             "running var"]
    for name, eager, fused in zip(names, *results):
        if eager is None:
            assert fused is None, name
        else:
            torch.testing.assert_close(fused, eager, rtol=1e-10, atol=1e-12, msg=name)


def quantized(name: str, method: str, x: torch.Tensor) -> nn.Module:
    """``name`` with ``method`` at W4A4, its quantizers initialised on ``x``, in training mode."""
    torch.manual_seed(0)
    model = create_model(name, 10, 1)
    spec = model_spec(name)
    m = create_method({"name": method})
    plan = plan_precision(model, 4, 4, spec.first_layer, spec.last_layer, EdgeLayerPolicy(), EdgeLayerPolicy())
    model = prepare(model, m.adjust_plan(model, plan), m)
    m.initialize(model, [x], train_mode=False)
    return model.to(memory_format=torch.channels_last).train()


def training_step(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, torch.Tensor]:
    """The loss and every gradient, flattened into one vector (dropout drawn from one seed)."""
    torch.manual_seed(1)
    loss = F.cross_entropy(model(x), y)
    loss.backward()
    return loss.item(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])


# Sites: MobileNetV2 fuses both ReLU6s of every inverted-residual block (and the stem's); the
# timm networks fuse the batch norm whose activation feeds the depthwise conv alone (the
# squeeze-excite multiply and MixNet's channel split give the others more than one consumer);
# torchvision's ResNet18 calls one ReLU module twice per block, so it has none.
SITES = {"mobilenet_v2": 34, "efficientnet_b0": 18, "mixnet_s": 2, "resnet18": 0}


@pytest.mark.parametrize("name", sorted(SITES))
def test_fusing_a_network_keeps_its_state_loss_and_evaluation(name, monkeypatch):
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    model = quantized(name, "lsqplus", x)
    fused = copy.deepcopy(model)
    sites = fuse_activation_quantizers(fused)
    assert len(sites) == SITES[name]
    assert all(isinstance(fused.get_submodule(s), FusedBatchNormAct2d) for s in sites)
    assert list(fused.state_dict()) == list(model.state_dict())
    loss, grads = training_step(model, x, y)
    fused_loss, fused_grads = training_step(fused, x, y)
    assert fused_loss == pytest.approx(loss, rel=1e-6)
    # float32 sums in another order: the whole gradient agrees to 1e-3 of its norm
    assert (fused_grads - grads).norm() <= 1e-3 * grads.norm()
    for key, value in model.state_dict().items():
        if torch.is_tensor(value):
            torch.testing.assert_close(fused.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key)
    model.eval()
    fused.eval()
    with torch.no_grad():
        expected = model(x)
        assert torch.equal(fused(x), expected)  # evaluation computes what the unfused modules do: bit for bit
        in_place = native.learned_step_fake_quant_
        calls = []
        monkeypatch.setattr(native, "learned_step_fake_quant_", lambda *args: calls.append(args) or in_place(*args))
        native.use_native_kernels(True)  # the sites quantize in place, the rest as before
        try:
            assert torch.equal(fused(x), expected)
            assert len(calls) == SITES[name]
            assert torch.equal(model(x), expected)
        finally:
            native.use_native_kernels(False)


def test_a_quantizer_it_cannot_fuse_runs_unfused_bit_for_bit():
    """APoT's quantizer is not LSQ: the fused module runs batch norm, activation and quantizer in
    turn, so loss and gradients are exactly those of the network without fusion."""
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    model = quantized("mobilenet_v2", "apot", x)
    fused = copy.deepcopy(model)
    assert fuse_activation_quantizers(fused)
    loss, grads = training_step(model, x, y)
    fused_loss, fused_grads = training_step(fused, x, y)
    assert fused_loss == loss
    assert torch.equal(fused_grads, grads)


def test_the_fused_function_runs_in_a_training_step_only(monkeypatch):
    x = torch.randn(16, 1, 28, 28).contiguous(memory_format=torch.channels_last)
    model = quantized("mobilenet_v2", "lsq", x)
    fuse_activation_quantizers(model)
    calls = []
    apply = BatchNormActQuant.apply
    monkeypatch.setattr(BatchNormActQuant, "apply", lambda *a: calls.append(1) or apply(*a))
    model(x).sum().backward()
    assert len(calls) == 34
    calls.clear()
    with torch.no_grad():
        model(x)
    assert not calls


class Block(nn.Module):
    """conv → bn → relu → conv, with the ReLU module either used once more (after the sum, as
    torchvision's BasicBlock does) or not, and the batch norm's output read twice or once."""

    def __init__(self, reuse_relu: bool, second_reader: bool) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.reuse_relu, self.second_reader = reuse_relu, second_reader

    def forward(self, x):
        y = self.bn(self.conv1(x))
        out = self.conv2(self.relu(y))
        if self.second_reader:
            out = out + y
        return self.relu(out) if self.reuse_relu else out


@pytest.mark.parametrize("reuse_relu, second_reader, fused", [(False, False, True), (True, False, False),
                                                               (False, True, False)])
def test_only_a_batch_norm_and_activation_read_by_the_conv_alone_are_fused(reuse_relu, second_reader, fused):
    model = Block(reuse_relu, second_reader)
    m = create_method({"name": "lsq"})
    plan = plan_precision(model, 4, 4, "conv1", "conv2", EdgeLayerPolicy(), EdgeLayerPolicy())
    model = prepare(model, m.adjust_plan(model, plan), m)
    assert fuse_activation_quantizers(model) == (["bn"] if fused else [])
    assert isinstance(model.relu, nn.Identity) == fused
    assert isinstance(model.conv2, QuantConv2d) and model.conv2.input_fused == fused


def test_a_fused_run_records_the_flag_and_its_checkpoint_evaluates_to_the_record_unfused(make_config):
    """``runtime.fuse_batch_norm`` is how the run trains, not what it is (same run id); its
    checkpoint has the unfused network's keys and ``qbench-eval`` rebuilds it without fusion
    to the recorded top-1."""
    from qbench.evaluate import evaluate_checkpoint
    from qbench.identity import run_id
    from qbench.run import run

    cfg = make_config("model=mobilenet_v2", "method=lsqplus", "bits=3", "runtime.fuse_batch_norm=true")
    assert run_id(cfg) == run_id(make_config("model=mobilenet_v2", "method=lsqplus", "bits=3"))
    record = run(cfg)
    assert record["status"] == "ok" and record["config"]["runtime"]["fuse_batch_norm"] is True
    metrics, _ = evaluate_checkpoint(Path(cfg["paths"]["runs_dir"]) / "runs" / record["run_id"] / "checkpoint.pt", {})
    assert metrics["top1"] == record["metrics"]["top1"]
