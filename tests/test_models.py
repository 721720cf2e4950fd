"""Every registered model builds for small data, names its real first/last layers, and loads
weights from a file strictly."""
import pytest
import torch

from qbench.models import MODELS, create_model, load_weights, model_spec
from qbench.quant.convert import quantizable_layers


@pytest.mark.parametrize("name", sorted(MODELS))
def test_model_builds_and_spec_names_its_edge_layers(name):
    model = create_model(name, num_classes=10, in_chans=1)
    layers = quantizable_layers(model)
    spec = model_spec(name)
    assert layers[0] == spec.first_layer and layers[-1] == spec.last_layer
    assert model.get_submodule(spec.first_layer).in_channels == 1
    assert model.get_submodule(spec.last_layer).out_features == 10
    model.eval()
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 10)


def test_unknown_model_lists_the_allowed_ones():
    with pytest.raises(ValueError, match="unknown model 'vgg'; allowed: efficientnet_b0"):
        model_spec("vgg")


def test_weights_file_loads_strictly(tmp_path):
    source = create_model("resnet18", 10, 1)
    path = tmp_path / "w.pt"
    torch.save(source.state_dict(), path)
    target = create_model("resnet18", 10, 1)
    load_weights(target, path)
    torch.testing.assert_close(target.conv1.weight, source.conv1.weight)
    torch.save({"model": source.state_dict()}, path)
    load_weights(create_model("resnet18", 10, 1), path)


def test_bad_weights_files_are_clear_errors(tmp_path):
    model = create_model("resnet18", 10, 1)
    with pytest.raises(ValueError, match="file not found"):
        load_weights(model, tmp_path / "missing.pt")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable PyTorch state dict"):
        load_weights(model, corrupt)
    other = tmp_path / "other.pt"
    torch.save(create_model("mobilenet_v2", 10, 1).state_dict(), other)
    with pytest.raises(ValueError, match="does not match the model"):
        load_weights(model, other)


def test_pretrained_needs_imagenet_shape():
    with pytest.raises(ValueError, match="num_classes=1000 and in_chans=3"):
        create_model("resnet18", 10, 1, pretrained=True)
