"""The networks qbench quantizes, described as data, and the one way to build them.

Small inputs (Fashion-MNIST 28 px, CIFAR-10 32 px) keep each network's ImageNet stem and only
change the stem's input channels and the classifier's width: the stride-2 stems shrink 28 px to
a 1×1 feature map before global pooling, which costs accuracy on such data but keeps the
architecture (and its first/last layers) exactly the one the papers quantize, and keeps a CPU
epoch near a minute. A stride-1 stem would cost ~2.6× per step.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn


@dataclass(frozen=True)
class ModelSpec:
    name: str
    source: str  # "torchvision" or "timm"
    source_name: str
    first_layer: str
    last_layer: str


MODELS: dict[str, ModelSpec] = {}


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in MODELS:
        raise ValueError(f"model {spec.name!r} is registered twice")
    MODELS[spec.name] = spec
    return spec


register_model(ModelSpec("resnet18", "torchvision", "resnet18", "conv1", "fc"))
register_model(ModelSpec("mobilenet_v2", "torchvision", "mobilenet_v2", "features.0.0", "classifier.1"))
register_model(ModelSpec("efficientnet_b0", "timm", "efficientnet_b0", "conv_stem", "classifier"))
register_model(ModelSpec("mixnet_s", "timm", "mixnet_s", "conv_stem", "classifier"))


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

    ``pretrained`` loads the library's ImageNet weights from its local cache (torch hub / Hugging
    Face cache); it requires 1000 classes and 3 channels.
    """
    spec = model_spec(name)
    if pretrained and (num_classes != 1000 or in_chans != 3):
        raise ValueError("pretrained ImageNet weights need num_classes=1000 and in_chans=3")
    if spec.source == "timm":
        import timm

        return timm.create_model(spec.source_name, pretrained=pretrained,
                                 num_classes=num_classes, in_chans=in_chans)
    import torchvision

    model = torchvision.models.get_model(spec.source_name, weights="DEFAULT" if pretrained else None)
    if in_chans != 3:
        _replace_stem_channels(model, spec.first_layer, in_chans)
    if num_classes != 1000:
        _replace_classifier(model, spec.last_layer, num_classes)
    return model


def read_state_dict(path: str | Path) -> dict:
    """The state dict saved with ``torch.save`` at ``path`` (optionally under a ``model`` key);
    a ``ValueError`` names the file when it is missing or not a state dict."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"model.weights: file not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for a damaged file
        raise ValueError(f"model.weights: {path} is not a readable PyTorch state dict ({type(exc).__name__})") from None
    if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
        state = state["model"]
    if not isinstance(state, dict):
        raise ValueError(f"model.weights: {path} holds a {type(state).__name__}, not a state dict")
    return state


def load_weights(model: nn.Module, path: str | Path) -> None:
    """Load the state dict at ``path`` (:func:`read_state_dict`) into ``model``, strictly."""
    state = read_state_dict(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[1].strip() if len(str(exc).splitlines()) > 1 else str(exc)
        raise ValueError(f"model.weights: {path} does not match the model: {first}") from None
