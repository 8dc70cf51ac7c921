"""Diagnostics against the backprop oracle: each measurement checked against its definition,
computed independently here (explicit Jacobians, SVDs, the papers' formulas)."""

import copy
import json
import math

import pytest
import torch
from conftest import batch

from forwardgrad import Estimator, chain_plan, mlp
from forwardgrad.cli import main
from forwardgrad.data import Dataset, load_dataset
from forwardgrad.diagnostics import (
    PROBE_EXTRAS,
    activity_gradients,
    bias_variance,
    effective_rank,
    effective_ranks,
    gradient_agreement,
    jacobian_spectra,
    one_step_effectiveness,
    overlap_curves,
    probe,
    subspace_overlap,
    tangent_covariance,
    weight_effective_ranks,
    weight_gradients,
)
from forwardgrad.estimation import cross_entropy_per_example as ce
from forwardgrad.guesses.subspace import masked_jacobian
from forwardgrad.io import read_jsonl
from forwardgrad.training.config import ConfigError, TrainConfig
from forwardgrad.training.train import train


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    # Tiny models: thread start-up would dominate, and the machine's cores are shared.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def small_model(width: int = 8, seed: int = 1) -> torch.nn.Sequential:
    torch.manual_seed(seed)
    return mlp(6, 4, depth=2, width=width).double()


def double_batch(b: int, seed: int = 0):
    x, y = batch(6, 4, b, seed)
    return x.double(), y


def preactivations(model, x) -> list[torch.Tensor]:
    """s_i at every site, by an explicit forward pass."""
    out, h = [], x
    with torch.no_grad():
        for site in chain_plan(model).sites:
            s = site.module(h)
            out.append(s)
            h = torch.relu(s)
    return out


def upstream_jacobians(model, x) -> list[torch.Tensor]:
    """W~_b = W_{i+1} diag(s_i > 0) for every site with a next layer: (B, d_{i+2}, d_{i+1})."""
    sites = chain_plan(model).sites
    s = preactivations(model, x)
    return [
        masked_jacobian(sites[i + 1].weight.detach(), (s[i] > 0).double())
        for i in range(len(sites) - 1)
    ]


# ------------------------------------------------------------------------------- agreement


def test_backprop_agrees_exactly_with_the_oracle():
    model = small_model()
    x, y = double_batch(5)
    result = probe(model, Estimator(model, "backprop"), x, y)
    assert result["cosine"] == pytest.approx(1, abs=1e-12)
    assert result["rel_norm"] == pytest.approx(1, abs=1e-12)
    assert len(result["layers"]) == 3
    for layer in result["layers"]:
        assert layer["cosine"] == pytest.approx(1, abs=1e-12)
        assert layer["rel_norm"] == pytest.approx(1, abs=1e-12)
        for kind in ("weight", "bias"):
            assert layer["params"][kind]["cosine"] == pytest.approx(1, abs=1e-12)
    json.dumps(result, allow_nan=False)  # plain JSON, ready for probes.jsonl


def test_gradient_agreement_formulas():
    model = small_model()
    x, y = double_batch(5)
    plan = chain_plan(model)
    _, true = weight_gradients(model, x, y, ce)
    flipped = gradient_agreement(model, {p: -2 * g for p, g in true.items()}, true)
    assert flipped["cosine"] == pytest.approx(-1) and flipped["rel_norm"] == pytest.approx(2)
    # Scale only the first layer by 3: that layer stays aligned, the global vector does not.
    first = {plan.sites[0].module.weight, plan.sites[0].module.bias}
    est = {p: 3 * g if p in first else g for p, g in true.items()}
    a = sum(float(g.double().pow(2).sum()) for p, g in true.items() if p in first)
    rest = sum(float(g.double().pow(2).sum()) for p, g in true.items() if p not in first)
    result = gradient_agreement(model, est, true)
    assert result["cosine"] == pytest.approx(
        (3 * a + rest) / math.sqrt((9 * a + rest) * (a + rest))
    )
    assert result["rel_norm"] == pytest.approx(math.sqrt((9 * a + rest) / (a + rest)))
    assert result["layers"][0]["cosine"] == pytest.approx(1)
    assert result["layers"][0]["rel_norm"] == pytest.approx(3)
    assert result["layers"][1]["rel_norm"] == pytest.approx(1)
    with pytest.raises(ValueError, match="different parameters"):
        gradient_agreement(model, {plan.sites[0].module.weight: true[plan.sites[0].weight]}, true)


# ------------------------------------------------------------------------ bias and variance


def test_bias_and_variance_follow_equations_17_and_18():
    model = small_model()
    x, y = double_batch(3)
    draws = 40
    result = bias_variance(Estimator(model, "wt", seed=5), x, y, draws)
    # The same draws again (same seed), and the digest's formulas written out.
    est = Estimator(model, "wt", seed=5)
    samples = [est.estimate_activity(x, y)[1] for _ in range(draws)]
    true = activity_gradients(model, x, y, ce)
    for i, g in enumerate(true):
        g_hat = torch.stack([s[i] for s in samples])  # (draws, B, d)
        beta = (g_hat.mean(0) - g).mean(0)  # (1/B) sum_b (E[g_hat_b] - g_b)
        mse = ((g - g_hat) ** 2).mean(0).mean(0)  # (1/B) sum_b E[(g_b - g_hat_b)^2]
        layer = result["layers"][i]
        assert layer["bias"] == pytest.approx(float(beta.norm()), rel=1e-10)
        assert layer["variance"] == pytest.approx(float((mse - beta**2).norm()), rel=1e-10)
        per_example = (g_hat.mean(0) - g).norm(dim=-1).mean()
        assert layer["bias_per_example"] == pytest.approx(float(per_example), rel=1e-10)
    assert result["bias"] == pytest.approx(math.sqrt(sum(r["bias"] ** 2 for r in result["layers"])))


def test_bias_of_an_unbiased_guess_shrinks_like_one_over_sqrt_draws():
    model = small_model()
    x, y = double_batch(4)
    few = bias_variance(Estimator(model, "activation", seed=0), x, y, draws=100)
    many = bias_variance(Estimator(model, "activation", seed=1), x, y, draws=1600)
    assert few["space"] == "activity"
    # 16x the draws: the noise floor shrinks 4x, and the measured bias is only that noise.
    assert few["bias_se"] / many["bias_se"] == pytest.approx(4, rel=0.2)
    assert few["bias"] / many["bias"] > 2
    for r in (few, many):
        assert r["bias"] < 2.5 * r["bias_se"]
        assert all(layer["bias_closed_form"] == 0 for layer in r["layers"])
    # The variance is the estimator's, not the measurement's: it does not shrink with draws.
    assert few["variance"] == pytest.approx(many["variance"], rel=0.3)


def test_wt_bias_equals_the_covariance_formula():
    model = small_model()
    with torch.no_grad():  # larger weights move W~^T W~ further from I: a bias well above noise
        for p in model.parameters():
            p *= 3
    x, y = double_batch(2)
    result = bias_variance(Estimator(model, "wt", seed=0), x, y, draws=2000)
    true = activity_gradients(model, x, y, ce)
    for i, jac in enumerate(upstream_jacobians(model, x)):
        cov = jac.transpose(1, 2) @ jac  # Cov(u) = W~^T W~
        expected = float(
            (torch.einsum("bij,bj->bi", cov, true[i]) - true[i]).mean(0).norm()
        )  # Eq. 17: || (1/B) sum_b (Cov_b - I) g_b ||
        layer = result["layers"][i]
        assert layer["bias_closed_form"] == pytest.approx(expected, rel=1e-9)
        assert expected > 6 * layer["bias_se"]  # a bias far above the noise floor ...
        assert abs(layer["bias"] - expected) < 4 * layer["bias_se"]  # ... measured correctly
    last = result["layers"][-1]  # isotropic at the output layer: unbiased
    assert last["bias_closed_form"] == 0 and last["bias"] < 4 * last["bias_se"]


def test_weight_space_bias_variance_of_backprop_is_zero():
    model = small_model()
    x, y = double_batch(4)
    result = bias_variance(Estimator(model, "backprop"), x, y, draws=3)
    assert result["space"] == "weight"
    assert result["bias"] == pytest.approx(0, abs=1e-12)
    assert result["variance"] == pytest.approx(0, abs=1e-12)
    with pytest.raises(ValueError, match="not an activity-space guess"):
        bias_variance(Estimator(model, "weight"), x, y, draws=3, space="activity")
    with pytest.raises(ValueError, match="draws >= 2"):
        bias_variance(Estimator(model, "wt"), x, y, draws=1)


# ------------------------------------------------------------------------ tangent covariance


def test_covariance_distance_is_zero_for_activation_and_matches_wt_and_wperp_formulas():
    model = small_model()
    x, y = double_batch(3)
    n = 20000
    iso = tangent_covariance(Estimator(model, "activation"), x, y, draws=n, max_examples=None)
    assert iso["draws"] == n
    for layer in iso["layers"]:
        d = layer["width"]
        assert layer["closed_form"] == 0
        # E||C_hat - I||^2 = d (d + 1) / n for Gaussian tangents: only Monte-Carlo noise.
        assert layer["frobenius"] < 2 * math.sqrt(d * (d + 1) / n)

    wt = tangent_covariance(Estimator(model, "wt"), x, y, draws=n, max_examples=None)
    for i, jac in enumerate(upstream_jacobians(model, x)):
        cov = jac.transpose(1, 2) @ jac
        exact = (cov - torch.eye(cov.shape[-1], dtype=cov.dtype)).flatten(1).norm(dim=1)
        noise = (cov.diagonal(dim1=1, dim2=2).sum(-1) ** 2 + cov.flatten(1).pow(2).sum(1)) / n
        layer = wt["layers"][i]
        assert layer["closed_form"] == pytest.approx(float(exact.mean()), rel=1e-9)
        assert abs(layer["frobenius"] - layer["closed_form"]) < 4 * float(noise.sqrt().mean())
        assert layer["frobenius_over_d"] == pytest.approx(layer["frobenius"] / layer["width"])

    # W~perp(k): E[uu^T] = V_k V_k^T, so ||E[uu^T] - I||_F = sqrt(d - k).
    wide = small_model(width=10, seed=3)
    wp = tangent_covariance(
        Estimator(wide, "wperp", rank=3, solver="svd"), x, y, draws=4000, max_examples=None
    )
    for layer in wp["layers"][:2]:
        assert layer["closed_form"] == pytest.approx(math.sqrt(10 - 3), rel=1e-9)
        assert layer["frobenius"] == pytest.approx(layer["closed_form"], abs=0.15)

    with pytest.raises(ValueError, match="weight-space tangents"):
        tangent_covariance(Estimator(model, "weight"), x, y, draws=10)


# ---------------------------------------------------------------------------------- overlap


def test_overlap_curve_matches_projections_onto_svd_subspaces():
    g = torch.Generator().manual_seed(0)
    weight = torch.randn(3, 6, generator=g, dtype=torch.float64)  # wide: rank 3 < 6
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 1], [1, 0, 0, 0, 0, 1]], dtype=torch.float64)
    grad = torch.randn(2, 6, generator=g, dtype=torch.float64)
    overlap_sq, rank = subspace_overlap(weight, mask, grad)
    assert rank.tolist() == [3, 2]
    for b in range(2):
        jac = weight * mask[b]
        _, svals, vh = torch.linalg.svd(jac)
        r = int((svals > 1e-10).sum())
        coords = (vh[:r] @ grad[b]) ** 2 / grad[b].pow(2).sum()
        expected = torch.cat([coords.cumsum(0), coords.sum().expand(3 - r)])  # flat past rank
        torch.testing.assert_close(overlap_sq[b], expected)
        # At full rank: the fraction of g in the row space of W~ (here < 1).
        row_space = torch.linalg.pinv(jac) @ jac @ grad[b]
        full = float(row_space.pow(2).sum() / grad[b].pow(2).sum())
        assert float(overlap_sq[b, -1]) == pytest.approx(full) and full < 0.99


def test_overlap_reaches_one_at_full_rank_for_an_mlp():
    model = small_model(width=10, seed=3)
    x, y = double_batch(6)
    curves = overlap_curves(model, x, y, ce)
    assert [c["layer"] for c in curves] == [0, 1]
    assert [len(c["overlap"]) for c in curves] == [10, 4]  # r = min(d_{i+2}, d_{i+1})
    assert curves[1]["rank"] <= 4
    for c in curves:
        curve = torch.tensor(c["overlap"])
        assert (curve.diff() >= -1e-12).all() and 0 < curve[0] <= 1
        # The true gradient M W_{i+1}^T g_{i+1} lies in the row space of W~ = W_{i+1} M.
        assert curve[-1] == pytest.approx(1, abs=1e-9)
        assert c["overlap_sq"][-1] == pytest.approx(1, abs=1e-9)


# --------------------------------------------------------------------------- effective rank


def test_effective_rank_of_known_matrices():
    assert effective_rank(torch.eye(5)) == pytest.approx(5)
    u, v = torch.randn(6, 1), torch.randn(1, 4)
    assert effective_rank(u @ v) == pytest.approx(1, abs=1e-6)
    assert effective_rank(torch.zeros(3, 3)) == 0
    p = torch.tensor([0.75, 0.25], dtype=torch.float64)
    expected = math.exp(float(-(p * p.log()).sum()))
    assert effective_rank(torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected)
    assert effective_rank(7 * torch.diag(torch.tensor([3.0, 1.0]))) == pytest.approx(expected)
    batched = effective_ranks(torch.stack([torch.eye(4), torch.ones(4, 4)]))
    torch.testing.assert_close(batched, torch.tensor([4.0, 1.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="one matrix"):
        effective_rank(torch.ones(4))
    model = small_model()
    for row, site in zip(weight_effective_ranks(model), chain_plan(model).sites):
        assert row["effective_rank"] == pytest.approx(effective_rank(site.weight.detach()))
        assert 1 <= row["effective_rank"] <= min(row["shape"]) and row["rank"] == min(row["shape"])


# ------------------------------------------------------------------------ Jacobian spectra


def test_jacobian_spectra_match_explicit_products():
    model = small_model()
    x, _ = double_batch(5)
    sites = chain_plan(model).sites
    s = preactivations(model, x)
    masks = [(si > 0).double() for si in s]
    w = [site.weight.detach() for site in sites]
    explicit = {
        (0, 1): w[1] * masks[0].unsqueeze(1),
        (1, 1): w[2] * masks[1].unsqueeze(1),
        (0, 2): (w[2] * masks[1].unsqueeze(1)) @ (w[1] * masks[0].unsqueeze(1)),
    }
    spectra = jacobian_spectra(model, x, layers=(1, 2), max_examples=None)
    assert {(r["layer"], r["layers"]) for r in spectra} == set(explicit)
    for r in spectra:
        jac = explicit[(r["layer"], r["layers"])]
        torch.testing.assert_close(
            torch.tensor(r["singular_values"], dtype=torch.float64),
            torch.linalg.svdvals(jac).mean(0),
        )
        assert r["effective_rank"] == pytest.approx(float(effective_ranks(jac).mean()))
        assert r["normalized"][0] == pytest.approx(1)
    with pytest.raises(ValueError, match="l >= 1"):
        jacobian_spectra(model, x, layers=(0,))


# ---------------------------------------------------------------------- 1-step effectiveness


def test_one_step_effectiveness_of_backprop_is_one_and_leaves_the_model_untouched():
    model = small_model()
    x, y = double_batch(8)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    result = one_step_effectiveness(model, Estimator(model, "backprop"), x, y)
    assert result["effectiveness"] == pytest.approx(1, abs=1e-12)
    assert result["step_sizes"] == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert result["backprop_decrease"] > 0
    # The reported decrease is that of a real SGD step at the best step size.
    stepped = copy.deepcopy(model)
    _, true = weight_gradients(model, x, y, ce)
    named = dict(model.named_parameters())
    with torch.no_grad():
        for name, p in stepped.named_parameters():
            p -= result["backprop_step"] * true[named[name]]
        after = float(ce(stepped(x), y).mean())
    assert result["loss"] - after == pytest.approx(result["backprop_decrease"], rel=1e-9)
    # Nothing lasting: parameters bit for bit as before, no .grad filled.
    one_step_effectiveness(model, Estimator(model, "activation"), x, y, draws=2)
    for name, p in model.named_parameters():
        assert torch.equal(p, before[name]) and p.grad is None


# -------------------------------------------------------------------------------- probe


def test_probe_extras_and_errors():
    model = small_model()
    x, y = double_batch(4)
    est = Estimator(model, "weight")
    result = probe(model, est, x, y, extras=["all"], draws=2, variance_draws=3, covariance_draws=8)
    assert set(PROBE_EXTRAS) - {"covariance"} <= set(result)
    assert "per-site activity tangents" in result["skipped"]["covariance"]
    assert "cosine_std" in result
    json.dumps(result, allow_nan=False)
    with pytest.raises(ValueError, match="unknown probe measurement.*'frob'"):
        probe(model, est, x, y, extras=["frob"])
    with pytest.raises(ValueError, match="different model"):
        probe(small_model(), est, x, y)


# ------------------------------------------------------------------- training and the CLI


@pytest.fixture(scope="module")
def mnist1d_tiny() -> Dataset:
    data = load_dataset("mnist1d")
    return Dataset(
        "mnist1d",
        data.x_train[:512],
        data.y_train[:512],
        data.x_test[:128],
        data.y_test[:128],
        data.num_classes,
    )


def test_probe_every_writes_probes_without_changing_training_and_resumes(mnist1d_tiny, tmp_path):
    cfg = TrainConfig(
        guess="wt", depth=1, width=16, epochs=2, batch_size=256, lr=1e-3, probe_every=1
    )
    probed = train(cfg, tmp_path / "a", progress=False, data=mnist1d_tiny)
    rows = read_jsonl(tmp_path / "a" / "probes.jsonl")
    assert [(r["epoch"], r["step"]) for r in rows] == [(0, 0), (1, 2), (2, 4)]
    for r in rows:
        assert -1 <= r["cosine"] <= 1 and r["rel_norm"] > 0 and len(r["layers"]) == 2
        assert r["guess"] == "wt" and r["examples"] == 256
    # Probing uses its own estimator and batch: the trajectory is the one without probes.
    plain = TrainConfig(**{**cfg.to_dict(), "probe_every": 0})
    unprobed = train(plain, tmp_path / "b", progress=False, data=mnist1d_tiny)
    assert unprobed.summary["final"]["train_loss"] == probed.summary["final"]["train_loss"]
    assert not (tmp_path / "b" / "probes.jsonl").exists()
    # Stop after one epoch and resume: the same probes as the uninterrupted run.
    short = TrainConfig(**{**cfg.to_dict(), "epochs": 1})
    train(short, tmp_path / "c", progress=False, data=mnist1d_tiny)
    train(None, tmp_path / "c", resume=True, progress=False, data=mnist1d_tiny, epochs=2)
    assert read_jsonl(tmp_path / "c" / "probes.jsonl") == rows
    with pytest.raises(ConfigError, match="probe_every must be >= 0"):
        TrainConfig(probe_every=-1).validate()


def test_cli_probe_on_a_run_and_on_a_fresh_model(tmp_path, capsys):
    run = tmp_path / "run"
    argv = ["--dataset", "digits", "--depth", "1", "--width", "8", "--no-progress"]
    assert main(["train", *argv, "--epochs", "1", "--guess", "wt", "--out", str(run)]) == 0
    capsys.readouterr()
    probe_argv = ["probe", str(run), "--guess", "wt,backprop", "--all", "--batch-size", "32"]
    probe_argv += ["--variance-draws", "5", "--covariance-draws", "64", "--examples", "8"]
    assert main(probe_argv) == 0
    text = capsys.readouterr().out
    for word in ("layer", "cosine", "wt", "backprop", "1-step effectiveness", "overlap@10"):
        assert word in text
    saved = json.loads((run / "probe.json").read_text())
    assert saved["epoch"] == 1 and saved["examples"] == 32
    wt, bp = saved["results"]
    assert bp["cosine"] == pytest.approx(1, abs=1e-6)
    assert bp["one_step"]["effectiveness"] == pytest.approx(1, abs=1e-6)
    assert wt["bias_variance"]["space"] == "activity" and len(wt["covariance"]["layers"]) == 2
    assert {"overlap", "effective_rank", "jacobian"} <= set(saved["model"])

    fresh = tmp_path / "fresh.json"
    assert main(["probe", "--dataset", "digits", "--depth", "1", "--width", "8", "--guess",
                 "backprop", "--batch-size", "16", "--out", str(fresh)]) == 0  # fmt: skip
    assert json.loads(fresh.read_text())["results"][0]["cosine"] == pytest.approx(1, abs=1e-6)


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--guess", "frog"], "unknown guess 'frog'"),
        (["--width", "32"], "drop --width"),
        (["--draws", "0"], "--draws must be >= 1"),
        (["--variance-draws", "1"], "--variance-draws must be >= 2"),
        (["--jacobian-layers", "1,x"], "comma-separated integers"),
    ],
)
def test_cli_probe_errors_are_clear(argv, message, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text(json.dumps({"config": TrainConfig(width=8).to_dict()}))
    (run / "checkpoint.pt").write_bytes(b"")  # never read: the arguments fail first
    assert main(["probe", str(run), *argv]) == 2
    assert message in capsys.readouterr().err


def test_cli_probe_names_a_missing_run(tmp_path, capsys):
    assert main(["probe", str(tmp_path / "missing")]) == 2
    assert "no run directory at" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["probe", str(tmp_path / "empty")]) == 2
    assert "has no checkpoint.pt" in capsys.readouterr().err
