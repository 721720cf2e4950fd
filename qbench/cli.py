"""``qbench``: the Hydra application, a thin shell around :func:`qbench.run.run`."""
from __future__ import annotations

import sys
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
GROUPS = ("dataset", "model", "method", "recipe", "experiment")


def fail(message: str) -> None:
    print(f"qbench: error: {message}", file=sys.stderr)
    raise SystemExit(2)


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


@hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")
def app(cfg: DictConfig) -> None:
    from qbench.run import run

    try:
        resolved = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except MissingMandatoryValue as exc:
        fail(f"{exc.full_key} must be set (for example {exc.full_key}=/path)")
    except OmegaConfBaseException as exc:
        fail(str(exc).splitlines()[0])
    try:
        run(resolved)
    except ValueError as exc:
        fail(str(exc))


def main() -> None:
    check_group_overrides(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
