"""The integer-deployment section of ``results/README.md``: every published run that
``qbench-export`` wrote an ``export`` section into, with its parity and packed size.

Per run: the simulated (fake-quant) top-1, the integer reference's and the int8 model's top-1
with the share of images whose top-1 class agrees with the simulation and the largest logit
difference, the packed size against float32, and the number of test images. A run whose int8
model could not be built shows the backend's one-line error instead.
"""
from __future__ import annotations

from qbench.report.text import plural

HEADER = ("| run | model | method | W/A | images | simulated top-1 | integer top-1 (agrees, max \\|Δlogit\\|) "
          "| int8 top-1 (agrees, max \\|Δlogit\\|) | packed / float32 |")


def _method(config: dict) -> str:
    """``lsqplus config 4``, ``faq``."""
    method = config["method"]
    return f"{method['name']} config {method['config']}" if "config" in method else method["name"]


def _pair(parity: dict, name: str) -> str:
    """``91.33 (100.00%, 0.889)`` for ``name`` in ``integer``, ``int8``."""
    return (f"{parity[f'{name}_top1']:.2f} ({parity[f'{name}_agreement']:.2f}%, "
            f"{parity[f'{name}_max_logit_diff']:.3g})")


def _row(record: dict) -> str:
    config, export = record["config"], record["export"]
    parity = export["parity"]
    int8 = _pair(parity, "int8") if "int8_top1" in parity else f"— ({export['backend'].get('error', 'not built')})"
    size = export["size"]
    return (f"| {record['run_id']} | {config['model']['name']} | {_method(config)} | "
            f"W{config['wbits']}A{config['abits']} | {parity['images']} | {parity['simulated_top1']:.2f} | "
            f"{_pair(parity, 'integer')} | {int8} | {size['compression']:.1f}× |")


def exports_section(records: list[dict]) -> list[str]:
    """The section's markdown lines (none when no record was exported)."""
    exported = [r for r in records if r.get("export")]
    if not exported:
        return []
    exported.sort(key=lambda r: (r["config"]["model"]["name"], _method(r["config"]), -r["config"]["wbits"],
                                 r["run_id"]))
    return [
        "",
        "## Integer deployment",
        "",
        f"{plural(len(exported), 'published run')} exported by `qbench-export run=<run id> "
        "records_dir=results/published`: the integer reference (batch norm folded, int8 codes, int32 "
        "accumulation, fixed-point requantisation) and the int8 CPU model (torchao PT2E with the run's own "
        "grids, Inductor with freezing; grids below 8 bits run on int8 kernels) against the simulation on "
        "the run's test images; packed size at the bits used. Speed: [deploy.md](deploy.md).",
        "",
        HEADER,
        "|---|---|---|---|---:|---:|---:|---:|---:|",
        *(_row(r) for r in exported),
    ]
