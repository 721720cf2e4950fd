"""The protocol switch (``conf/protocol/``): the proxy protocol leaves every cell's config, and so
its run id, as it was before the switch existed; the paper protocol composes and validates for
every table, refuses proxy recipes, and runs one cell of each table end to end on a tiny ImageFolder
with a saved state dict as its pretrained weights."""
from __future__ import annotations

import json
import shutil
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from PIL import Image

from qbench.cli import CONF_DIR
from qbench.models import create_model
from qbench.run import run
from qbench.sweep import check_sweep, compose_cell, prepare_cell, sweep_cells
from qbench.validate import ConfigError

EXPERIMENTS = sorted(p.stem for p in (CONF_DIR / "experiment").glob("*.yaml"))
PROXY_ONLY = {"finetune_length"}  # measures the proxy protocol itself: it sweeps proxy recipes
# One published record (results/published/590e1ff2ead6.json) and the cell that made it.
PUBLISHED = ("590e1ff2ead6", ["experiment=attention_round_table", "+ptq_row=adaround_layer", "model=resnet18",
                              "wbits=4", "abits=8", "seed=0"])


def without_protocol(conf: Path) -> Path:
    """A copy of the config tree as it was before the protocol group: the two defaults lines of
    ``config.yaml`` and the protocol-keyed FAQ recipe choice undone, and AdaRound's proxy budget
    back in its table row."""
    shutil.copytree(CONF_DIR, conf)
    config = conf / "config.yaml"
    config.write_text("".join(line for line in config.read_text().splitlines(keepends=True)
                              if "protocol" not in line))
    for bits in (8, 4):
        setting = conf / "faq_setting" / f"w{bits}a{bits}.yaml"
        setting.write_text(setting.read_text().replace("faq_${protocol}_", "faq_local_"))
    row = conf / "ptq_row" / "adaround_layer.yaml"
    row.write_text(row.read_text() + "  iterations: 192\n  lr: 0.05\n")
    return conf


@lru_cache(maxsize=None)
def run_ids(conf: str, *overrides: str) -> list[str]:
    """The run id of every cell of ``qbench -m <overrides>`` under the config tree ``conf``."""
    return [prepare_cell(compose_cell(cell, Path(conf))).run_id for cell in sweep_cells(list(overrides), Path(conf))]


@pytest.fixture(scope="module")
def old_conf(tmp_path_factory) -> Path:
    return without_protocol(tmp_path_factory.mktemp("conf") / "conf")


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_the_proxy_protocol_keeps_every_run_id(name, old_conf):
    assert run_ids(str(CONF_DIR), f"experiment={name}") == run_ids(str(old_conf), f"experiment={name}")


def test_protocol_proxy_is_the_default():
    default = run_ids(str(CONF_DIR), "experiment=faq_table")
    assert run_ids(str(CONF_DIR), "experiment=faq_table", "protocol=proxy") == default


def test_a_published_record_keeps_its_run_id():
    run_id, overrides = PUBLISHED
    assert (Path(__file__).resolve().parents[1] / "results" / "published" / f"{run_id}.json").is_file()
    assert prepare_cell(compose_cell(overrides, CONF_DIR)).run_id == run_id
    assert prepare_cell(compose_cell([*overrides, "protocol=proxy"], CONF_DIR)).run_id == run_id


def test_adaround_takes_the_cpu_budget_on_the_proxy_and_the_papers_under_the_paper_protocol(empty_root):
    proxy = compose_cell(["experiment=attention_round_table", "+ptq_row=adaround_block"], CONF_DIR)
    paper = compose_cell(["experiment=attention_round_table", "+ptq_row=adaround_block", "protocol=paper",
                          f"dataset.root={empty_root}"], CONF_DIR)
    assert (proxy["method"]["iterations"], proxy["method"]["lr"]) == (192, 0.05)
    assert (paper["method"]["iterations"], paper["method"]["lr"]) == (10000, 0.001)
    assert proxy["method"]["reconstruction"] == paper["method"]["reconstruction"] == "block"


@pytest.fixture(scope="module")
def empty_root(tmp_path_factory) -> Path:
    """An ImageFolder root as validation sees it: train/ and val/."""
    root = tmp_path_factory.mktemp("imagenet")
    for split in ("train", "val"):
        (root / split).mkdir()
    return root


@lru_cache(maxsize=None)
def paper_cells(name: str, root: Path) -> list:
    """The checked cells of ``experiment=name`` under the paper protocol (cached)."""
    return check_sweep([f"experiment={name}", "protocol=paper", f"dataset.root={root}"], CONF_DIR)


@pytest.mark.parametrize("name", sorted(set(EXPERIMENTS) - PROXY_ONLY))
def test_every_cell_of_the_paper_protocol_validates(name, empty_root):
    cells = paper_cells(name, empty_root)
    assert len({cell.run_id for cell in cells}) == len(cells) > 1
    for cell in cells:
        cfg = cell.cfg
        assert cfg["dataset"]["name"] == "imagenet" and cfg["dataset"]["pretrained_fp"]
        assert cfg["recipe"]["fp"] is None and "imagenet" in cfg["recipe"]["name"]


def test_paper_recipes_by_method(empty_root):
    assert {c.cfg["recipe"]["name"] for c in paper_cells("lsqplus_table2", empty_root)} == {"lsq_imagenet"}
    apot = paper_cells("apot_resnet18", empty_root)[0].cfg
    assert (apot["recipe"]["batch_size"], apot["recipe"]["qat"]["epochs"]) == (1024, 120)
    assert (apot["method"]["alpha_lr_scale"], apot["method"]["alpha_weight_decay"]) == (0.1, 1e-4)
    assert {c.cfg["method"]["progressive_from"] for c in paper_cells("apot_ablation", empty_root)} == {5}
    faq = {c.cfg["wbits"]: (c.cfg["recipe"]["name"], c.cfg["calib"]["num_images"])
           for c in paper_cells("faq_table", empty_root)}
    assert faq == {8: ("faq_imagenet_8bit", 2000), 4: ("faq_imagenet_4bit", 2000)}
    ptq = paper_cells("attention_round_table", empty_root)
    recipes = {(c.cfg["recipe"]["name"], c.cfg["calib"]["num_images"]) for c in ptq}
    assert recipes == {("attention_round_imagenet", 1024)}


def test_the_paper_protocol_refuses_a_proxy_recipe(empty_root):
    with pytest.raises(ConfigError, match="protocol=paper runs the papers' recipes, but recipe local_bnclip_150steps"):
        check_sweep(["experiment=finetune_length", "protocol=paper", f"dataset.root={empty_root}"], CONF_DIR)


def test_an_unknown_protocol_and_a_missing_root_are_one_line(tmp_path):
    import subprocess
    import sys

    for args, message in ((["protocol=papr"], "protocol=papr is unknown; allowed: paper, proxy"),
                          (["protocol=paper"], "dataset.root must be set")):
        out = subprocess.run([sys.executable, "-m", "qbench", "-m", "experiment=lsq_resnet18", *args,
                              f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"],
                             capture_output=True, text=True)
        assert out.returncode == 2, out.stderr
        assert out.stderr.count("\n") == 1 and message in out.stderr and "Traceback" not in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()


CLASSES = 3
SHRINK = ["dataset.train_limit=6", "dataset.val_limit=3", "dataset.num_classes=3", "dataset.workers=0",
          "dataset.pin_memory=false",
          "recipe.batch_size=3", "recipe.eval_batch_size=3", "recipe.qat.max_steps_per_epoch=2",
          "calib.num_images=3", "runtime.device=cpu", "runtime.progress=false", "runtime.compile_quantizers=false"]
# One cell of each table's paper protocol (the LSQ+ tables share one recipe and differ by model), and
# each of the four networks at least once: (experiment, the cell's model or one of its overrides, or
# None for the first cell, extra overrides). LSQ's at the paper's 224 px, the others at 64 px crops of
# the same JPEGs, which keeps the test short.
SMALL = ["dataset.image_size=64", "dataset.resize=73"]
END_TO_END = {
    "lsq_resnet18": ("lsq_resnet18", None, []),
    "lsqplus_table2": ("lsqplus_table2", None, [*SMALL, "method.mse_steps=5"]),
    "lsqplus_table3": ("lsqplus_table3", None, [*SMALL, "method.mse_steps=5"]),
    "apot_resnet18": ("apot_resnet18", "bits=4", SMALL),  # the progressive chain: runs W5A5 first
    "faq_table": ("faq_table", None, SMALL),
    "faq_table-mobilenet_v2": ("faq_table", "mobilenet_v2", SMALL),
    "attention_round_table": ("attention_round_table", None, [*SMALL, "method.epochs=1"]),
}


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory) -> Path:
    """A 224 px ImageFolder of JPEGs: 3 classes, 2 training and 1 validation images each."""
    root = tmp_path_factory.mktemp("tiny_imagenet")
    gen = torch.Generator().manual_seed(0)
    for split, count in (("train", 2), ("val", 1)):
        for c in range(CLASSES):
            folder = root / split / f"n0{c}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = torch.randint(0, 256, (240, 240, 3), generator=gen, dtype=torch.uint8).numpy()
                Image.fromarray(pixels).save(folder / f"{i}.JPEG", quality=90)
    return root


@pytest.mark.parametrize("name", sorted(END_TO_END))
def test_one_paper_cell_of_each_table_runs_end_to_end(name, tiny_imagenet, tmp_path):
    experiment, choice, extra = END_TO_END[name]
    cells = sweep_cells([f"experiment={experiment}", "protocol=paper"], CONF_DIR)
    first = next(cell for cell in cells if choice is None or choice in cell or f"model={choice}" in cell)
    model = compose_cell([*first, f"dataset.root={tiny_imagenet}"], CONF_DIR)["model"]["name"]
    weights = tmp_path / "weights.pt"
    torch.save(create_model(model, CLASSES, 3).state_dict(), weights)
    cfg = compose_cell([*first, f"dataset.root={tiny_imagenet}", f"model.weights={weights}", *SHRINK,
                        *extra, f"paths.runs_dir={tmp_path}/runs",
                        f"paths.records_dir={tmp_path}/records"], CONF_DIR)
    cfg["recipe"]["qat"]["epochs"] = min(cfg["recipe"]["qat"]["epochs"], 1)
    record = run(cfg)
    assert record["status"] == "ok", record.get("error")
    assert record["config"]["dataset"]["name"] == "imagenet" and record["config"]["recipe"]["fp"] is None
    assert (tmp_path / "records" / f"{record['run_id']}.json").is_file()
    chain = [record]
    while "started_from" in chain[-1]:
        chain.append(json.loads((tmp_path / "records" / f"{chain[-1]['started_from']}.json").read_text()))
    widths = [r["config"]["wbits"] for r in chain]
    assert widths == ([4, 5] if experiment == "apot_resnet18" else [widths[0]])
    assert all(r["status"] == "ok" for r in chain)
