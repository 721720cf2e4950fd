"""Self-describing checkpoints: what travels with the weights, and the model rebuilt from it.

A fine-tuning checkpoint (``<runs_dir>/runs/<run id>/checkpoint.pt``) holds, beside the
model, optimizer and random-number state, a ``meta`` dict of plain data: the resolved config
(method options as the method resolved them), the precision plan of every quantized layer
(weight bits, input bits, signed input), the library versions and the git state of the code
that wrote it (a resume under other code is reported in the record). That suffices to rebuild the
quantized network without the run's config files or its FP baseline: build the float model by
name, apply the method's ``prepare`` with the plan, load the state strictly. Quantizer state
that is not a parameter (``initialized``, a signedness chosen at calibration) is in the state
dict as a buffer or extra state.
"""
from __future__ import annotations

from pathlib import Path

from torch import nn

from qbench.engine import CheckpointError, load_checkpoint, mismatch_reason
from qbench.methods import create_method
from qbench.models import create_model
from qbench.quant.convert import LayerPrecision
from qbench.provenance import git_state, versions

FORMAT = 1


def checkpoint_meta(cfg: dict, rid: str, plan: dict[str, LayerPrecision]) -> dict:
    """The ``meta`` of a run's checkpoint (plain data, loadable with ``weights_only=True``)."""
    return {
        "format": FORMAT,
        "run_id": rid,
        "config": cfg,
        "method": cfg["method"],
        "plan": {name: [p.weight_bits, p.input_bits, p.input_signed] for name, p in plan.items()},
        "versions": versions(),
        "git": git_state(),
    }


def checkpoint_git(path: Path) -> dict | None:
    """The git state stored in the checkpoint at ``path`` (None for a file without one)."""
    meta = load_checkpoint(path).get("meta") or {}
    return meta.get("git")


def rebuild(path: Path) -> tuple[nn.Module, dict]:
    """The quantized model stored at ``path`` (on the CPU, in eval mode) and its ``meta``.
    Raises :class:`CheckpointError` when the file cannot be read, carries no description or
    does not match the model its description builds."""
    state = load_checkpoint(path)
    meta = state.get("meta") or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(path, "carries no description of its run (written by an older qbench)")
    cfg = meta["config"]
    model = create_model(cfg["model"]["name"], cfg["dataset"]["num_classes"], cfg["dataset"]["in_chans"])
    method = create_method(meta["method"])
    if method.quantizes:
        plan = {name: LayerPrecision(*p) for name, p in meta["plan"].items()}
        model = method.prepare(model, plan)
    try:
        model.load_state_dict(state["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(path, f"does not match the model it describes ({mismatch_reason(exc)})") from None
    return model.eval(), meta
