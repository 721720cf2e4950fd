"""One cell of a sweep: its identity, where its files live, and its state on disk.

States, as ``dry_run=true`` lists them: ``done`` (a record says ok: skipped), ``partial`` (a
checkpoint exists: the run resumes from it), ``failed`` / ``diverged`` (a record says so: the
cell runs again), ``corrupt`` (the record cannot be read: the cell runs again), ``new``.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from qbench.identity import run_id
from qbench.methods import Method, create_method
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
    try:
        method = create_method(cfg["method"])
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    cfg = {**cfg, "method": method.options()}
    rid = run_id(cfg, method.quantizes)
    return Cell(cfg, method, rid, Path(cfg["paths"]["records_dir"]) / f"{rid}.json",
                Path(cfg["paths"]["runs_dir"]) / "runs" / rid)


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
    """One line for ``dry_run=true``: run id, state, what the cell is, detail."""
    state, detail = cell_state(cell)
    return f"dry run: {cell.run_id} {state:<8} {cell.label()}" + (f" ({detail})" if detail else "")


def set_aside(path: Path) -> Path:
    """Rename an unusable file to ``<name>.corrupt`` (kept for inspection); returns the new path."""
    target = path.with_name(path.name + ".corrupt")
    path.replace(target)
    return target
