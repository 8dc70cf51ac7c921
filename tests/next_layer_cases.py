"""Small models whose sites reach their next layer through pooling, Flatten, strides, dilation
and groups, and autograd's W~ for them: shared by the next-layer and the next-layer guess tests."""

import torch
from torch import nn

from forwardgrad import Estimator
from forwardgrad.core.next_layer import affine
from forwardgrad.diagnostics.contexts import site_contexts
from forwardgrad.models import localmixer


class TokenHead(nn.Module):
    """A token-wise MLP, then a mean over tokens (code, not a module) and a head."""

    def __init__(self):
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(3, 6), nn.GELU(), nn.Linear(6, 5))
        self.head = nn.Linear(5, 4)

    def forward(self, x):  # (B, T, 3)
        return self.head(self.mlp(x).mean(1))


def conv2d_net():
    return nn.Sequential(
        nn.Conv2d(2, 4, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(3, stride=2, padding=1),  # overlapping windows: the transpose adds up
        nn.Conv2d(4, 4, 3, padding=2, dilation=2, groups=2),
        nn.Tanh(),
        nn.Conv2d(4, 3, 3, stride=2, padding=1),
        nn.SiLU(),
        nn.Flatten(),
        nn.Linear(3 * 2 * 2, 5),
    )


def conv1d_net():
    return nn.Sequential(
        nn.Conv1d(2, 4, 3, padding=1),
        nn.GELU(),
        nn.MaxPool1d(2),
        nn.Conv1d(4, 3, 3, stride=2),
        nn.Flatten(),
        nn.Linear(3 * 1, 4),
    )


def layer_norm_net():
    """Token-wise Linear -> LayerNorm (a site: its scale and shift train) -> GELU -> Linear,
    then the mean over tokens and a head."""
    net = TokenHead()
    net.mlp = nn.Sequential(nn.Linear(3, 6), nn.LayerNorm(6), nn.GELU(), nn.Linear(6, 5))
    with torch.no_grad():
        net.mlp[1].weight.uniform_(0.5, 1.5)
        net.mlp[1].bias.uniform_(-0.5, 0.5)
    return net


def tiny_localmixer():
    """Two blocks on 8 x 8 images in 4 x 4 patches, 8 channels in 2 groups, local losses."""
    return localmixer((8, 8), 1, 3, patch_size=4, blocks=2, channels=8, groups=2)


CASES = {
    "conv2d": (conv2d_net, (2, 8, 8), 5),
    "conv1d": (conv1d_net, (2, 8), 4),
    "token-wise": (TokenHead, (4, 3), 4),
    "layer-norm": (layer_norm_net, (4, 3), 4),
    "localmixer": (tiny_localmixer, (1, 8, 8), 3),
}


def contexts(name, dtype=torch.float64, b=3):
    build, shape, classes = CASES[name]
    torch.manual_seed(0)
    model = build().to(dtype)
    x = torch.randn(b, *shape, dtype=dtype)
    y = torch.randint(0, classes, (b,))
    est = Estimator(model, "wt", fallback="activation")
    est.estimate(x, y)
    return model, est, site_contexts(est._engine, x, y, est.loss_fn)


def reference_jacobian(ctx):
    """Per-example Jacobians (B, m, n) of s -> linear part of the next layer, by autograd."""
    path = ctx.path
    s = ctx.preact.detach()

    def f(v):
        h = v
        for m in path.between:
            h = m(h)
        return affine(path.target, h) - affine(path.target, torch.zeros_like(h))

    full = torch.autograd.functional.jacobian(f, s)  # (B, *out, B, *in)
    b = s.shape[0]
    full = full.reshape(b, -1, b, s[0].numel())
    return torch.stack([full[i, :, i] for i in range(b)])
