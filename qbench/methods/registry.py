"""The method registry: a dict filled by a decorator, one way in (``create_method``)."""
from __future__ import annotations

import dataclasses
from typing import Callable, Iterable

import torch
from torch import nn

from qbench.quant.convert import LayerPrecision

METHODS: dict[str, type["Method"]] = {}


class Method:
    """A quantization method: ``prepare`` (swap layers) → ``calibrate`` (initialise quantizers
    from data) → optional quantization-aware training by the shared trainer (``trains``).

    Subclasses set ``Config`` to a dataclass whose fields mirror ``conf/method/<name>.yaml``.
    """

    name: str = ""
    trains: bool = False  # fine-tuned by the shared trainer after calibration
    quantizes: bool = True  # False only for the float reference
    Config: type = object

    def __init__(self, config: object) -> None:
        self.config = config

    def options(self) -> dict:
        """Every option as the method uses it, presets resolved: what the record stores."""
        return {"name": self.name, **dataclasses.asdict(self.config)}

    def prepare(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> nn.Module:
        return model

    def calibrate(self, model: nn.Module, batches: Iterable[torch.Tensor], train_mode: bool = False) -> dict:
        """Initialise the quantizers from ``batches``; ``train_mode``: observe the network as
        its first training step sees it (batch norm on batch statistics). Returns the initial
        values per quantizer, for logging."""
        return {}

    def report(self, model: nn.Module) -> dict:
        """Extra fields for the run's record, computed from the final model after calibration
        and training (e.g. per-layer statistics, chosen bit-widths). JSON-serialisable."""
        return {}


def register_method(name: str) -> Callable[[type[Method]], type[Method]]:
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name = name
        METHODS[name] = cls
        return cls
    return add


def create_method(options: dict) -> Method:
    """Build the method named ``options['name']`` from the rest of ``options``; an unknown name
    or field is a ``ValueError`` that lists what is allowed."""
    options = dict(options)
    name = options.pop("name", None)
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    fields = {f.name for f in dataclasses.fields(cls.Config)}
    unknown = sorted(set(options) - fields)
    if unknown:
        raise ValueError(f"method.{unknown[0]} is not an option of method {name}; "
                         f"allowed: {', '.join(sorted(fields))}")
    return cls(cls.Config(**options))
