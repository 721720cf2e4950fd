"""The networks qbench quantizes, described as data, and the one way to build them.

Small inputs (Fashion-MNIST 28 px, CIFAR-10 32 px) keep each network's ImageNet stem and only
change the stem's input channels and the classifier's width: the stride-2 stems shrink 28 px to
a 1×1 feature map before global pooling, which costs accuracy on such data but keeps the
architecture (and its first/last layers) exactly the one the papers quantize, and keeps a CPU
epoch near a minute. A stride-1 stem would cost ~2.6× per step.
"""
from __future__ import annotations

import argparse
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    """A network: its library (``torchvision`` or ``timm``) and name there, its first and last
    conv/linear layers, and the library's ImageNet weights the papers started from (a torchvision
    weights enum member, or a timm pretrained tag)."""

    name: str
    source: str  # "torchvision" or "timm"
    source_name: str
    first_layer: str
    last_layer: str
    pretrained: str


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODELS[spec.name] = spec
    return spec


# Pretrained weights as the papers used them: torchvision's original ImageNet weights (IMAGENET1K_V1:
# ResNet18 69.76%, MobileNetV2 71.88%; torchvision's DEFAULT for MobileNetV2 is the later V2 recipe,
# 72.15%) and timm's EfficientNet-B0 / MixNet-S (MixNet-S exists only in timm).
register_model(ModelSpec("resnet18", "torchvision", "resnet18", "conv1", "fc", "IMAGENET1K_V1"))
register_model(ModelSpec("mobilenet_v2", "torchvision", "mobilenet_v2", "features.0.0", "classifier.1",
                         "IMAGENET1K_V1"))
register_model(ModelSpec("efficientnet_b0", "timm", "efficientnet_b0", "conv_stem", "classifier", "ra_in1k"))
register_model(ModelSpec("mixnet_s", "timm", "mixnet_s", "conv_stem", "classifier", "ft_in1k"))


def model_spec(name: str) -> ModelSpec:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; allowed: {', '.join(sorted(MODELS))}")
    return MODELS[name]


def _replace_stem_channels(model: nn.Module, layer_name: str, in_chans: int) -> None:
    parent_name, _, child = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old: nn.Conv2d = getattr(parent, child)
    setattr(parent, child, nn.Conv2d(in_chans, old.out_channels, old.kernel_size, old.stride,
                                     old.padding, old.dilation, old.groups, old.bias is not None))


def _replace_classifier(model: nn.Module, layer_name: str, num_classes: int) -> None:
    parent_name, _, child = layer_name.rpartition(".")
    parent = model.get_submodule(parent_name)
    old: nn.Linear = getattr(parent, child)
    setattr(parent, child, nn.Linear(old.in_features, num_classes, old.bias is not None))


def create_model(name: str, num_classes: int, in_chans: int, pretrained: bool = False) -> nn.Module:
    """Build ``name`` for ``num_classes`` outputs and ``in_chans`` input channels.

    ``pretrained`` loads the library's ImageNet weights named by :func:`pretrained_name` from its
    local cache (torch hub / Hugging Face cache); it requires 1000 classes and 3 channels.
    """
    spec = model_spec(name)
    if pretrained and (num_classes != 1000 or in_chans != 3):
        raise ValueError("pretrained ImageNet weights need num_classes=1000 and in_chans=3")
    if spec.source == "timm":
        import timm

        source = f"{spec.source_name}.{spec.pretrained}" if pretrained else spec.source_name
        return timm.create_model(source, pretrained=pretrained, num_classes=num_classes, in_chans=in_chans)
    import torchvision

    model = torchvision.models.get_model(spec.source_name, weights=spec.pretrained if pretrained else None)
    if in_chans != 3:
        _replace_stem_channels(model, spec.first_layer, in_chans)
    if num_classes != 1000:
        _replace_classifier(model, spec.last_layer, num_classes)
    return model


def pretrained_name(name: str) -> str:
    """The library's name of the pretrained weights ``create_model(name, pretrained=True)`` loads,
    e.g. ``torchvision:ResNet18_Weights.IMAGENET1K_V1`` or ``timm:efficientnet_b0.ra_in1k``."""
    spec = model_spec(name)
    if spec.source == "timm":
        return f"timm:{spec.source_name}.{spec.pretrained}"
    import torchvision

    enum = torchvision.models.get_model_weights(spec.source_name)
    return f"torchvision:{enum.__name__}.{enum[spec.pretrained].name}"


# Where checkpoint files keep the network's weights: timm's train.py writes ``state_dict`` (and
# ``state_dict_ema``), torchvision's reference scripts and qbench's own checkpoints ``model``; both
# scripts also save their command line as an ``argparse.Namespace``, which loading admits.
CHECKPOINT_KEYS = ("state_dict", "model", "model_state_dict")
DDP_PREFIX = "module."


def read_state_dict(path: str | Path) -> dict:
    """The state dict at ``path``: a plain one saved with ``torch.save``, or the weights in a
    timm / torchvision / qbench checkpoint file (under one of :data:`CHECKPOINT_KEYS`), with a
    ``module.`` prefix of DistributedDataParallel removed. A ``ValueError`` names the file when it
    is missing or holds no state dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.weights: file not found: {path}")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):  # the training scripts' saved args
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"model.weights: {path} is not a readable PyTorch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict):
        state = next((state[k] for k in CHECKPOINT_KEYS if isinstance(state.get(k), dict)), state)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        kind = type(state).__name__ if not isinstance(state, dict) else "dict of other things than tensors"
        raise ValueError(f"model.weights: {path} holds a {kind}, not a state dict "
                         f"(or a checkpoint with one under {', '.join(CHECKPOINT_KEYS)})")
    if state and all(k.startswith(DDP_PREFIX) for k in state):
        state = {k[len(DDP_PREFIX):]: v for k, v in state.items()}
    return state


def mismatch(model: nn.Module, state: dict) -> str | None:
    """What keeps ``state`` from loading strictly into ``model``, in a few words (``None``: it fits)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {list(state[k].shape)} in the file, {list(v.shape)} in the model"
              for k, v in own.items() if k in state and state[k].shape != v.shape]
    parts = ([f"{len(missing)} missing keys (first {missing[0]})"] if missing else []) + (
        [f"{len(unexpected)} unexpected keys (first {unexpected[0]})"] if unexpected else []) + (
        [f"{len(shapes)} shapes differ (first {shapes[0]})"] if shapes else [])
    return "; ".join(parts) or None


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the weights at ``path`` (:func:`read_state_dict`) into ``model``, strictly; a
    ``ValueError`` says in one line what does not fit."""
    state = read_state_dict(path)
    problem = mismatch(model, state)
    if problem:
        raise ValueError(f"model.weights: {path} does not match the model: {problem}")
    model.load_state_dict(state, strict=True)
