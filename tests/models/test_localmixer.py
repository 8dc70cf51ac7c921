"""The LocalMixer (Ren et al. 2022): its M/8/16 defaults, its patches, its blocks cut apart,
and the CLI training it on CIFAR-10's own file format."""

import pytest
import torch
from data_files import make_cifar10

from forwardgrad.cli import main
from forwardgrad.core.layers import ChannelLayerNorm, LocalLoss, StopGradient
from forwardgrad.models import LocalMixer, build_model


def count(model):
    return sum(p.numel() for p in model.parameters())


def test_m_8_16_on_cifar10_shapes():
    model = build_model("localmixer", (3, 32, 32), 10)
    assert model.patches.patch_size == 8  # a 4 x 4 grid of 8 x 8 patches
    assert len(model.blocks) == 4 and model.blocks[1].channel.out_channels == 512
    assert model.blocks[1].group.groups == 16 and model.local_loss.groups == 16
    # channel 192 -> 512 and group layers, three token/channel/group blocks, 4 heads, readout
    first = 192 * 512 + 512 + 512 * 32 + 512
    block = (16 * 16 + 16) + (512 * 512 + 512) + (512 * 32 + 512)
    heads = 4 * (512 * 10 + 160)
    assert count(model) == first + 3 * block + heads + 512 * 10 + 10
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_mnist_takes_seven_pixel_patches_and_odd_sizes_need_one():
    assert build_model("localmixer", (1, 28, 28), 10).patches.patch_size == 7
    with pytest.raises(ValueError, match="give patch_size"):
        build_model("localmixer", (1, 30, 30), 10)
    with pytest.raises(ValueError, match="does not divide"):
        build_model("localmixer", (1, 28, 28), 10, patch_size=8)
    with pytest.raises(ValueError, match="do not split into 3 groups"):
        build_model("localmixer", (1, 28, 28), 10, groups=3)


def test_local_losses_off_is_the_same_mixer_end_to_end():
    torch.manual_seed(0)
    local = build_model("localmixer", (1, 8, 8), 3, channels=8, groups=2, blocks=2)
    torch.manual_seed(0)
    plain = build_model(
        "localmixer", (1, 8, 8), 3, channels=8, groups=2, blocks=2, local_losses=False
    )
    kinds = {type(m) for m in plain.modules()}
    assert LocalLoss not in kinds and StopGradient not in kinds
    assert {LocalLoss, StopGradient} <= {type(m) for m in local.modules()}
    plain.load_state_dict(local.state_dict(), strict=False)  # all but the heads
    x = torch.randn(4, 1, 8, 8)
    assert torch.allclose(plain(x), local(x))  # a stop-gradient changes no value
    # end to end the first block's weights get the output loss's gradient; cut, none
    for model, moved in ((plain, True), (local, False)):
        loss = torch.nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 2, 0]))
        (g,) = torch.autograd.grad(loss, model.blocks[0].channel.weight, allow_unused=True)
        assert (g is not None and bool(g.abs().sum() > 0)) == moved


def test_channel_layer_norm_normalises_each_position_and_group():
    norm = ChannelLayerNorm(8, groups=2)
    x = torch.randn(3, 8, 5, dtype=torch.float64) * 4 + 2
    y = norm(x).reshape(3, 2, 4, 5)
    assert torch.allclose(y.mean(2), torch.zeros(3, 2, 5, dtype=x.dtype), atol=1e-12)
    assert torch.allclose(y.var(2, unbiased=False), torch.ones(3, 2, 5, dtype=x.dtype), atol=1e-3)
    # groups=1 is LayerNorm over the channels (no scale or shift)
    ref = torch.nn.functional.layer_norm(x.transpose(1, 2), (8,)).transpose(1, 2)
    assert torch.allclose(ChannelLayerNorm(8)(x), ref, atol=1e-12)


def test_local_loss_is_the_mean_over_heads_and_cells():
    scores = torch.randn(2, 2 * 3, 4)  # 2 groups of 3 classes at 4 patches
    y = torch.tensor([1, 2])
    got = LocalLoss(2).per_example(
        lambda z, t: torch.nn.functional.cross_entropy(z, t, reduction="none"), scores, y
    )
    heads = scores.reshape(2, 2, 3, 4)
    want = torch.stack(
        [
            torch.stack(
                [
                    torch.nn.functional.cross_entropy(heads[b, g, :, c], y[b])
                    for g in range(2)
                    for c in range(4)
                ]
            ).mean()
            for b in range(2)
        ]
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_the_cli_trains_it_on_cifar10_files(tmp_path, capsys):
    make_cifar10(tmp_path / "data", per_batch=8, n_test=8)
    argv = ["train", "--model", "localmixer", "--dataset", "cifar10"]
    argv += ["--data-dir", str(tmp_path / "data"), "--width", "16", "--groups", "2"]
    argv += ["--depth", "2", "--guess", "wt", "--epochs", "1", "--batch-size", "16"]
    argv += ["--out", str(tmp_path / "run")]
    assert main(argv) == 0
    assert (tmp_path / "run" / "summary.json").exists()
    assert isinstance(build_model("localmixer", (3, 32, 32), 10), LocalMixer)
