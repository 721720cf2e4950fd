"""The cells of a sweep: their identity, where their files live, their state on disk, and the
check of every cell before a multirun starts (:func:`check_sweep`).

States, as ``dry_run=true`` lists them: ``done`` (a record says ok: skipped), ``diverged`` (a
record says the loss became NaN: a result of the cell, skipped like ``done``), ``partial`` (a
checkpoint exists: the run resumes from it), ``failed`` (a record says it crashed: the cell runs
again), ``corrupt`` (the record cannot be read: the cell runs again), ``new``. ``force=true``
runs a done or diverged cell again from the start.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
from hydra.core.override_parser.overrides_parser import OverridesParser
from omegaconf import OmegaConf, open_dict

from qbench.cost import estimate
from qbench.engine import MIXED_PRECISION
from qbench.identity import run_id
from qbench.methods import Method, create_method
from qbench.models import create_model, mismatch, read_state_dict
from qbench.quant.convert import quantizable_layers
from qbench.report.records import read_record
from qbench.validate import ConfigError, validate


@dataclass(frozen=True)
class Cell:
    """A validated config (method options as the method resolves them) and its paths."""

    cfg: dict
    method: Method
    run_id: str
    record_path: Path
    run_dir: Path

    @property
    def checkpoint(self) -> Path:
        return self.run_dir / "checkpoint.pt"

    def label(self) -> str:
        cfg = self.cfg
        bits = f" W{cfg['wbits']}A{cfg['abits']}" if self.method.quantizes else ""
        return (f"{cfg['method']['name']} {cfg['model']['name']} on {cfg['dataset']['name']}{bits} "
                f"seed {cfg['seed']}")


def prepare_cell(cfg: dict) -> Cell:
    """Validate ``cfg`` and resolve its method; raises :class:`ConfigError` on a wrong field."""
    validate(cfg)
    method = create_method(cfg["method"])
    check_skip_layers(cfg)
    check_weights(cfg)
    check_training(cfg["recipe"], cfg["runtime"])
    cfg = {**cfg, "method": method.options()}
    rid = run_id(cfg)
    return Cell(cfg, method, rid, Path(cfg["paths"]["records_dir"]) / f"{rid}.json",
                Path(cfg["paths"]["runs_dir"]) / "runs" / rid)


def predecessor_checkpoint(cell: Cell) -> tuple[str, Path] | None:
    """The run id and final checkpoint of the finished run this cell starts from
    (:meth:`~qbench.methods.Method.predecessor`), ``None`` if it starts from the FP baseline;
    raises :class:`ConfigError` while that run has not finished."""
    before = wider_cell(cell)
    if before is None:
        return None
    record, _ = previous_record(before)
    if record is None or record["status"] != "ok":
        raise ConfigError(f"run {cell.run_id} ({cell.label()}) starts from run {before.run_id} "
                          f"({before.label()}), which has not finished: run that first")
    if not before.checkpoint.is_file():
        raise ConfigError(f"run {cell.run_id} ({cell.label()}) starts from run {before.run_id}, whose record says "
                          f"ok but whose checkpoint {before.checkpoint} is missing: run that one again with force=true")
    return before.run_id, before.checkpoint


def wider_cell(cell: Cell) -> Cell | None:
    """The cell of the run ``cell`` starts from (:meth:`~qbench.methods.Method.predecessor`), ``None``
    when it starts from the FP baseline."""
    wanted = cell.method.predecessor(cell.cfg)
    return None if wanted is None else prepare_cell(wanted)


def wider_configs(cfg: dict) -> list[dict]:
    """The configs of the runs a cell (``cfg``, method options resolved) starts from, widest
    first: APoT's progressive chain, empty for most methods; whether they have run or not."""
    chain: list[dict] = []
    wanted = create_method(cfg["method"]).predecessor(cfg)
    while wanted is not None:
        chain.insert(0, wanted)
        wanted = create_method(wanted["method"]).predecessor(wanted)
    return chain


def check_skip_layers(cfg: dict) -> None:
    """Every name in ``quant.skip_layers`` must be a conv/linear layer of the model."""
    skip = cfg["quant"]["skip_layers"]
    if not skip:
        return
    ds = cfg["dataset"]
    layers = quantizable_layers(create_model(cfg["model"]["name"], ds["num_classes"], ds["in_chans"]))
    unknown = [name for name in skip if name not in layers]
    if unknown:
        raise ConfigError(f"quant.skip_layers names {unknown[0]!r}, which is not a conv/linear layer of "
                          f"{cfg['model']['name']}; its layers: {', '.join(layers[:6])}, ...")


def check_training(recipe: dict, runtime: dict) -> None:
    """The recipe's optional fine-tuning fields: ``sync_batchnorm`` (true / false, not with
    ``runtime.fuse_batch_norm``: ``SyncBatchNorm`` would replace the fused modules) and
    ``mixed_precision`` (null or a key of :data:`qbench.engine.MIXED_PRECISION`)."""
    qat = recipe.get("qat") or {}
    if not isinstance(qat.get("sync_batchnorm", False), bool):
        raise ConfigError(f"recipe.qat.sync_batchnorm={qat['sync_batchnorm']!r} is not allowed; use true or false")
    if qat.get("sync_batchnorm") and runtime["fuse_batch_norm"]:
        raise ConfigError("runtime.fuse_batch_norm=true is not allowed with recipe.qat.sync_batchnorm=true "
                          "(SyncBatchNorm replaces the fused batch norms); set one of them false")
    if qat.get("mixed_precision") not in (None, *MIXED_PRECISION):
        raise ConfigError(f"recipe.qat.mixed_precision={qat['mixed_precision']!r} is not allowed; "
                          f"use null (float32) or {', '.join(MIXED_PRECISION)}")


def check_weights(cfg: dict) -> None:
    """``model.weights`` must load strictly into the model the run builds (its classes and input
    channels), so that a file for another network stops the run before anything is written."""
    weights = cfg["model"]["weights"]
    if not weights:
        return
    ds = cfg["dataset"]
    problem = mismatch(create_model(cfg["model"]["name"], ds["num_classes"], ds["in_chans"]), read_state_dict(weights))
    if problem:
        raise ConfigError(f"model.weights={weights} does not match {cfg['model']['name']} with "
                          f"{ds['num_classes']} classes and {ds['in_chans']} input channels: {problem}")


def previous_record(cell: Cell) -> tuple[dict | None, str | None]:
    """The cell's record and ``None``, or ``None`` and why it cannot be read (``None`` too
    when there is no record)."""
    if not cell.record_path.exists():
        return None, None
    try:
        return read_record(cell.record_path), None
    except ValueError as exc:
        return None, str(exc)


def cell_state(cell: Cell) -> tuple[str, str]:
    """(state, detail) of the cell on disk; reads its record, never its checkpoint."""
    record, problem = previous_record(cell)
    resumable = "; resumes from its checkpoint" if cell.checkpoint.exists() else ""
    if problem:
        return "corrupt", problem + resumable
    if record is not None and record["status"] == "ok":
        return "done", f"top-1 {record['metrics']['top1']:.2f}"
    if record is not None:
        return record["status"], str(record.get("error") or record.get("reason")) + resumable
    if resumable:
        return "partial", f"checkpoint {cell.checkpoint}"
    return "new", ""


def dry_run_line(cell: Cell) -> str:
    """One line for ``dry_run=true``: run id, state, what the cell is, detail (with the unfinished
    run it starts from, which runs first), and for an ImageNet cell its estimated GPU-hours
    (:mod:`qbench.cost`)."""
    state, detail = cell_state(cell)
    before = wider_cell(cell) if state not in ("done", "diverged") else None
    if before is not None:
        before_state = cell_state(before)[0]
        if before_state != "done":
            detail = "; ".join(filter(None, [detail, f"starts from run {before.run_id} ({before.label()}, "
                                                      f"{before_state}), which runs first"]))
    cost = estimate(cell.cfg)
    return (f"dry run: {cell.run_id} {state:<8} {cell.label()}" + (f" ({detail})" if detail else "")
            + (f" [{cost.describe()}]" if cost else ""))


def set_aside(path: Path) -> Path:
    """Rename an unusable file to ``<name>.corrupt`` (kept for inspection); returns the new path."""
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)
    return target


def sweep_cells(overrides: list[str], conf_dir: Path, multirun: bool = True) -> list[list[str]]:
    """The overrides of every cell that ``qbench -m <overrides>`` launches, expanded as Hydra's
    basic sweeper does (``hydra.sweeper.params`` of the composed config, then the command
    line's; its private ``split_arguments`` is reused so the two cannot disagree). Without
    ``multirun``: the one cell of ``qbench <overrides>``."""
    task = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    if not multirun:
        return [task]
    parser = OverridesParser.create()
    fixed = [o.input_line for o in parser.parse_overrides(task) if not o.is_sweep_override()]
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=fixed, return_hydra_config=True)
    params = [f"{key}={value}" for key, value in (cfg.hydra.sweeper.params or {}).items()]
    return BasicSweeper.split_arguments(parser.parse_overrides(params + task), None)[0]


def compose_cell(overrides: list[str], conf_dir: Path) -> dict:
    """The resolved config of one cell (plain dict, Hydra's own settings left out)."""
    return compose_with_choices(overrides, conf_dir)[0]


def compose_with_choices(overrides: list[str], conf_dir: Path) -> tuple[dict, dict[str, str | None]]:
    """:func:`compose_cell` and the cell's config-group choices (``{"protocol": "paper", ...}``),
    which select defaults but are no keys of the config."""
    with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides, return_hydra_config=True)
    choices = OmegaConf.to_container(cfg.hydra.runtime.choices)
    with open_dict(cfg):
        del cfg["hydra"]
    return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True), choices


def check_protocol_choice(overrides: list[str], conf_dir: Path) -> None:
    """A ``protocol=NAME`` override must name a file of ``conf/protocol/``."""
    allowed = sorted(p.stem for p in (conf_dir / "protocol").glob("*.yaml"))
    for override in overrides:
        key, _, value = override.partition("=")
        unknown = [v for v in value.split(",") if v not in allowed]
        if key == "protocol" and unknown:
            raise ConfigError(f"protocol={unknown[0]} is unknown; allowed: {', '.join(allowed)}")


def check_protocol(cfg: dict, protocol: str | None) -> None:
    """Under ``protocol=paper`` (``conf/protocol/paper.yaml``) every cell starts from pretrained
    weights with a paper recipe: a recipe that trains an FP baseline (a proxy recipe, set on the
    command line or swept by the experiment, e.g. ``finetune_length``) is a :class:`ConfigError`."""
    recipe = cfg["recipe"]
    if protocol == "paper" and recipe.get("fp") is not None:
        raise ConfigError(f"protocol=paper runs the papers' recipes, but recipe {recipe['name']} is a proxy "
                          "recipe (it trains an FP baseline): leave the recipe to the protocol")


def check_sweep(overrides: list[str], conf_dir: Path, multirun: bool = True) -> list[Cell]:
    """Every cell of the (multi)run, validated with its method built (:func:`prepare_cell`),
    before any of them runs; a bad cell is a :class:`ConfigError` that names it, so a typo in
    an experiment file stops the sweep with nothing written instead of skipping the cell."""
    check_protocol_choice(overrides, conf_dir)
    cells = []
    all_overrides = sweep_cells(overrides, conf_dir, multirun)
    for cell_overrides in all_overrides:
        try:
            cfg, choices = compose_with_choices(cell_overrides, conf_dir)
            check_protocol(cfg, choices.get("protocol"))
            cells.append(prepare_cell(cfg))
        except ConfigError as exc:
            if not multirun:
                raise
            raise ConfigError(f"{exc} (sweep cell: {' '.join(swept(cell_overrides, all_overrides))})") from None
    return cells


def swept(cell_overrides: list[str], all_overrides: list[list[str]]) -> list[str]:
    """The overrides of one cell that differ between the sweep's cells (all of them when none do)."""
    varying = [o for o in cell_overrides if any(o not in other for other in all_overrides)]
    return varying or cell_overrides
