"""Checks of a composed config before any work: one clear line per problem."""
from __future__ import annotations

from pathlib import Path

from qbench.engine import OPTIMIZERS, SCHEDULES
from qbench.models import MODELS

BITS_RANGE = range(2, 9)
DATASETS = ("fashion_mnist", "cifar10", "imagenet")


class ConfigError(ValueError):
    """A config value is wrong; the message names the field and what is allowed."""


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
    _check_choice("dataset.name", cfg["dataset"]["name"], DATASETS)
    _check_bits("wbits", cfg["wbits"])
    _check_bits("abits", cfg["abits"])
    for edge in ("first_layer", "last_layer"):
        for part in ("weight_bits", "input_bits"):
            _check_bits(f"quant.{edge}.{part}", cfg["quant"][edge][part], allow_null=True)
    if cfg["model"]["name"] not in MODELS:
        raise ConfigError(f"model.name={cfg['model']['name']!r} is unknown; allowed: {', '.join(sorted(MODELS))}")
    recipe = cfg["recipe"]
    _check_positive_int("recipe.batch_size", recipe["batch_size"])
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
    device = cfg["runtime"]["device"]
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(f"runtime.device={device!r} is not allowed; use auto, cpu or cuda")
