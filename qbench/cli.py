"""``qbench``: the Hydra application, a thin shell around :func:`qbench.run.run`.

Beyond Hydra's own syntax: ``seeds=N`` stands for the multirun ``-m seed=0,...,N-1``, and
``dry_run=true`` sends Hydra's own output (sweep folders, logs) to a temporary folder that is
removed at the end, so a dry run writes nothing.
"""
from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from qbench.validate import fail

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("dataset", "model", "method", "recipe", "experiment")
MULTIRUN_FLAGS = ("-m", "--multirun")


def check_group_overrides(argv: list[str]) -> None:
    """Reject ``group=name`` overrides naming no config file, before Hydra prints a stack."""
    for arg in argv:
        key, sep, value = arg.lstrip("+~").partition("=")
        if not sep or key not in GROUPS:
            continue
        options = sorted(p.stem for p in (CONF_DIR / key).glob("*.yaml"))
        for name in value.split(","):
            if name not in options:
                fail(f"{key}={name} is unknown; allowed: {', '.join(options)}")


def expand_seeds(argv: list[str]) -> list[str]:
    """``seeds=N`` → ``seed=0,1,...,N-1`` in a multirun (``-m`` added when absent)."""
    out, expanded = [], False
    for arg in argv:
        key, sep, value = arg.partition("=")
        if key != "seeds" or not sep:
            out.append(arg)
            continue
        if not value.isdigit() or int(value) < 1:
            fail(f"seeds={value!r} is not allowed; use an integer ≥ 1 (runs seeds 0..N-1)")
        out.append("seed=" + ",".join(str(s) for s in range(int(value))))
        expanded = True
    if expanded and not any(flag in out for flag in MULTIRUN_FLAGS):
        out.insert(0, "-m")
    return out


def is_dry_run(argv: list[str]) -> bool:
    return any(arg.lstrip("+").lower() in ("dry_run=true", "dry_run=yes", "dry_run=1") for arg in argv)


def _multirun() -> bool:
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.get().mode == RunMode.MULTIRUN


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    """One cell. A wrong field ends a single run with exit code 2; in a sweep it is reported
    and the sweep goes on (so does it after a cell that failed: its record says so)."""
    from qbench.run import run
    from qbench.validate import ConfigError

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        fail(f"{exc.full_key} must be set (for example {exc.full_key}=/path)")
    except OmegaConfBaseException as exc:
        fail(str(exc).splitlines()[0])
    try:
        record = run(resolved)
    except ConfigError as exc:
        if not _multirun():
            fail(str(exc))
        print(f"qbench: error: {exc} (cell skipped)", file=sys.stderr)
        return
    if record["status"] == "failed" and not _multirun():
        raise SystemExit(1)


def check_cells(argv: list[str]) -> None:
    """Check the run, or every cell of a multirun, before Hydra starts (and writes) anything
    (:func:`qbench.sweep.check_sweep`)."""
    from hydra.errors import HydraException

    from qbench.sweep import check_sweep
    from qbench.validate import ConfigError

    if any(a.startswith("-") and a not in MULTIRUN_FLAGS for a in argv):
        return  # Hydra's own flags (--help, --cfg job, ...): nothing runs
    multirun = any(flag in argv for flag in MULTIRUN_FLAGS)
    try:
        check_sweep([a for a in argv if a not in MULTIRUN_FLAGS], CONF_DIR, multirun)
    except ConfigError as exc:
        fail(str(exc))
    except MissingMandatoryValue as exc:
        fail(f"{exc.full_key} must be set (for example {exc.full_key}=/path)")
    except (OmegaConfBaseException, HydraException) as exc:
        fail(" ".join(str(exc).strip().splitlines()[:2]))


def main() -> None:
    argv = expand_seeds(sys.argv[1:])
    check_group_overrides(argv)
    check_cells(argv)
    if not is_dry_run(argv):
        sys.argv = [sys.argv[0], *argv]
        app()
        return
    with tempfile.TemporaryDirectory(prefix="qbench-dry-run-") as scratch:
        sys.argv = [sys.argv[0], *argv, f"hydra.run.dir={scratch}", f"hydra.sweep.dir={scratch}",
                    "hydra.output_subdir=null"]
        app()


if __name__ == "__main__":
    main()
