"""Every check of user input, before any work: one clear line per problem.

:func:`validate` checks a composed config; :func:`check_options` checks a method's options
against the types of its ``Config`` dataclass (``bool``, ``int``, ``float``, ``str``,
``Literal[...]`` choices, ``None``, unions of these, and :class:`Bound` annotations such as
:data:`PositiveInt`), so a YAML file and its dataclass cannot drift apart silently and a wrong
type is an error, never a truthy string. :func:`fail` is how both CLIs end on bad input.
"""
from __future__ import annotations

import dataclasses
import sys
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal, NoReturn, Union

from qbench.data import DATASETS
from qbench.engine import OPTIMIZERS, SCHEDULES
from qbench.models import MODELS, read_state_dict
from qbench.quant import native

BITS_RANGE = range(2, 9)


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and what is allowed."""


def fail(message: str, prog: str = "qbench") -> NoReturn:
    """End a command on bad input: one line on stderr, exit code 2, no traceback."""
    print(f"{prog}: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def require(condition: bool, message: str) -> None:
    """Raise :class:`ConfigError` with ``message`` unless ``condition`` (cross-field checks)."""
    if not condition:
        raise ConfigError(message)


@dataclass(frozen=True)
class Bound:
    """A lower bound of a number field: ``value > low`` when ``strict``, else ``value >= low``."""

    low: float
    strict: bool = False

    def holds(self, value: float) -> bool:
        return value > self.low if self.strict else value >= self.low

    def describe(self) -> str:
        return f"> {self.low:g}" if self.strict else f"≥ {self.low:g}"


PositiveInt = Annotated[int, Bound(1)]
Count = Annotated[int, Bound(0)]
PositiveFloat = Annotated[float, Bound(0, strict=True)]
NonNegativeFloat = Annotated[float, Bound(0)]
# The grid of activation outputs; auto: signed where the calibration inputs go negative.
ActSigned = Union[bool, Literal["auto"]]


def _conforms(value: object, hint: object) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        bounds = [a for a in args[1:] if isinstance(a, Bound)]
        return _conforms(value, args[0]) and all(b.holds(value) for b in bounds)
    if origin in (Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is Literal:
        return any(value == a and type(value) is type(a) for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    raise TypeError(f"option type {hint!r} is not supported by check_options")


def _alternatives(hint: object) -> list[str]:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        bounds = " ".join(a.describe() for a in args[1:] if isinstance(a, Bound))
        return [f"{text} {bounds}".strip() for text in _alternatives(args[0])]
    if origin in (Union, types.UnionType):
        return [text for a in args for text in _alternatives(a)]
    if origin is Literal:
        return [str(a) for a in args]
    return [{type(None): "null", bool: "true", int: "an integer", float: "a number", str: "a string"}[hint]] + (
        ["false"] if hint is bool else [])


def _describe(hint: object) -> str:
    """What a value of type ``hint`` may be, in words: ``learned, xmin, zero or null``."""
    texts = _alternatives(hint)
    return texts[0] if len(texts) == 1 else ", ".join(texts[:-1]) + " or " + texts[-1]


def check_options(prefix: str, owner: str, config_class: type, options: dict) -> None:
    """Raise :class:`ConfigError` if ``options`` names a field ``config_class`` lacks, or gives
    a field a value its type annotation does not admit. ``prefix`` names the group in the
    message (``method``), ``owner`` whose options they are (``method lsq``)."""
    hints = typing.get_type_hints(config_class, include_extras=True)
    fields = [f.name for f in dataclasses.fields(config_class)]
    for key, value in options.items():
        if key not in fields:
            raise ConfigError(f"{prefix}.{key} is not an option of {owner}; "
                              f"allowed: {', '.join(sorted(fields)) or 'none'}")
        if not _conforms(value, hints[key]):
            raise ConfigError(f"{prefix}.{key}={value!r} is not allowed for {owner}; use {_describe(hints[key])}")


def _check_positive_number(field: str, value: object) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(f"{field}={value!r} is not allowed; use a number > 0")


def _check_bits(name: str, value: object, allow_null: bool = False) -> None:
    if value is None and allow_null:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value not in BITS_RANGE:
        raise ConfigError(f"{name}={value!r} is not allowed; use an integer from 2 to 8"
                          + (" or null (float)" if allow_null else ""))


def _check_positive_int(name: str, value: object, allow_zero: bool = False, allow_null: bool = False) -> None:
    if value is None and allow_null:
        return
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ConfigError(f"{name}={value!r} is not allowed; use an integer ≥ {low}")


def _check_choice(name: str, value: object, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(f"{name}={value!r} is not allowed; use one of {', '.join(allowed)}")


def _check_bool(name: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigError(f"{name}={value!r} is not allowed; use true or false")


def _is_image_folder(root: str | None) -> bool:
    return bool(root) and all((Path(root) / part).is_dir() for part in ("train", "val"))


def validate(cfg: dict) -> None:
    """Raise :class:`ConfigError` on the first wrong field of a resolved config."""
    _check_bool("force", cfg["force"])
    _check_bool("dry_run", cfg["dry_run"])
    _check_positive_int("retries", cfg["retries"], allow_zero=True)
    _check_positive_int("seed", cfg["seed"], allow_zero=True)
    _check_choice("dataset.name", cfg["dataset"]["name"], tuple(DATASETS))
    _check_bits("wbits", cfg["wbits"])
    _check_bits("abits", cfg["abits"])
    for edge in ("first_layer", "last_layer"):
        for part in ("weight_bits", "input_bits"):
            _check_bits(f"quant.{edge}.{part}", cfg["quant"][edge][part], allow_null=True)
    if cfg["model"]["name"] not in MODELS:
        raise ConfigError(f"model.name={cfg['model']['name']!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    recipe = cfg["recipe"]
    _check_positive_int("recipe.batch_size", recipe["batch_size"])
    _check_positive_int("recipe.cpu_threads", recipe.get("cpu_threads"), allow_null=True)
    _check_positive_int("recipe.eval_batch_size", recipe["eval_batch_size"])
    for phase in ("fp", "qat"):
        if recipe.get(phase):
            _check_positive_int(f"recipe.{phase}.epochs", recipe[phase]["epochs"], allow_zero=True)
            _check_positive_int(f"recipe.{phase}.max_steps_per_epoch", recipe[phase].get("max_steps_per_epoch"),
                                allow_null=True)
            _check_choice(f"recipe.{phase}.schedule", recipe[phase]["schedule"], SCHEDULES)
            _check_choice(f"recipe.{phase}.optimizer", recipe[phase]["optimizer"], OPTIMIZERS)
            _check_positive_number(f"recipe.{phase}.lr", recipe[phase]["lr"])
            if recipe[phase].get("grad_clip_norm") is not None:
                _check_positive_number(f"recipe.{phase}.grad_clip_norm", recipe[phase]["grad_clip_norm"])
            if recipe[phase].get("warmup_epochs") is not None:
                _check_positive_number(f"recipe.{phase}.warmup_epochs", recipe[phase]["warmup_epochs"])
    if cfg["model"].get("fp_lr") is not None:
        _check_positive_number("model.fp_lr", cfg["model"]["fp_lr"])
    if not cfg["dataset"]["pretrained_fp"] and not cfg["model"]["weights"] and not recipe.get("fp"):
        raise ConfigError(f"recipe {recipe['name']} has no fp section, but dataset "
                          f"{cfg['dataset']['name']} needs a trained FP baseline")
    _check_positive_int("calib.num_images", cfg["calib"]["num_images"])
    for name in ("train_limit", "val_limit"):
        _check_positive_int(f"dataset.{name}", cfg["dataset"].get(name), allow_null=True)
    root = cfg["dataset"].get("root")
    if cfg["dataset"]["name"] == "imagenet" and not _is_image_folder(root):
        raise ConfigError(f"dataset.root={root} is not a folder with train/ and val/; give an ImageFolder root")
    weights = cfg["model"]["weights"]
    if weights and not Path(weights).is_file():
        raise ConfigError(f"model.weights={weights} is not a file; give a saved state dict")
    if weights:
        try:
            read_state_dict(weights)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
    from qbench.baseline import published_folder  # qbench.baseline imports this module

    published = cfg["paths"].get("published_baselines")
    if published is not None and not (isinstance(published, str) and published_folder(cfg).is_dir()):
        raise ConfigError(f"paths.published_baselines={published!r} is not a folder (a relative path is taken from "
                          "the qbench checkout); give the published baselines' folder or null to train every baseline")
    runtime = cfg["runtime"]
    if runtime["device"] not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"runtime.device={runtime['device']!r} is not allowed; use auto, cpu or cuda")
    for flag in ("channels_last", "compile_quantizers", "native_kernels", "recompute_weights", "fuse_batch_norm",
                 "keep_freed_memory", "progress"):
        _check_bool(f"runtime.{flag}", runtime[flag])
    if runtime["native_kernels"]:
        require_native_op()
    _check_positive_int("runtime.log_every", runtime["log_every"])


def require_native_op() -> None:
    """Build the C++ op ``runtime.native_kernels=true`` needs (cached after the first time), or stop
    with one line when this machine cannot."""
    try:
        native.load()
    except native.NativeBuildError as err:
        raise ConfigError(f"runtime.native_kernels=true: {err}; set it to false") from None
