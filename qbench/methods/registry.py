"""The method registry: a dict filled by a decorator, one way in (``create_method``).

A method is a ``Config`` dataclass (its options, type-checked by
:func:`qbench.validate.check_options`) and two quantizer factories; the runner owns the phases
(:mod:`qbench.phases`): plan → ``adjust_plan`` → prepare (the factories) → ``initialize`` →
fine-tune by the shared trainer (when registered with ``trains=True``) → ``finalize`` →
evaluate → ``report`` → record. A method overrides only the hooks it needs and keeps no
per-run state: what a hook needs of the run comes in its arguments.

``adjust_recipe`` is how a method states how its official code optimises (weight decay by
bits, its own parameters' learning rate and weight decay) without method code in the trainer:
:func:`qbench.run.qat_recipe` applies it, in that one place, to the recipe's ``qat`` section
before the weight decay is chosen for the run's weight bits. It depends only on the method's
options and the weight bits, so every cell of a table follows one protocol.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from qbench.quant.base import Quantizer
from qbench.quant.calibrate import initialize_quantizers
from qbench.quant.convert import LayerPrecision
from qbench.validate import ActSigned, ConfigError, check_options

METHODS: dict[str, type["Method"]] = {}
CALIB_MAX_SAMPLES = 1 << 20  # values kept per layer input at initialisation, unless the Config sets calib_max_samples


@dataclass(frozen=True)
class RunFacts:
    """What the runner knows of a run that a method's ``report`` may use.

    ``fp_model``: the float baseline the run started from (unchanged); ``plan``: the precision
    of every quantized layer as built (after ``adjust_plan``); ``calibration_images`` and
    ``calibration_batches``: what ``initialize`` was given, ``None`` when the quantizers came
    from a checkpoint instead."""

    fp_model: nn.Module
    plan: dict[str, LayerPrecision]
    calibration_images: int | None
    calibration_batches: int | None


@dataclass
class NoOptions:
    """The options of a method that has none."""


def grid_signedness(act_signed: bool | str) -> bool | None:
    """A quantizer's ``signed`` argument for an ``act_signed`` option: ``auto`` is ``None``
    (decided at initialisation from the observed minimum)."""
    return None if act_signed == "auto" else bool(act_signed)


def input_signedness(layer: LayerPrecision, act_signed: ActSigned) -> bool | None:
    """Signed data (``layer.input_signed``) is always signed; activation outputs follow the
    method's ``act_signed``."""
    return True if layer.input_signed else grid_signedness(act_signed)


class Method:
    """A quantization method: options and the quantizers it puts on each layer (module
    docstring). Subclasses set ``Config`` and implement the two factories."""

    name: str = ""
    trains: bool = False  # set by register_method: fine-tuned by the shared trainer
    quantizes: bool = True  # set by register_method: False only for the float reference
    Config: type = NoOptions

    def __init__(self, config: object) -> None:
        self.config = config

    def options(self) -> dict:
        """Every option as the method uses it, presets resolved: what the record stores."""
        return {"name": self.name, **dataclasses.asdict(self.config)}

    def weight_quantizer(self, layer: LayerPrecision) -> Quantizer:
        """The quantizer of a layer's weights (``layer.weight_bits`` is set)."""
        raise NotImplementedError

    def input_quantizer(self, layer: LayerPrecision) -> Quantizer:
        """The quantizer of a layer's input (``layer.input_bits`` is set)."""
        raise NotImplementedError

    def adjust_plan(self, model: nn.Module, plan: dict[str, LayerPrecision]) -> dict[str, LayerPrecision]:
        """The plan to build from the policy's ``plan`` and the float ``model`` (e.g. mixed
        precision); the default keeps it."""
        return plan

    def adjust_recipe(self, recipe: dict, wbits: int) -> dict:
        """The fine-tuning recipe (the ``qat`` section, ``weight_decay_by_wbits`` not yet
        applied) for ``wbits``-bit weights as this method's official code trains; returns a new
        dict. The default keeps it."""
        return recipe

    def predecessor(self, cfg: dict) -> dict | None:
        """The resolved config of the finished run whose quantized model this run starts from
        (after initialisation, in place of it), or ``None`` to start from the FP baseline (the
        default). The runner loads that run's final checkpoint and records its run id."""
        return None

    def initialize(self, model: nn.Module, batches: list[torch.Tensor], train_mode: bool) -> None:
        """Initialise the quantizers from the calibration ``batches``; ``train_mode``: observe
        the network as its first training step sees it (batch norm on batch statistics). The
        runner logs every quantizer's initial values. Default: every quantizer from its weights
        or the float network's inputs (:func:`~qbench.quant.calibrate.initialize_quantizers`)."""
        max_samples = getattr(self.config, "calib_max_samples", CALIB_MAX_SAMPLES)
        initialize_quantizers(model, batches, max_samples, train_mode)

    def finalize(self, model: nn.Module, batches: list[torch.Tensor]) -> dict:
        """After initialisation and fine-tuning, before evaluation (a PTQ method's rounding);
        returns values to log. The default does nothing."""
        return {}

    def report(self, model: nn.Module, facts: RunFacts) -> dict:
        """Extra fields for the run's record from the final model (JSON-serialisable)."""
        return {}


def register_method(name: str, *, trains: bool, quantizes: bool = True) -> Callable[[type[Method]], type[Method]]:
    """Register a method under ``name``; ``trains`` (required) says whether the shared trainer
    fine-tunes it after initialisation."""
    def add(cls: type[Method]) -> type[Method]:
        if name in METHODS:
            raise ValueError(f"method {name!r} is registered twice")
        cls.name, cls.trains, cls.quantizes = name, trains, quantizes
        METHODS[name] = cls
        return cls
    return add


def create_method(options: dict) -> Method:
    """Build the method named ``options['name']`` from the rest of ``options``; an unknown
    name, an unknown field or a value of the wrong type or range is a :class:`ConfigError`
    that says what is allowed."""
    options = dict(options)
    name = options.pop("name", None)
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; allowed: {', '.join(sorted(METHODS))}")
    cls = METHODS[name]
    check_options("method", f"method {name}", cls.Config, options)
    return cls(cls.Config(**options))
