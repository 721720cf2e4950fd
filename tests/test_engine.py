"""Trainer: schedules, parameter groups, and resume from an epoch checkpoint."""
import math

import pytest
import torch
from torch import nn

from qbench.checkpoint import CheckpointError
from qbench.engine import Diverged, TrainSettings, build_optimizer, lr_multiplier, train
from qbench.quant import LearnedStepQuantizer, Observation


def recipe(**kw):
    base = {"epochs": 2, "optimizer": "sgd", "lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4,
            "schedule": "cosine", "quantizer_lr_scale": 0.5, "quantizer_weight_decay": 0.0}
    return {**base, **kw}


def test_schedules():
    r = recipe(epochs=10)
    assert lr_multiplier(0, 100, r) == 1.0
    assert lr_multiplier(500, 100, r) == pytest.approx(0.5)
    assert lr_multiplier(1000, 100, r) == pytest.approx(0.0, abs=1e-12)
    one = recipe(epochs=10, schedule="onecycle", warmup_fraction=0.2)
    assert lr_multiplier(0, 100, one) == pytest.approx(0.04)
    assert lr_multiplier(200, 100, one) == pytest.approx(1.0)
    step = recipe(epochs=10, schedule="step", milestones=[3, 6], gamma=0.1)
    assert lr_multiplier(299, 100, step) == 1.0 and lr_multiplier(650, 100, step) == pytest.approx(0.01)
    exp = recipe(epochs=10, schedule="exponential", gamma=0.936)
    assert lr_multiplier(350, 100, exp) == pytest.approx(0.936**3)
    warm = recipe(epochs=10, warmup_epochs=1)
    assert lr_multiplier(49, 100, warm) == pytest.approx(0.5 * 0.5 * (1 + math.cos(math.pi * 0.049)))
    with pytest.raises(ValueError, match="unknown schedule"):
        lr_multiplier(0, 1, recipe(schedule="zigzag"))


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)
        self.q = LearnedStepQuantizer(4, signed=True)
        self.q.initialize(Observation.of(torch.randn(10)))

    def forward(self, x):
        return self.fc(self.q(x))


def test_quantizer_parameters_get_their_own_group():
    opt = build_optimizer(Tiny(), recipe(quantizer_weight_decay=0.25))
    net, quant = opt.param_groups
    assert len(net["params"]) == 2 and net["weight_decay"] == 1e-4 and net["lr_scale"] == 1.0
    assert len(quant["params"]) == 1 and quant["weight_decay"] == 0.25 and quant["lr_scale"] == 0.5


class ListBatches:
    """Six fixed batches, rotated per epoch; raises in ``fail_at_epoch`` (a simulated kill)."""

    def __init__(self, fail_at_epoch=None):
        g = torch.Generator().manual_seed(0)
        self.data = [(torch.randn(8, 4, generator=g), torch.randint(0, 3, (8,), generator=g)) for _ in range(6)]
        self.fail_at_epoch = fail_at_epoch

    def __len__(self):
        return len(self.data)

    def batches(self, epoch):
        if epoch == self.fail_at_epoch:
            raise KeyboardInterrupt
        return iter(self.data[epoch % 2:] + self.data[:epoch % 2])


def test_resume_gives_the_same_weights_as_an_uninterrupted_run(tmp_path):
    settings = TrainSettings(torch.device("cpu"), progress=False, log_every=2)
    torch.manual_seed(0)
    start = Tiny().state_dict()
    full = Tiny()
    full.load_state_dict(start)
    assert train(full, ListBatches(), recipe(epochs=3), tmp_path / "full", settings, seed=0) == 0

    interrupted = Tiny()
    interrupted.load_state_dict(start)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, ListBatches(fail_at_epoch=1), recipe(epochs=3), tmp_path / "cut", settings, seed=0)
    assert torch.load(tmp_path / "cut" / "checkpoint.pt", weights_only=True)["epoch"] == 1

    restarted = Tiny()  # a new process: fresh weights, everything comes from the checkpoint
    assert train(restarted, ListBatches(), recipe(epochs=3), tmp_path / "cut", settings, seed=0) == 1
    for key, value in full.state_dict().items():
        torch.testing.assert_close(restarted.state_dict()[key], value, msg=key)


def test_diverged_loss_stops_training(tmp_path):
    model = Tiny()
    with torch.no_grad():
        model.fc.weight.fill_(float("nan"))
    settings = TrainSettings(torch.device("cpu"), progress=False, log_every=1)
    with pytest.raises(Diverged, match="loss became nan"):
        train(model, ListBatches(), recipe(), tmp_path, settings, seed=0)


def test_grad_clip_norm_bounds_each_update(tmp_path):
    """Plain SGD at lr 1 on a loss scaled up 1e4: the first step moves the parameters by the
    gradient itself, so with clipping the change has exactly the clipping norm."""
    class Loud(Tiny):
        def forward(self, x):
            return super().forward(x) * 1e4

    settings = TrainSettings(torch.device("cpu"), progress=False)
    moves = {}
    for clip in (None, 0.5):
        model = Loud()
        torch.manual_seed(0)
        model.load_state_dict(Tiny().state_dict())
        before = torch.cat([p.detach().clone().flatten() for p in model.parameters()])
        r = recipe(epochs=1, lr=1.0, momentum=0.0, weight_decay=0.0, quantizer_lr_scale=1.0,
                   max_steps_per_epoch=1, schedule="constant", grad_clip_norm=clip)
        train(model, ListBatches(), r, tmp_path / str(clip), settings, seed=0)
        moves[clip] = (torch.cat([p.detach().flatten() for p in model.parameters()]) - before).norm().item()
    assert moves[0.5] == pytest.approx(0.5, rel=1e-4)
    assert moves[None] > 100


def test_freeze_bn_keeps_running_statistics(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 3))
    before = model[1].running_mean.clone()
    settings = TrainSettings(torch.device("cpu"), progress=False)
    train(model, ListBatches(), recipe(epochs=1, freeze_bn=True), tmp_path / "frozen", settings, seed=0)
    torch.testing.assert_close(model[1].running_mean, before)
    train(model, ListBatches(), recipe(epochs=1), tmp_path / "free", settings, seed=0)
    assert not torch.allclose(model[1].running_mean, before)


def test_a_checkpoint_that_does_not_match_is_a_checkpoint_error(tmp_path):
    settings = TrainSettings(torch.device("cpu"), progress=False)
    train(Tiny(), ListBatches(), recipe(epochs=1), tmp_path, settings, seed=0, meta={"run_id": "abc"})
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert state["meta"] == {"run_id": "abc"} and state["model"]["q._extra_state"]["initialized"]
    del state["model"]["q.step"]
    torch.save(state, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match=r"does not match this run \(Missing key.*q\.step"):
        train(Tiny(), ListBatches(), recipe(epochs=2), tmp_path, settings, seed=0)
    (tmp_path / "checkpoint.pt").write_bytes(b"torn")
    with pytest.raises(CheckpointError, match="is unreadable"):
        train(Tiny(), ListBatches(), recipe(epochs=2), tmp_path, settings, seed=0)
