"""The FP baseline of a (dataset, model, FP recipe, seed): built once, cached, shared.

Small datasets: trained from scratch with ``recipe.fp`` and cached under
``<runs_dir>/baselines/<model>-<dataset>-<key>/`` (weights, accuracy, SHA-256 of the weights).
A file lock makes parallel sweep jobs wait for one training instead of starting several; an
interrupted training resumes from its epoch checkpoint. ImageNet: the library's pretrained
weights, or ``model.weights=PATH``; their accuracy is measured once and cached the same way.

Published baselines: a baseline trained once and put under ``paths.published_baselines``
(``results/baselines/<model>-<dataset>-<key>.pt`` with its ``baseline.json`` as ``.json``, by
``scripts/publish_baseline.py``; the ``.json`` is committed, the weights are not) is used instead
of training the same key where its ``.pt`` is present. A CPU's kernels decide
the rounding, and a short recipe amplifies it into points of top-1 (MixNet-S's key 023cc96d1d47
gave 83.75 / 86.31 / 90.00 % on three machines), so a table's cells share one baseline only if
they share the weights, not just the recipe. Its accuracy is measured again here; the record
says ``fp.source: published:<path>``; ``paths.published_baselines=null`` trains instead. Only a
cache miss looks for it: a baseline already cached under the runs folder stays in use (the
records' ``weights_sha256`` tells them apart; delete the cached one to take the published one).
"""
from __future__ import annotations

import copy
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from qbench.checkpoint import save_atomic
from qbench.data import Data
from qbench.engine import TrainSettings, evaluate, train
from qbench.identity import baseline_config, config_hash, file_sha256
from qbench.models import create_model, load_weights, pretrained_name
from qbench.provenance import CHECKOUT, cpu_kernels, git_state
from qbench.validate import ConfigError


@dataclass
class Baseline:
    model: nn.Module
    metrics: dict[str, float]
    key: str
    weights_sha256: str
    source: str

    def fresh_copy(self) -> nn.Module:
        return copy.deepcopy(self.model)


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
    """Where the config takes its FP weights from: ``trained`` (``recipe.fp`` from scratch),
    ``file:PATH`` (``model.weights``) or the library's pretrained weights by name (e.g.
    ``torchvision:ResNet18_Weights.IMAGENET1K_V1``). A trained baseline found published is
    ``published:PATH`` in the record instead (:func:`published_baseline`)."""
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


def published_folder(cfg: dict) -> Path | None:
    """``paths.published_baselines``, a relative path taken from the qbench checkout (so that it is
    found from any working directory); ``None`` when null."""
    folder = cfg["paths"].get("published_baselines")
    return None if folder is None else CHECKOUT / folder


def published_baseline(cfg: dict, name: str, key: str) -> Path | None:
    """The published weights of the baseline ``name`` (``<model>-<dataset>-<key>``), or ``None``
    where none is published (or ``paths.published_baselines`` is null). A published file that no
    longer hashes to what its ``.json`` says, or whose ``.json`` names another key, is a
    :class:`ConfigError`: training instead would silently give other weights."""
    folder = published_folder(cfg)
    if folder is None or not (folder / f"{name}.pt").is_file():
        return None
    weights = folder / f"{name}.pt"
    info_path = weights.with_suffix(".json")
    if not info_path.is_file():
        raise ConfigError(f"published baseline {weights} has no {info_path.name} beside it; restore it "
                          "(git checkout) or set paths.published_baselines=null to train")
    info = json.loads(info_path.read_text())
    sha = file_sha256(weights)
    if info.get("key") != key or sha != info.get("weights_sha256"):
        raise ConfigError(f"published baseline {weights} (key {info.get('key')}, SHA-256 {sha[:12]}) does not match "
                          f"{info_path.name} (SHA-256 {str(info.get('weights_sha256'))[:12]}) and key {key}; "
                          "restore it (git checkout) or set paths.published_baselines=null to train")
    return weights


def get_baseline(cfg: dict, data: Data, settings: TrainSettings, writer_factory=None) -> Baseline:
    identity = baseline_config(cfg, settings.device.type)
    key = config_hash(identity)
    name = f"{cfg['model']['name']}-{cfg['dataset']['name']}-{key}"
    directory = Path(cfg["paths"]["runs_dir"]) / "baselines" / name
    directory.mkdir(parents=True, exist_ok=True)
    weights_path, info_path = directory / "model.pt", directory / "baseline.json"
    with FileLock(str(directory / ".lock")):
        if not info_path.exists():
            model = _build(cfg, data).to(settings.device)
            if settings.channels_last:
                model = model.to(memory_format=torch.channels_last)
            trains = not cfg["dataset"]["pretrained_fp"] and not cfg["model"]["weights"]
            published = published_baseline(cfg, name, key) if trains else None
            source = fp_source(cfg)
            if published is not None:
                source = f"published:{Path(cfg['paths']['published_baselines']) / published.name}"
                shutil.copyfile(published, weights_path)
                model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
            elif trains:
                recipe = fp_recipe(cfg)
                writer = writer_factory(directory / "tb") if writer_factory else None
                train(model, data.train, recipe, directory, settings, cfg["baseline_seed"], writer, tag="fp")
                if writer is not None:
                    writer.close()
            metrics = evaluate(model, data.val, settings.device, settings.channels_last,
                               settings.progress, desc="eval fp")
            if published is None:
                save_atomic(model.state_dict(), weights_path)
            info = {"key": key, "config": identity, "metrics": metrics, "torch_threads": torch.get_num_threads(),
                    "cpu_kernels": cpu_kernels(), "git": git_state(), "weights_sha256": file_sha256(weights_path),
                    "source": source}
            tmp = info_path.with_name(info_path.name + ".tmp")
            tmp.write_text(json.dumps(info, indent=2))
            os.replace(tmp, info_path)
            (directory / "checkpoint.pt").unlink(missing_ok=True)
        info = json.loads(info_path.read_text())
    model = create_model(cfg["model"]["name"], data.num_classes, data.in_chans)
    model.load_state_dict(torch.load(weights_path, map_location="cpu", weights_only=True), strict=True)
    return Baseline(model, info["metrics"], key, info["weights_sha256"], info.get("source", fp_source(cfg)))
