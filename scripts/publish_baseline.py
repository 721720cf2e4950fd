"""Publish a trained FP baseline so that every run of its key, on any machine, starts from the
same weights: copy its weights to ``results/baselines/<model>-<dataset>-<key>.pt`` with its
``baseline.json`` beside them as ``.json``. Runs whose baseline key has a published file use it
instead of training (``paths.published_baselines``; qbench/baseline.py). Commit the ``.json``
(which weights a table used); the ``.pt`` is git-ignored and travels by other means.

    python scripts/publish_baseline.py runs/baselines/mixnet_s-fashion_mnist-023cc96d1d47

Why: a baseline trained from scratch on the CPU depends on the machine's kernels (instruction
set, oneDNN's blocking), and a short recipe amplifies that rounding into points of top-1
(README, "FP baselines"), so a table whose cells ran on several machines would mix baselines.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

from qbench.identity import file_sha256
from qbench.validate import fail

DESTINATION = Path("results/baselines")


def publish(directory: Path, destination: Path = DESTINATION) -> Path:
    """Copy the baseline in ``directory`` (``model.pt``, ``baseline.json``) into ``destination``;
    return the weights' new path. The weights must still hash to what ``baseline.json`` says."""
    info_path, weights_path = directory / "baseline.json", directory / "model.pt"
    if not info_path.is_file() or not weights_path.is_file():
        fail(f"{directory} is not a finished baseline (it needs model.pt and baseline.json)", "publish_baseline")
    info = json.loads(info_path.read_text())
    sha = file_sha256(weights_path)
    if sha != info["weights_sha256"]:
        fail(f"{weights_path} hashes to {sha[:12]}, not {info['weights_sha256'][:12]} as its baseline.json says",
             "publish_baseline")
    config = info["config"]
    stem = f"{config['model']['name']}-{config['dataset']['name']}-{info['key']}"
    destination.mkdir(parents=True, exist_ok=True)
    target = destination / f"{stem}.pt"
    shutil.copyfile(weights_path, target)
    published = {**info, "published_from": str(directory), "published_by": " ".join(["python"] + sys.argv)}
    (destination / f"{stem}.json").write_text(json.dumps(published, indent=2) + "\n")
    return target


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("directory", type=Path, help="a baseline directory under runs/baselines")
    parser.add_argument("--to", type=Path, default=DESTINATION, help=f"where to publish (default {DESTINATION})")
    args = parser.parse_args()
    target = publish(args.directory, args.to)
    print(f"published {target}: runs of baseline key {target.stem.rsplit('-', 1)[1]} now use it instead of training")


if __name__ == "__main__":
    main()
