"""The FP baseline of a (dataset, model, FP recipe, seed): built once, cached, shared.

Small datasets: trained from scratch with ``recipe.fp`` and cached under
``<runs_dir>/baselines/<model>-<dataset>-<key>/`` (weights, accuracy, SHA-256 of the weights).
A file lock makes parallel sweep jobs wait for one training instead of starting several; an
interrupted training resumes from its epoch checkpoint. ImageNet: the library's pretrained
weights, or ``model.weights=PATH``; their accuracy is measured once and cached the same way.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from qbench.checkpoint import save_atomic
from qbench.data import Data
from qbench.engine import TrainSettings, evaluate, train
from qbench.identity import baseline_config, config_hash
from qbench.models import create_model, load_weights, pretrained_name
from qbench.provenance import cpu_kernels
from qbench.validate import ConfigError


@dataclass
class Baseline:
    model: nn.Module
    metrics: dict[str, float]
    key: str
    weights_sha256: str

    def fresh_copy(self) -> nn.Module:
        return copy.deepcopy(self.model)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _build(cfg: dict, data: Data) -> nn.Module:
    weights = cfg["model"]["weights"]
    pretrained = cfg["dataset"]["pretrained_fp"] and not weights
    model = create_model(cfg["model"]["name"], data.num_classes, data.in_chans, pretrained=pretrained)
    if weights:
        try:
            load_weights(model, weights)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    return model


def fp_source(cfg: dict) -> str:
    """Where the FP weights come from, as the record names them: ``trained`` (``recipe.fp`` from
    scratch), ``file:PATH`` (``model.weights``) or the library's pretrained weights by name
    (e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1``)."""
    if cfg["model"]["weights"]:
        return f"file:{cfg['model']['weights']}"
    if cfg["dataset"]["pretrained_fp"]:
        return pretrained_name(cfg["model"]["name"])
    return "trained"


def fp_recipe(cfg: dict) -> dict:
    """``recipe.fp`` with the model's own ``fp_lr`` where its config sets one."""
    recipe = {**cfg["recipe"]["fp"]}
    if cfg["model"].get("fp_lr") is not None:
        recipe["lr"] = cfg["model"]["fp_lr"]
    return recipe


def get_baseline(cfg: dict, data: Data, settings: TrainSettings, writer_factory=None) -> Baseline:
    identity = baseline_config(cfg, settings.device.type)
    key = config_hash(identity)
    directory = Path(cfg["paths"]["runs_dir"]) / "baselines" / f"{cfg['model']['name']}-{cfg['dataset']['name']}-{key}"
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, info_path = directory / "model.pt", directory / "baseline.json"
    with FileLock(str(directory / ".lock")):
        if not info_path.exists():
            model = _build(cfg, data).to(settings.device)
            if settings.channels_last:
                model = model.to(memory_format=torch.channels_last)
            trains = not cfg["dataset"]["pretrained_fp"] and not cfg["model"]["weights"]
            if trains:
                recipe = fp_recipe(cfg)
                writer = writer_factory(directory / "tb") if writer_factory else None
                train(model, data.train, recipe, directory, settings, cfg["baseline_seed"], writer, tag="fp")
                if writer is not None:
                    writer.close()
            metrics = evaluate(model, data.val, settings.device, settings.channels_last,
                               settings.progress, desc="eval fp")
            save_atomic(model.state_dict(), weights_path)
            info = {"key": key, "config": identity, "metrics": metrics, "torch_threads": torch.get_num_threads(),
                    "cpu_kernels": cpu_kernels(), "weights_sha256": file_sha256(weights_path)}
            tmp = info_path.with_name(info_path.name + ".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, info_path)
            (directory / "checkpoint.pt").unlink(missing_ok=True)
        info = json.loads(info_path.read_text())
    model = create_model(cfg["model"]["name"], data.num_classes, data.in_chans)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
    return Baseline(model, info["metrics"], key, info["weights_sha256"])
