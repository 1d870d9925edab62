"""The conv models of issue 9: shapes, exact parameter counts, layer parts, and that they learn."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from evosparse.errors import UsageError
from evosparse.models.cnn import SmallCNN
from evosparse.models.lenet import LeNet5
from evosparse.models.parts import select_layers
from evosparse.models.resnet import resnet18_cifar
from evosparse.topology.masks import find_sparse_parameters

MNIST_SHAPE = (1, 28, 28)
CIFAR_SHAPE = (3, 32, 32)


def build(name: str, shape: tuple[int, int, int], classes: int = 10) -> nn.Module:
    """One of the three models for images of ``shape`` (channels, side, side)."""
    channels, side = shape[0], shape[-1]
    if name == "lenet5":
        return LeNet5(channels, classes, side)
    if name == "cnn":
        return SmallCNN(channels, classes, side)
    return resnet18_cifar(classes, channels)


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv_params(n_in: int, n_out: int, kernel: int, bias: bool = True) -> int:
    return n_out * n_in * kernel * kernel + (n_out if bias else 0)


def linear_params(n_in: int, n_out: int) -> int:
    return n_in * n_out + n_out


@pytest.mark.parametrize("name", ["lenet5", "cnn", "resnet18"])
@pytest.mark.parametrize("shape,classes", [(MNIST_SHAPE, 10), (CIFAR_SHAPE, 100)])
def test_logits_have_one_row_per_image_and_one_column_per_class(name, shape, classes):
    model = build(name, shape, classes)
    assert model(torch.randn(3, *shape)).shape == (3, classes)


def test_lenet5_caffe_on_mnist_has_431080_parameters():
    by_hand = (
        conv_params(1, 20, 5)
        + conv_params(20, 50, 5)  # 520 + 25,050
        + linear_params(50 * 4 * 4, 500)
        + linear_params(500, 10)
    )  # 400,500 + 5,010
    assert by_hand == 431_080
    model = build("lenet5", MNIST_SHAPE)
    assert parameter_count(model) == 431_080
    assert model.architecture == [1, 20, 50, 800, 500, 10]


def test_lenet5_flattens_50_5_5_features_on_cifar():
    model = build("lenet5", CIFAR_SHAPE)
    assert model.architecture == [3, 20, 50, 1250, 500, 10]
    assert model.classifier[0].in_features == 1250


def test_small_cnn_is_three_padded_conv_blocks_and_a_linear_classifier():
    model = build("cnn", CIFAR_SHAPE)
    by_hand = conv_params(3, 32, 3) + conv_params(32, 64, 3) + conv_params(64, 64, 3) + linear_params(64 * 4 * 4, 10)
    assert parameter_count(model) == by_hand == 66_570
    assert model.architecture == [3, 32, 64, 64, 1024, 10]
    assert build("cnn", MNIST_SHAPE).architecture == [1, 32, 64, 64, 576, 10]


def test_small_cnn_takes_other_channels_and_hidden_fc_layers():
    model = SmallCNN(3, 10, 32, channels=(8, 16), fc_hidden=(40,))
    assert model.architecture == [3, 8, 16, 16 * 8 * 8, 40, 10]
    assert [type(m) for m in model.classifier] == [nn.Linear, nn.ReLU, nn.Linear]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_resnet18_cifar_has_the_known_11_17_million_parameters():
    model = resnet18_cifar(10)
    assert parameter_count(model) == 11_173_962
    assert model.architecture == [3, 64, 128, 256, 512, 10]
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert len(convs) == 1 + 16 + 3  # stem, two convs in each of eight blocks, three projection shortcuts
    assert convs[0].kernel_size == (3, 3) and convs[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())


def test_resnet18_keeps_full_resolution_until_the_second_stage():
    model = resnet18_cifar(10)
    x = torch.randn(2, *CIFAR_SHAPE)
    after_first_stage = model.stages[0](model.stem(x))
    assert after_first_stage.shape == (2, 64, 32, 32)
    assert model.stages(model.stem(x)).shape == (2, 512, 4, 4)


@pytest.mark.parametrize(
    "make",
    [
        lambda: LeNet5(1, 10, 13),
        lambda: SmallCNN(3, 10, 4),
        lambda: SmallCNN(3, 10, 32, channels=()),
        lambda: SmallCNN(3, 10, 32, fc_hidden=(0,)),
    ],
)
def test_impossible_sizes_are_usage_errors(make):
    with pytest.raises(UsageError):
        make()


def test_select_layers_names_lenet_weights_by_part():
    model = build("lenet5", MNIST_SHAPE)
    assert select_layers(model, "conv") == ["features.0.weight", "features.2.weight"]
    assert select_layers(model, "fc") == ["classifier.0.weight", "classifier.2.weight"]
    assert select_layers(model, "all") == select_layers(model, "conv") + select_layers(model, "fc")


@pytest.mark.parametrize("name", ["lenet5", "cnn", "resnet18"])
def test_select_layers_splits_exactly_the_matrices_and_kernels(name):
    model = build(name, CIFAR_SHAPE)
    modules = dict(model.named_modules())
    fc, conv = select_layers(model, "fc"), select_layers(model, "conv")
    assert all(isinstance(modules[n.removesuffix(".weight")], nn.Linear) for n in fc)
    assert all(isinstance(modules[n.removesuffix(".weight")], nn.Conv2d) for n in conv)
    # Brute force: in these models the ≥2-D parameters are exactly the conv and linear weights.
    multi_dim = {n for n, p in model.named_parameters() if p.dim() >= 2}
    assert set(fc) | set(conv) == multi_dim and not set(fc) & set(conv)
    assert sorted(select_layers(model, "all")) == sorted(multi_dim)
    # ... and "all" is what the Sparsifier picks by default.
    assert select_layers(model, "all") == [name for name, _, _ in find_sparse_parameters(model)]


def test_resnet18_fc_part_is_the_classifier_alone_and_norms_are_never_selected():
    model = resnet18_cifar(10)
    assert select_layers(model, "fc") == ["fc.weight"]
    conv = select_layers(model, "conv")
    assert len(conv) == 20 and "stages.1.0.shortcut.0.weight" in conv
    assert not any("bn" in n or "bias" in n for n in select_layers(model, "all"))


def test_select_layers_handles_a_bare_layer_and_refuses_unknown_parts():
    assert select_layers(nn.Linear(3, 2), "fc") == ["weight"]
    assert select_layers(nn.Linear(3, 2), "conv") == []
    with pytest.raises(UsageError, match="unknown layer part 'dense'"):
        select_layers(nn.Linear(3, 2), "dense")


@pytest.mark.parametrize("name", ["lenet5", "cnn", "resnet18"])
def test_each_model_fits_a_small_random_cifar_batch(name):
    torch.manual_seed(0)
    model = build(name, CIFAR_SHAPE)
    images, labels = torch.randn(8, *CIFAR_SHAPE), torch.randint(0, 10, (8,))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(4):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(images), labels)
        loss.backward()
        losses.append(loss.item())
        optimizer.step()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.parameters())
    assert losses[-1] < 0.8 * losses[0]
