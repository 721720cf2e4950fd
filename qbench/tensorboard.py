"""What a run writes to TensorBoard (``<runs_dir>/runs/<run id>/tb``, the baseline's under its
cache folder): losses and learning rates per parameter group (:mod:`qbench.engine`), every
quantizer's step / offset / α at the initial value and over training, validation top-1 per
epoch, the method's numeric report fields per epoch (e.g. FAQ's weight cosine to FP), and the
run's hyper-parameters with its final metrics in the HParams view, so a sweep compares there.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable


def open_writer(path: Path) -> Any:
    """A ``SummaryWriter`` writing under ``path`` (imported here: tensorboard loads slowly)."""
    from torch.utils.tensorboard import SummaryWriter

    return SummaryWriter(str(path))


def log_values(writer: Any, tag: str, values: dict[str, dict[str, float]], step: int = 0) -> None:
    """``{name: {field: value}}`` as scalars ``tag/name.field``; nothing without a writer."""
    if writer is None:
        return
    for name, fields in values.items():
        for field, value in fields.items():
            writer.add_scalar(f"{tag}/{name}.{field}", value, step)


def numeric_fields(report: dict) -> dict[str, float]:
    """The top-level numbers of a method's report (per-layer dicts and lists left out)."""
    return {k: float(v) for k, v in report.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}


def _hparam_value(value: object) -> object:
    return value if isinstance(value, (int, float, str, bool)) else str(value)


def log_hparams(writer: Any, config: dict, metrics: dict[str, float] | None) -> None:
    """The run's config (flattened to dotted keys) and final metrics in the HParams view."""
    if writer is None:
        return
    from qbench.report.records import flatten

    hparams = {k: _hparam_value(v) for k, v in flatten(config).items()
               if not k.startswith(("runtime.", "paths."))}
    final = {f"final/{k}": v for k, v in (metrics or {}).items()}
    writer.add_hparams(hparams, final or {"final/top1": float("nan")}, run_name=".")


class EpochCurves:
    """Validation top-1 and the method's numeric report fields (``report/method.*``) per epoch
    of fine-tuning, as ``on_epoch_end`` of :func:`qbench.engine.train`. The last epoch is not
    evaluated here: the run's final evaluation is, and :meth:`final` logs it at that step."""

    def __init__(self, writer: Any, validation_top1: Callable[[], float], report: Callable[[], dict],
                 epochs: int) -> None:
        self.writer, self.validation_top1, self.report, self.epochs = writer, validation_top1, report, epochs
        self.step = 0

    def __call__(self, epochs_done: int, step: int) -> None:
        self.step = step
        if self.writer is not None and epochs_done < self.epochs:
            self.log(self.validation_top1(), self.report())

    def log(self, top1: float, report: dict) -> None:
        self.writer.add_scalar("val/top1", top1, self.step)
        log_values(self.writer, "report", {"method": numeric_fields(report)}, self.step)

    def final(self, top1: float, report: dict) -> None:
        """The final evaluation and report, at the step training ended (0 without training)."""
        if self.writer is not None:
            self.log(top1, report)
