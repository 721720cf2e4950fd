"""``model.weights=PATH``: a plain state dict or a timm / torchvision checkpoint file, loaded strictly;
a file that does not fit the model is one line and exit code 2 before anything is written; the
pretrained weights are the ones the papers used."""
from __future__ import annotations

import subprocess
import sys
from argparse import Namespace

import pytest
import torch

from qbench.baseline import fp_source
from qbench.models import create_model, load_weights, pretrained_name, read_state_dict


@pytest.fixture(scope="module")
def source():
    return create_model("resnet18", 10, 1)


@pytest.mark.parametrize("wrap", [
    lambda sd: sd,                                                   # torch.save(model.state_dict())
    lambda sd: {"state_dict": sd, "epoch": 90, "arch": "resnet18", "args": Namespace(lr=0.1)},  # timm train.py
    lambda sd: {"model": sd, "optimizer": {"state": {}}, "epoch": 3, "args": Namespace(lr=0.1)},  # torchvision
    lambda sd: {"module." + k: v for k, v in sd.items()},             # saved from DistributedDataParallel
], ids=["plain", "timm", "torchvision", "ddp"])
def test_a_checkpoint_file_loads_strictly(wrap, source, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(wrap(source.state_dict()), path)
    target = create_model("resnet18", 10, 1)
    load_weights(target, path)
    torch.testing.assert_close(target.fc.weight, source.fc.weight)


def test_a_file_that_does_not_fit_says_what_differs(source, tmp_path):
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    with pytest.raises(ValueError, match=r"does not match the model: 2 shapes differ \(first fc.weight \[10, 512\] "
                                         r"in the file, \[1000, 512\] in the model\)"):
        load_weights(create_model("resnet18", 1000, 1), path)
    torch.save(create_model("mobilenet_v2", 10, 1).state_dict(), path)
    with pytest.raises(ValueError, match="missing keys .*unexpected keys"):
        load_weights(create_model("resnet18", 10, 1), path)
    torch.save({"epoch": 3, "lr": 0.1}, path)
    with pytest.raises(ValueError, match="holds a dict of other things than tensors, not a state dict"):
        read_state_dict(path)


def test_a_weights_file_for_another_network_stops_the_run_with_nothing_written(tmp_path):
    path = tmp_path / "mobilenet.pt"
    torch.save(create_model("mobilenet_v2", 10, 1).state_dict(), path)
    out = subprocess.run([sys.executable, "-m", "qbench", "model=resnet18", f"model.weights={path}",
                          f"paths.runs_dir={tmp_path}/runs", f"paths.records_dir={tmp_path}/records"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and out.stderr.count("\n") == 1 and "Traceback" not in out.stderr
    assert "does not match resnet18 with 10 classes and 1 input channels: " in out.stderr
    assert not (tmp_path / "runs").exists() and not (tmp_path / "records").exists()


def test_pretrained_weights_are_the_papers():
    assert pretrained_name("resnet18") == "torchvision:ResNet18_Weights.IMAGENET1K_V1"
    assert pretrained_name("mobilenet_v2") == "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1"
    assert pretrained_name("efficientnet_b0") == "timm:efficientnet_b0.ra_in1k"
    assert pretrained_name("mixnet_s") == "timm:mixnet_s.ft_in1k"


@pytest.mark.parametrize("weights, pretrained, want", [
    (None, False, "trained"),
    ("/ckpt/resnet18.pth", True, "file:/ckpt/resnet18.pth"),
    (None, True, "torchvision:ResNet18_Weights.IMAGENET1K_V1"),
])
def test_the_record_names_where_the_fp_weights_come_from(weights, pretrained, want):
    cfg = {"model": {"name": "resnet18", "weights": weights}, "dataset": {"pretrained_fp": pretrained}}
    assert fp_source(cfg) == want
