"""``guess-prompt`` (singhal2023/fig9_prompt.py, prompt_tuning.py) and its probe guesses of a
ViT's prompt tokens (estimators.PromptTokenGuess): the tangents against a dense autograd
reference, the estimate and its expectation, the frozen weights, the experiment at smoke."""

import json
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.func import jacrev, vjp

from forwardgrad.core.context import SiteContext
from forwardgrad.data import load_dataset
from forwardgrad.diagnostics import cosine_similarity
from forwardgrad.estimation import cross_entropy_per_example
from forwardgrad.models import finetune, vit
from forwardgrad.reproduce import run_experiment
from forwardgrad.reproduce.singhal2023 import estimators
from forwardgrad.reproduce.singhal2023.fig9_prompt import PROMPT_METHODS
from forwardgrad.reproduce.singhal2023.prompt_tuning import class_subset

PROMPTS = 3


def _tiny_vit(seed: int = 0) -> nn.Module:
    """A 2-block ViT on 1x8x8 images (4 patches) with prompts, only the prompts trained, and a
    LayerNorm gain and bias far from their init, so that diag(gamma) matters."""
    torch.manual_seed(seed)
    model = vit(8, 1, 4, patch_size=4, depth=2, heads=2, dim=8, mlp_dim=16, prompts=PROMPTS)
    with torch.no_grad():
        norm = model.blocks[0].norm1
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.normal_()
        model.embed.prompts.normal_()
    finetune.train_only(model, ["embed.prompts"])
    return model


def _images(b: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 1, 8, 8, generator=g), torch.randint(0, 4, (b,), generator=g)


def _embedding_context(model: nn.Module, x: torch.Tensor) -> SiteContext:
    site = SimpleNamespace(name="embed", module=model.embed)
    with torch.no_grad():
        return SiteContext(site, 0, model.embed(x))


def _first_layer(model: nn.Module):
    block = model.blocks[0]
    return lambda s: block.attn.qkv(block.norm1(s))


# ---- the closed forms against autograd --------------------------------------------------------


def test_prompt_wt_tangents_are_the_first_layers_transpose_on_the_prompt_rows():
    model = _tiny_vit()
    x, _ = _images(5)
    ctx = _embedding_context(model, x)
    guess = estimators.PromptTokenGuess(model, "wt")
    k, batch, tokens, dim = 4, *ctx.preact.shape
    u = guess.site_tangents(ctx, k, torch.Generator().manual_seed(3))
    # The same noise: eps (k, B, P, 3 dim) on the prompt rows of the q/k/v output, zero elsewhere.
    eps = torch.randn(k, batch, PROMPTS, 3 * dim, generator=torch.Generator().manual_seed(3))
    cotangent = torch.zeros(k, batch, tokens, 3 * dim)
    cotangent[:, :, 1 : 1 + PROMPTS] = eps
    _, pullback = vjp(_first_layer(model), ctx.preact)
    dense = torch.stack([pullback(c)[0] for c in cotangent])  # J_LNᵀ W_qkvᵀ eps, every token
    assert u.shape == (k, batch, tokens, dim)
    assert torch.allclose(u, dense, atol=1e-5)
    assert not u[:, :, 0].any() and not u[:, :, 1 + PROMPTS :].any()
    # isotropic: N(0, I) on the prompt rows only
    iso = estimators.PromptTokenGuess(model, "isotropic").site_tangents(
        ctx, k, torch.Generator().manual_seed(3)
    )
    same = torch.randn(k, batch, PROMPTS, dim, generator=torch.Generator().manual_seed(3))
    assert torch.equal(iso[:, :, 1 : 1 + PROMPTS], same)
    assert not iso[:, :, 0].any() and not iso[:, :, 1 + PROMPTS :].any()


def _per_example_site_gradients(model: nn.Module, x, y) -> torch.Tensor:
    """d l_b / d s_b at the patch-embedding output, by autograd (examples are independent)."""
    out = {}

    def keep(module, args, output):
        output.retain_grad()
        out["s"] = output

    handle = model.embed.register_forward_hook(keep)
    try:
        cross_entropy_per_example(model(x), y).sum().backward()
    finally:
        handle.remove()
    model.zero_grad(set_to_none=True)
    return out["s"].grad


def test_the_estimate_is_the_forward_gradient_along_the_drawn_tangents():
    model = _tiny_vit()
    x, y = _images(6)
    estimator = estimators.prompt_estimator(model, "wt", seed=5)
    drawn = []
    draw = estimator.guess.site_tangents

    def recording(ctx, k, generator):
        drawn.append(draw(ctx, k, generator))
        return drawn[-1]

    estimator.guess.site_tangents = recording
    _, estimate = estimator.estimate(x, y)
    (u,) = drawn  # (1, B, T, dim): one tangent, one site
    g = _per_example_site_gradients(model, x, y)
    jvps = (g * u[0]).sum((1, 2))  # (B,)
    # the mean loss's activity gradient estimate, summed over the batch on the prompt rows
    expected = (jvps[:, None, None] * u[0]).sum(0)[1 : 1 + PROMPTS] / len(x)
    (got,) = estimate.values()
    assert torch.allclose(got[0], expected, rtol=1e-4, atol=1e-6)


def test_wt_expectation_is_the_dense_jacobians_gram_matrix_and_the_mean_of_many_draws():
    model = _tiny_vit()
    x, y = _images(4)
    prompts = model.embed.prompts
    loss = cross_entropy_per_example(model(x), y).mean()
    (g,) = torch.autograd.grad(loss, prompts)  # (1, P, dim)
    guess = estimators.PromptTokenGuess(model, "wt")
    with torch.no_grad():
        expected = guess.expected_gradient(g)
    layer = _first_layer(model)
    moments = guess.second_moments()  # (P, dim, dim)
    for p in range(PROMPTS):
        jacobian = jacrev(layer)(prompts.detach()[0, p])  # (3 dim, dim), the same in every example
        gram = jacobian.T @ jacobian
        assert torch.allclose(moments[p], gram, atol=1e-4)
        assert torch.allclose(expected[0, p], gram @ g[0, p], atol=1e-4)
    # J_LN projects out two directions (the token's mean and its normalised self)
    assert torch.linalg.matrix_rank(moments, rtol=1e-5).tolist() == [8 - 2] * PROMPTS
    # Wᵀ is biased: its expectation is not along the gradient
    assert cosine_similarity(expected, g) < 0.99
    # ... and the mean of many forward gradients is that expectation, not the gradient's
    # direction (sampling error about 0.08 at this k; the best multiple of g is 0.6 away)
    _, estimate = estimators.prompt_estimator(model, "wt", seed=1, tangents=8192).estimate(x, y)
    (mean,) = estimate.values()
    assert float((mean - expected).norm() / expected.norm()) < 0.15
    along_g = g * (mean * g).sum() / (g * g).sum()
    assert float((mean - along_g).norm() / along_g.norm()) > 0.3
    isotropic = estimators.PromptTokenGuess(model, "isotropic")
    assert torch.equal(isotropic.expected_gradient(g), g)
    assert torch.equal(isotropic.second_moments(), torch.eye(8).expand(PROMPTS, 8, 8))


def test_prompt_guess_refuses_what_it_cannot_read():
    with pytest.raises(ValueError, match="prompts >= 1"):
        estimators.PromptTokenGuess(vit(8, 1, 4, patch_size=4, depth=1, dim=8, heads=2))
    with pytest.raises(ValueError, match="without dropout"):
        estimators.PromptTokenGuess(
            vit(8, 1, 4, patch_size=4, depth=1, dim=8, heads=2, prompts=1, dropout=0.1)
        )
    with pytest.raises(ValueError, match="unknown prompt law"):
        estimators.PromptTokenGuess(_tiny_vit(), "powered")


@pytest.mark.parametrize("law", ["wt", "isotropic"])
def test_tuning_changes_the_prompts_and_leaves_every_frozen_weight_bit_identical(law):
    model = _tiny_vit()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    estimator = estimators.prompt_estimator(model, law, seed=0)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    for step in range(3):
        estimator.step(*_images(6, seed=step))
        optimizer.step()
        optimizer.zero_grad()
    after = model.state_dict()
    assert not torch.equal(after["embed.prompts"], before["embed.prompts"])
    assert all(torch.equal(after[k], v) for k, v in before.items() if k != "embed.prompts")


# ---- the experiment --------------------------------------------------------------------------


def test_class_subset_keeps_the_classes_relabelled_from_zero():
    data = load_dataset("digits", layout="image")
    upper = class_subset(data, (5, 10))
    assert upper.num_classes == 5 and upper.name == "digits[5-9]"
    assert set(upper.y_train.tolist()) == set(range(5)) == set(upper.y_test.tolist())
    assert len(upper.x_train) == int((data.y_train >= 5).sum())
    assert torch.equal(upper.x_test[0], data.x_test[data.y_test >= 5][0])


def test_guess_prompt_at_smoke_budget(tmp_path):
    result = run_experiment("guess-prompt", "smoke", out_dir=tmp_path)
    record = json.loads((tmp_path / "results.json").read_text())
    raw = record["raw"]
    assert list(raw["runs"]) == list(PROMPT_METHODS)
    for runs in raw["runs"].values():
        assert [len(r["metrics"]) for r in runs] == [1]
        assert [r["frozen_unchanged"] for r in runs] == [True]
    start = raw["start"]["0"]
    assert start["trained"] == ["embed.prompts"]
    assert set(start["cosines"]) == {"weight", "activation", "activation-prompt", "wt-prompt"}
    assert -1.0 <= start["wt_expected_cosine"] <= 1.0
    assert all(1.0 <= r <= 16 - 2 for r in start["wt_second_moment_effective_ranks"])
    assert set(raw["memory"]) == {"backprop", "wt-prompt"}
    assert all(m["params_mb"] > 0 and m["batch"] == 16 for m in raw["memory"].values())
    assert (tmp_path / "runs" / "pretrain" / "weights.pt").exists()
    assert not list((tmp_path / "runs").rglob("checkpoint.pt"))
    assert (tmp_path / "fig9.png").exists()
    assert "Wᵀ (prompts)" in (tmp_path / "README.md").read_text()
    assert any("Wᵀ outperforms directional descent" in n for n in result.notes)
