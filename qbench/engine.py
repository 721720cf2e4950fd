"""Training, evaluation and checkpoints: a flat loop, a pure learning-rate function."""
from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from qbench.checkpoint import restore_training, save_training
from qbench.data import BatchSource
from qbench.distributed import World, barrier, mean_over_ranks, rank_slice
from qbench.quant.base import Quantizer
from qbench.quant.calibrate import quantizer_values
from qbench.tensorboard import log_values


class Diverged(RuntimeError):
    """The training loss became NaN or infinite."""


SCHEDULES = ("cosine", "onecycle", "step", "exponential", "constant")
OPTIMIZERS = ("sgd", "adamw")
# recipe.qat.mixed_precision (absent or null: float32 throughout, the default). bf16 runs convs and
# matmuls under torch.autocast in bfloat16: faster on GPUs with bf16 units, but the fake quantizers
# then see bfloat16 inputs (8 significant bits), so values near a grid level's rounding boundary can
# round the other way and the numbers are no longer the float32 fake-quant numerics the papers'
# simulations use; the weights, optimizer and quantizer parameters stay float32.
MIXED_PRECISION = {"bf16": torch.bfloat16}


def lr_multiplier(step: int, steps_per_epoch: int, recipe: dict) -> float:
    """Learning-rate multiplier of the base lr at global ``step`` (pure function of the recipe).

    Schedules: ``cosine`` (to 0 over all steps), ``onecycle`` (linear rise from 1/25 over
    ``warmup_fraction`` of the steps, then cosine to 0), ``step`` (× ``gamma`` at each epoch of
    ``milestones``), ``exponential`` (× ``gamma`` per epoch), ``constant``; an optional linear
    warm-up of ``warmup_epochs`` multiplies any of them.
    """
    total = recipe["epochs"] * steps_per_epoch
    t = step / max(total, 1)
    epoch = step // steps_per_epoch
    kind = recipe["schedule"]
    if kind == "cosine":
        m = 0.5 * (1 + math.cos(math.pi * t))
    elif kind == "onecycle":
        w = recipe.get("warmup_fraction", 0.25)
        m = 0.04 + 0.96 * t / w if t < w else 0.5 * (1 + math.cos(math.pi * (t - w) / (1 - w)))
    elif kind == "step":
        m = recipe.get("gamma", 0.1) ** sum(epoch >= e for e in recipe["milestones"])
    elif kind == "exponential":
        m = recipe["gamma"] ** epoch
    elif kind == "constant":
        m = 1.0
    else:
        raise ValueError(f"unknown schedule {kind!r}; allowed: {', '.join(SCHEDULES)}")
    warmup_steps = recipe.get("warmup_epochs", 0) * steps_per_epoch
    if warmup_steps and step < warmup_steps:
        m *= (step + 1) / warmup_steps
    return m


def set_train_mode(model: nn.Module, freeze_bn: bool) -> None:
    """Training mode, except batch norm layers when ``freeze_bn``: they then normalise with the
    running statistics they start with (their affine parameters still train)."""
    model.train()
    if freeze_bn:
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()


def quantizer_parameter_ids(model: nn.Module) -> set[int]:
    return {id(p) for m in model.modules() if isinstance(m, Quantizer) for p in m.parameters(recurse=False)}


def weight_decay_for_bits(recipe: dict, wbits: int) -> float:
    """The network's weight decay for ``wbits``-bit weights: the recipe's
    ``weight_decay_by_wbits`` entry for those bits, else its ``weight_decay``."""
    by_bits = {int(k): v for k, v in (recipe.get("weight_decay_by_wbits") or {}).items()}
    return by_bits.get(wbits, recipe["weight_decay"])


def build_optimizer(model: nn.Module, recipe: dict) -> torch.optim.Optimizer:
    """SGD or AdamW over two parameter groups: the network's parameters (``weight_decay``) and
    the quantizers' parameters — steps, offsets, clipping values — with their own
    ``quantizer_lr_scale`` and ``quantizer_weight_decay``."""
    qids = quantizer_parameter_ids(model)
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if id(p) not in qids], "weight_decay": recipe["weight_decay"],
         "lr_scale": 1.0, "name": "network"},
        {"params": [p for p in params if id(p) in qids], "name": "quantizers",
         "weight_decay": recipe.get("quantizer_weight_decay", 0.0),
         "lr_scale": recipe.get("quantizer_lr_scale", 1.0)},
    ]
    groups = [g for g in groups if g["params"]]
    if recipe["optimizer"] == "sgd":
        return torch.optim.SGD(groups, lr=recipe["lr"], momentum=recipe.get("momentum", 0.9),
                               nesterov=recipe.get("nesterov", False))
    if recipe["optimizer"] == "adamw":
        return torch.optim.AdamW(groups, lr=recipe["lr"])
    raise ValueError(f"unknown optimizer {recipe['optimizer']!r}; allowed: {', '.join(OPTIMIZERS)}")


def _to_device(x: torch.Tensor, device: torch.device, channels_last: bool) -> torch.Tensor:
    x = x.to(device, non_blocking=True)
    return x.contiguous(memory_format=torch.channels_last) if channels_last and x.dim() == 4 else x


@torch.no_grad()
def evaluate(model: nn.Module, batches: BatchSource, device: torch.device,
             channels_last: bool = False, progress: bool = False, desc: str = "eval") -> dict[str, float]:
    """Top-1 and top-5 accuracy (%) and mean cross-entropy over ``batches``."""
    model.eval()
    correct1 = torch.zeros((), device=device)
    correct5 = torch.zeros((), device=device)
    loss_sum = torch.zeros((), device=device)
    n = 0
    for x, y in tqdm(batches.batches(0), total=len(batches), desc=desc, disable=not progress, leave=False):
        x, y = _to_device(x, device, channels_last), y.to(device)
        logits = model(x)
        loss_sum += F.cross_entropy(logits, y, reduction="sum")
        top = logits.topk(min(5, logits.shape[1]), dim=1).indices
        hits = top == y.unsqueeze(1)
        correct1 += hits[:, 0].sum()
        correct5 += hits.any(dim=1).sum()
        n += len(y)
    return {"top1": 100.0 * correct1.item() / n, "top5": 100.0 * correct5.item() / n,
            "loss": loss_sum.item() / n}


@dataclass
class TrainSettings:
    device: torch.device
    channels_last: bool = False
    progress: bool = True
    log_every: int = 50


def train(model: nn.Module, train_batches: BatchSource, recipe: dict, run_dir: Path,
          settings: TrainSettings, seed: int, writer: Any = None, tag: str = "train",
          meta: dict | None = None, world: World = World(),
          on_epoch_end: Callable[[int, int], None] | None = None) -> int:
    """Train ``model`` for ``recipe['epochs']`` epochs (each cut to ``max_steps_per_epoch``
    steps where the recipe sets it; batch norm statistics frozen where it sets ``freeze_bn``;
    the global gradient norm clipped to ``grad_clip_norm`` where it sets one),
    checkpointing to ``run_dir/checkpoint.pt`` after each epoch and resuming from it when
    present. ``meta`` (plain data: config, method options, precision plan, versions) is stored
    beside the weights, so the checkpoint describes itself. ``writer`` gets, every
    ``log_every`` steps, the mean loss, each parameter group's learning rate and every
    quantizer's values (:mod:`qbench.tensorboard`); ``on_epoch_end(epochs done, global step)``
    runs after each epoch's checkpoint (validation curves). Returns the epoch it resumed at
    (0 for a fresh start). Raises :class:`Diverged` on a NaN/inf loss and
    :class:`CheckpointError` on a checkpoint it cannot resume from.

    Under torchrun (``world``): DDP over the ranks, each taking its slice of every global batch;
    only rank 0 shows progress and writes the checkpoint (:mod:`qbench.distributed`). Where the
    recipe sets ``sync_batchnorm`` (CUDA), the model's batch norm layers become ``SyncBatchNorm``
    in place, so their batch statistics span the whole global batch, as one GPU would see it.
    ``mixed_precision`` (:data:`MIXED_PRECISION`) runs the forward pass under autocast."""
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt_path = run_dir / "checkpoint.pt"
    if recipe.get("sync_batchnorm") and world.parallel:
        if settings.device.type != "cuda":
            raise ValueError("recipe.qat.sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU kernel)")
        nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same parameters and buffers, replaced in place
    autocast_dtype = MIXED_PRECISION.get(recipe.get("mixed_precision"))
    optimizer = build_optimizer(model, recipe)
    steps_per_epoch = len(train_batches)
    if recipe.get("max_steps_per_epoch"):
        steps_per_epoch = min(steps_per_epoch, recipe["max_steps_per_epoch"])
    clip_norm = recipe.get("grad_clip_norm")
    start_epoch = 0
    if ckpt_path.exists():
        start_epoch = restore_training(ckpt_path, model, optimizer)
    else:
        torch.manual_seed(seed)
        random.seed(seed)
    net = model
    if world.parallel:
        gpu = [settings.device.index] if settings.device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=gpu)
    for epoch in range(start_epoch, recipe["epochs"]):
        set_train_mode(model, recipe.get("freeze_bn", False))
        bar = tqdm(total=steps_per_epoch, desc=f"{tag} epoch {epoch + 1}/{recipe['epochs']}",
                   disable=not (settings.progress and world.is_main), leave=False)
        loss_sum = torch.zeros((), device=settings.device)
        for i, (x, y) in enumerate(train_batches.batches(epoch)):
            if i >= steps_per_epoch:
                break
            step = epoch * steps_per_epoch + i
            m = lr_multiplier(step, steps_per_epoch, recipe)
            for g in optimizer.param_groups:
                g["lr"] = recipe["lr"] * m * g["lr_scale"]
            x, y = rank_slice(x, y, world)
            x, y = _to_device(x, settings.device, settings.channels_last), y.to(settings.device)
            with torch.autocast(settings.device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
                loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), clip_norm)
            optimizer.step()
            loss_sum += loss.detach()
            bar.update()
            if (i + 1) % settings.log_every == 0 or i + 1 == steps_per_epoch:
                mean_loss = mean_over_ranks(loss_sum, world).item() / (i + 1)
                if not math.isfinite(mean_loss):
                    bar.close()
                    raise Diverged(f"loss became {mean_loss} in epoch {epoch + 1}")
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{recipe['lr'] * m:.2e}")
                if writer is not None:  # at the number of optimizer steps taken
                    writer.add_scalar(f"{tag}/loss", mean_loss, step + 1)
                    for g in optimizer.param_groups:
                        writer.add_scalar(f"{tag}/lr/{g['name']}", g["lr"], step + 1)
                    log_values(writer, "quantizer", quantizer_values(model), step + 1)
        bar.close()
        if world.is_main:
            save_training(ckpt_path, model, optimizer, epoch + 1, meta or {})
        if on_epoch_end is not None:
            on_epoch_end(epoch + 1, (epoch + 1) * steps_per_epoch)
        barrier(world)
    return start_epoch
