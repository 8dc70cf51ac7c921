"""Model builders: shapes, parameter counts, variants, where parameters live, the registry."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.nn.attention import SDPBackend, sdpa_kernel

import forwardgrad
from forwardgrad.models import MODELS, build_model, cnn, mlp, resnet18, vit
from forwardgrad.models.mlp import mlp as mlp_in_module

IMAGE_SHAPES = [(1, 8, 8), (3, 8, 8), (1, 28, 28), (3, 28, 28), (1, 32, 32), (3, 32, 32)]
SMALL_VIT = {"depth": 2, "dim": 32, "mlp_dim": 64, "heads": 4}
SMALL_MIXER = {"blocks": 2, "channels": 16, "groups": 4}


def count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_mlp_imports_unchanged():
    assert forwardgrad.mlp is mlp is mlp_in_module


def test_registry_names_and_options():
    assert set(MODELS) == {"mlp", "cnn", "resnet18", "vit", "localmixer"}
    assert MODELS["mlp"].options == ("depth", "width", "bias", "activation")
    assert MODELS["cnn"].options == ()
    assert MODELS["resnet18"].options == ("norm", "stem")
    assert MODELS["vit"].options == (
        "patch_size",
        "depth",
        "heads",
        "dim",
        "mlp_dim",
        "dropout",
        "prompts",
    )
    assert MODELS["localmixer"].options == (
        "patch_size",
        "blocks",
        "channels",
        "groups",
        "local_losses",
    )
    assert all(spec.summary for spec in MODELS.values())


# ---------------------------------------------------------------------------------------------
# Output shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", IMAGE_SHAPES)
@pytest.mark.parametrize("name", ["mlp", "cnn", "resnet18", "vit", "localmixer"])
def test_output_shape_on_images(name, shape):
    options = {"vit": SMALL_VIT, "localmixer": SMALL_MIXER}.get(name, {})
    model = build_model(name, shape, 7, **options)
    y = model(torch.randn(2, *shape))
    assert y.shape == (2, 7) and torch.isfinite(y).all()


def test_default_vit_on_cifar_and_mnist_shapes():
    for shape in [(3, 32, 32), (1, 28, 28)]:
        assert build_model("vit", shape, 10)(torch.randn(2, *shape)).shape == (2, 10)


def test_mlp_flat_and_image_input():
    flat = build_model("mlp", (40,), 10, depth=2, width=16)
    assert isinstance(flat, nn.Sequential) and isinstance(flat[0], nn.Linear)
    assert flat(torch.randn(3, 40)).shape == (3, 10)
    image = build_model("mlp", (1, 28, 28), 10, depth=2, width=16)
    assert isinstance(image[0], nn.Flatten) and image[1].in_features == 784
    assert image(torch.randn(3, 1, 28, 28)).shape == (3, 10)
    reference = mlp(784, 10, depth=2, width=16)
    assert [type(m) for m in image[1:]] == [type(m) for m in reference]


# ---------------------------------------------------------------------------------------------
# Parameter counts
# ---------------------------------------------------------------------------------------------


def test_resnet18_parameter_counts():
    # torchvision's resnet18(num_classes=10) has 11,181,642 parameters: the same layout here
    assert count(resnet18(3, 10, norm="batch", stem="imagenet")) == 11_181_642
    # GroupNorm has the same parameters as BatchNorm; the 3x3 stem has 7,680 fewer than 7x7
    assert count(resnet18(3, 10)) == 11_173_962
    assert count(resnet18(3, 10, norm="group", stem="imagenet")) == 11_181_642
    # the multi-tangent paper's MNIST ResNet-18: a 7x7/2 stem with one input channel
    assert count(resnet18(1, 10, norm="batch", stem="imagenet")) == 11_175_370
    # no norm: 9,600 norm parameters fewer, 4,800 conv biases more
    assert count(resnet18(3, 10, norm="none")) == 11_169_162


def test_vit_parameter_counts():
    per_block = (256 * 768 + 768) + (256 * 256 + 256) + (256 * 512 + 512) + (512 * 256 + 256)
    per_block += 2 * 2 * 256  # two LayerNorms
    cifar = 6 * per_block + (3 * 16 * 256 + 256) + 256 + 65 * 256 + 2 * 256 + (256 * 10 + 10)
    assert count(vit(32, 3, 10)) == cifar == 3_195_146
    assert count(vit(28, 1, 10)) == 3_183_114  # MNIST: 49 patches, 1 input channel


def test_cnn_parameter_counts():
    assert count(cnn(1, 10, 8)) == 21_386
    assert count(cnn(1, 10, 28)) == 107_786
    assert count(cnn(3, 10, 32)) == 136_886


# ---------------------------------------------------------------------------------------------
# Variants
# ---------------------------------------------------------------------------------------------


def test_resnet18_norm_variants():
    kinds = {
        norm: {type(m) for m in resnet18(3, 10, norm=norm).modules()}
        for norm in ("batch", "group", "none")
    }
    assert nn.BatchNorm2d in kinds["batch"] and nn.GroupNorm not in kinds["batch"]
    assert nn.GroupNorm in kinds["group"] and nn.BatchNorm2d not in kinds["group"]
    assert not {nn.BatchNorm2d, nn.GroupNorm} & kinds["none"]
    group = resnet18(3, 10, norm="group")
    for m in group.modules():
        if isinstance(m, nn.GroupNorm):
            assert m.num_groups == min(32, m.num_channels)
    convs = lambda model: [m for m in model.modules() if isinstance(m, nn.Conv2d)]  # noqa: E731
    assert all(c.bias is not None for c in convs(resnet18(3, 10, norm="none")))
    assert all(c.bias is None for c in convs(group))


def test_resnet18_stems():
    x = torch.randn(2, 1, 28, 28)
    cifar = resnet18(1, 10, stem="cifar")
    imagenet = resnet18(1, 10, stem="imagenet")
    assert cifar.stem(x).shape == (2, 64, 28, 28)
    assert imagenet.stem(x).shape == (2, 64, 7, 7)  # 7x7/2 conv then 3x3/2 max-pool
    assert imagenet.stem[0].kernel_size == (7, 7) and imagenet.stem[0].in_channels == 1
    assert not any(isinstance(m, nn.MaxPool2d) for m in cifar.modules())
    assert imagenet(x).shape == (2, 10)


def test_vit_rejects_indivisible_image_and_heads():
    with pytest.raises(ValueError, match="divisible by the patch size"):
        vit(30, 3, 10)
    with pytest.raises(ValueError, match="divisible by the patch size"):
        build_model("vit", (1, 28, 28), 10, patch_size=5)
    with pytest.raises(ValueError, match="divisible by heads"):
        vit(32, 3, 10, dim=30, heads=4)
    assert vit((8, 12), 1, 10, patch_size=4, **SMALL_VIT)(torch.randn(1, 1, 8, 12)).shape == (1, 10)


def test_vit_uses_no_multihead_attention():
    model = vit(8, 1, 10, **SMALL_VIT)
    assert not any(isinstance(m, nn.MultiheadAttention) for m in model.modules())
    assert model.embed.pos_embedding.shape == (1, 1 + 4, 32)
    assert model.embed.cls_token.shape == (1, 1, 32)


# ---------------------------------------------------------------------------------------------
# Where parameters live
# ---------------------------------------------------------------------------------------------

ALL_BUILDERS = [
    ("mlp", (1, 8, 8), {}),
    ("cnn", (1, 8, 8), {}),
    ("resnet18", (1, 8, 8), {"norm": "batch", "stem": "imagenet"}),
    ("resnet18", (3, 8, 8), {"norm": "none"}),
    ("vit", (3, 8, 8), SMALL_VIT),
    ("localmixer", (1, 8, 8), SMALL_MIXER),
]


@pytest.mark.parametrize("name,shape,options", ALL_BUILDERS)
def test_parameters_live_in_small_submodules(name, shape, options):
    model = build_model(name, shape, 10, **options)
    modules = dict(model.named_modules())
    total = count(model)
    for pname, _ in model.named_parameters():
        owner = pname.rpartition(".")[0]
        assert owner, f"{pname} lives on the root module"
        # the owning module's forward does not run the whole network
        assert count(modules[owner]) < total, f"{pname} lives on {owner}, which holds everything"
    assert not list(model.parameters(recurse=False))


@pytest.mark.parametrize("name,shape,options", ALL_BUILDERS)
def test_train_and_eval_mode_forward(name, shape, options):
    model = build_model(name, shape, 10, **options)
    x = torch.randn(4, *shape)
    model.train()
    y_train = model(x)
    model.eval()
    with torch.no_grad():
        y_eval = model(x)
    assert y_train.shape == y_eval.shape == (4, 10)
    assert torch.isfinite(y_train).all() and torch.isfinite(y_eval).all()


def test_batchnorm_updates_running_stats_in_train_mode_only():
    model = resnet18(1, 10, norm="batch")
    before = model.stem[1].running_mean.clone()
    model.eval()
    model(torch.randn(2, 1, 8, 8))
    assert torch.equal(model.stem[1].running_mean, before)
    model.train()
    model(torch.randn(2, 1, 8, 8))
    assert not torch.equal(model.stem[1].running_mean, before)


def test_vit_dropout_only_in_train_mode():
    model = vit(8, 1, 10, dropout=0.5, **SMALL_VIT)
    x = torch.randn(2, 1, 8, 8)
    model.eval()
    assert torch.equal(model(x), model(x))
    model.train()
    assert not torch.equal(model(x), model(x))


# ---------------------------------------------------------------------------------------------
# Forward mode: a JVP over the parameters equals <gradient, tangent>
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,shape,options",
    [
        ("cnn", (1, 8, 8), {}),
        ("resnet18", (3, 8, 8), {"norm": "group"}),
        ("vit", (3, 8, 8), SMALL_VIT),
        ("localmixer", (3, 8, 8), {**SMALL_MIXER, "local_losses": False}),
    ],
)
def test_parameter_jvp_matches_backprop(name, shape, options):
    torch.manual_seed(0)
    model = build_model(name, shape, 10, **options).double()
    x = torch.randn(3, *shape, dtype=torch.float64)
    y = torch.randint(0, 10, (3,))
    params = {k: p.detach() for k, p in model.named_parameters()}
    tangents = {k: torch.randn_like(p) for k, p in params.items()}

    def loss(p):
        return nn.functional.cross_entropy(functional_call(model, p, (x,)), y)

    with sdpa_kernel(SDPBackend.MATH):  # the fused attention kernels have no forward-AD rule
        _, d = jvp(loss, (params,), (tangents,))
    grads = torch.autograd.grad(loss(dict(model.named_parameters())), list(model.parameters()))
    expect = sum((g * tangents[k]).sum() for k, g in zip(params, grads))
    torch.testing.assert_close(d, expect, rtol=1e-8, atol=1e-10)


# ---------------------------------------------------------------------------------------------
# build_model errors
# ---------------------------------------------------------------------------------------------


def test_unknown_model_lists_names():
    with pytest.raises(ValueError, match=r"unknown model 'resnet50'.*'cnn'.*'vit'"):
        build_model("resnet50", (3, 32, 32), 10)


def test_unknown_option_names_it_and_the_allowed_ones():
    with pytest.raises(ValueError, match=r"'resnet18' does not take option\(s\) width.*norm, stem"):
        build_model("resnet18", (3, 32, 32), 10, width=64)
    with pytest.raises(ValueError, match=r"'cnn' does not take option\(s\) depth; allowed: none"):
        build_model("cnn", (1, 28, 28), 10, depth=3)


@pytest.mark.parametrize("name", ["cnn", "resnet18", "vit"])
def test_image_models_reject_flat_input(name):
    with pytest.raises(ValueError, match=r"\(C, H, W\).*layout='image'"):
        build_model(name, (784,), 10)


def test_bad_variant_values():
    with pytest.raises(ValueError, match="norm='layer'"):
        resnet18(3, 10, norm="layer")
    with pytest.raises(ValueError, match="stem='tiny'"):
        resnet18(3, 10, stem="tiny")
    with pytest.raises(ValueError, match="at least 4x4"):
        cnn(1, 10, 3)
