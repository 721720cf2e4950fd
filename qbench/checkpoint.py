"""Checkpoint files: atomic writes, strict reads, and what travels with the weights.

A fine-tuning checkpoint (``<runs_dir>/runs/<run id>/checkpoint.pt``) holds the model,
optimizer and random-number state of the last finished epoch and a ``meta`` dict of plain data:
the resolved config (method options as the method resolved them), the precision plan of every
quantized layer (:class:`~qbench.quant.convert.LayerPrecision` fields), the library versions and
the git state of the code that wrote it (a resume under other code is reported in the record).
That suffices to rebuild the quantized network without the run's config files or its FP
baseline (:func:`qbench.evaluate.rebuild`). Quantizer state that is not a parameter (whether it
was initialised, a signedness chosen at calibration) is in the state dict as extra state.
Every file is read with ``weights_only=True``.
"""
from __future__ import annotations

import dataclasses
import os
import random
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qbench.provenance import git_state, versions
from qbench.quant.convert import LayerPrecision

FORMAT = 2  # 2: the plan holds each layer's role; format 1 files cannot be rebuilt


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: unreadable, or its state does not match the model.
    ``path`` names the file, so the caller can set it aside and start over."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"checkpoint {path} {reason}")
        self.path = path


def save_atomic(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file, then rename: a killed process never leaves half a file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def mismatch_reason(exc: BaseException) -> str:
    """The line of a ``load_state_dict`` error that names the keys (else its first line)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return next((line for line in lines if "key" in line.lower()), lines[0] if lines else type(exc).__name__)


def load_checkpoint(path: Path) -> dict:
    """The checkpoint at ``path``, read with ``weights_only=True`` (tensors, plain containers
    and numbers only); raises :class:`CheckpointError` when it cannot be read."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise CheckpointError(path, f"is unreadable ({type(exc).__name__})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(path, "holds no model state")
    return state


def save_training(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, epoch: int,
                  meta: dict) -> None:
    """Write the state to resume training after ``epoch`` finished epochs."""
    rng_py = random.getstate()
    save_atomic({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "epoch": epoch,
                 "rng_torch": torch.get_rng_state(), "rng_python": [rng_py[0], list(rng_py[1]), rng_py[2]],
                 "meta": meta}, path)


def load_model_state(path: Path, model: nn.Module) -> None:
    """Load the model state of the checkpoint at ``path`` strictly (another run's final state as
    this run's start); raises :class:`CheckpointError` when it does not fit."""
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"does not match this run ({mismatch_reason(exc)})") from None


def restore_training(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Load model (strictly: a missing or extra key is an error), optimizer and random-number
    state from the training checkpoint at ``path``; returns the epoch to continue from."""
    state = load_checkpoint(path)
    try:
        model.load_state_dict(state["model"], strict=True)
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng_torch"])
        random.setstate((state["rng_python"][0], tuple(state["rng_python"][1]), state["rng_python"][2]))
        return int(state["epoch"])
    except (RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(path, f"does not match this run ({mismatch_reason(exc)})") from None


def checkpoint_meta(cfg: dict, rid: str, plan: dict[str, LayerPrecision]) -> dict:
    """The ``meta`` of a run's checkpoint (plain data, loadable with ``weights_only=True``)."""
    return {
        "format": FORMAT,
        "run_id": rid,
        "config": cfg,
        "plan": {name: dataclasses.asdict(p) for name, p in plan.items()},
        "versions": versions(),
        "git": git_state(),
    }


def checkpoint_git(path: Path) -> dict | None:
    """The git state stored in the checkpoint at ``path`` (None for a file without one)."""
    meta = load_checkpoint(path).get("meta") or {}
    return meta.get("git")


def checkpoint_plan(path: Path, meta: dict) -> dict[str, LayerPrecision]:
    """The precision plan stored in ``meta``; raises :class:`CheckpointError` for a file whose
    meta is missing or of another format."""
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "carries no description of its run in this format "
                                    "(written by another qbench version)")
    return {name: LayerPrecision(**p) for name, p in meta["plan"].items()}
