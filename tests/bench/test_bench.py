"""The benchmark harness: structure of its results, its target arithmetic, and (on Linux) that
low-memory mode's measured peak memory does not grow with depth while the default mode's does."""

import json
import runpy
from pathlib import Path

import pytest

from forwardgrad.bench import (
    BACKPROP,
    Method,
    Preset,
    Scenario,
    Target,
    grid_preset,
    measure_memory,
    memory_available,
    run_bench,
    to_markdown,
    write_results,
)
from forwardgrad.cli import main


def test_forward_pass_cost_model():
    assert BACKPROP.forward_passes() == 3
    assert Method("a", "activation", tangents=4).forward_passes() == 5  # 1 + k
    assert Method("w", "weight", tangents=4).forward_passes() == 9  # 1 + 2k


def test_run_bench_reports_ratios_and_targets(tmp_path):
    sc = Scenario(
        "tiny",
        depth=2,
        width=16,
        batch=8,
        in_features=12,
        methods=(Method("act", "activation"), Method("act4", "activation", 4)),
    )
    targets = [
        Target("act vs itself", "time", ("tiny", "act"), ("tiny", "act"), 1.0),
        Target("act4 vs 4 act", "time", ("tiny", "act4"), ("tiny", "act"), 10.0, factor=4),
        Target("missing", "time", ("tiny", "nope"), ("tiny", "act"), 1.0),
    ]
    out = run_bench(Preset([sc], targets), repeats=3, warmup=1, memory=False)
    rows = out["scenarios"][0]["methods"]
    assert list(rows) == ["backprop", "act", "act4"]
    assert rows["backprop"]["x_backprop"] == 1.0
    for r in rows.values():
        assert len(r["samples_ms"]) == 3 and r["median_ms"] > 0
        assert r["x_limit"] == pytest.approx(r["x_backprop"] / (r["forward_passes"] / 3))
    self_target, scaled, missing = out["targets"]
    assert self_target["measured_ratio"] == 1.0 and self_target["met"] is True
    assert scaled["measured_ratio"] == pytest.approx(
        rows["act4"]["median_ms"] / (4 * rows["act"]["median_ms"])
    )
    assert missing["measured_ratio"] is None and missing["met"] is None
    json_path, md_path = write_results(out, tmp_path)
    text = md_path.read_text()
    assert "| tiny | act4 |" in text and "act vs itself" in text and json_path.exists()
    assert to_markdown(out) == text


def test_grid_preset_crosses_every_axis():
    preset = grid_preset(["activation", "wt"], [1, 4], [2, 8], [16], [8, 32])
    assert len(preset.scenarios) == 4
    assert [m.label for m in preset.scenarios[0].methods] == [
        "activation k=1",
        "activation k=4",
        "wt k=1",
        "wt k=4",
    ]


@pytest.mark.skipif(memory_available() is not None, reason="needs Linux peak-RSS counters")
def test_low_memory_peak_is_flat_in_depth_and_default_grows():
    def peak(depth, low_memory):
        sc = Scenario("m", depth=depth, width=512, batch=512, in_features=64, methods=())
        m = Method("a", "activation", tangents=2, low_memory=low_memory)
        return measure_memory(sc, m)["peak_mb"]

    shallow, deep = peak(2, True), peak(10, True)
    assert deep <= 1.25 * shallow + 2  # flat: one site's activations and tangents at a time
    # The default mode keeps every site's inputs and tangents: 2 + 1 floats of (512, 512) per
    # site, 3 MB, so 8 more sites add >= 24 MB.
    assert peak(10, False) - peak(2, False) >= 20


def test_cli_quick_bench_and_bad_input(tmp_path, capsys):
    args = ["bench", "--preset", "quick", "--repeats", "1", "--warmup", "0", "--no-memory"]
    assert main([*args, "--out", str(tmp_path)]) == 0
    assert (tmp_path / "bench.md").exists() and (tmp_path / "bench.json").exists()
    assert main([*args, "--guesses", "nonsense", "--out", str(tmp_path)]) == 2
    assert "nonsense" in capsys.readouterr().err
    assert main([*args, "--widths", "0", "--out", str(tmp_path)]) == 2


def test_wperp_solver_benchmark_script_runs(tmp_path):
    script = Path(__file__).resolve().parents[2] / "benchmarks" / "wperp_solvers.py"
    module = runpy.run_path(str(script))
    module["main"](
        [
            "--widths",
            "24",
            "--batch",
            "8",
            "--rank",
            "3",
            "--min-run-time",
            "0.01",
            "--out",
            str(tmp_path),
        ]
    )
    rows = json.loads((tmp_path / "wperp_solvers.json").read_text())["rows"]
    exact = [r for r in rows if r["solver"].startswith("svd")]
    assert len(rows) == 6 and all(r["energy_min"] > 0.999 for r in exact)
    assert all(0 < r["energy_min"] <= r["energy_mean"] <= 1 + 1e-5 for r in rows)


def tiny_vit(name, methods, options=(), **fields):
    """A one-block ViT scenario on 1x8x8 inputs, batch 4; ``options`` override its builder's."""
    base = dict((("depth", 1), ("dim", 16), ("mlp_dim", 16), ("heads", 2)))
    base.update(options)
    return Scenario(
        name,
        batch=4,
        model="vit",
        input_shape=(1, 8, 8),
        classes=3,
        options=tuple(base.items()),
        methods=methods,
        **fields,
    )


def test_models_preset_and_the_frog_style_peer_on_tiny_models():
    """The models preset's shape, and a tiny ResNet/ViT scenario timed with the peer."""
    from forwardgrad.bench import models_preset
    from forwardgrad.bench.peers import frog_loop_step

    preset = models_preset()
    names = [s.name for s in preset.scenarios]
    assert any("ResNet-18" in n for n in names) and any("depth 24" in n for n in names)
    assert len(preset.targets) == 8
    frog = Method("frog k=2", "activation", 2, peer="frog-loop")
    assert frog.forward_passes() == 6 and not frog.is_backprop
    sc = tiny_vit("tiny-vit", (Method("act2", "activation", 2), frog))
    out = run_bench(Preset([sc]), repeats=1, warmup=0, memory=False)
    assert set(out["scenarios"][0]["methods"]) == {"backprop", "act2", "frog k=2"}

    # the peer computes the same estimator: with many tangents its mean is close to the gradient
    import torch
    from torch import nn

    from forwardgrad.estimation import cross_entropy_per_example as ce

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 1, 2), nn.Tanh(), nn.Flatten(), nn.Linear(4, 3)).double()
    x, y = torch.randn(2, 1, 3, 3, dtype=torch.float64), torch.randint(0, 3, (2,))
    expected = torch.autograd.grad(ce(model(x), y).mean(), list(model.parameters()))
    for p in model.parameters():
        p.grad = None
    frog_loop_step(model, x, y, ce, k=1000)()  # activity dimension per example: 4 + 3
    for p, g in zip(model.parameters(), expected):
        assert torch.nn.functional.cosine_similarity(p.grad.flatten(), g.flatten(), 0) > 0.95


def test_conv_preset_times_next_layer_guesses_on_a_conv_net():
    from forwardgrad.bench import conv_preset

    (scenario,) = conv_preset().scenarios
    assert scenario.model == "cnn" and scenario.input_shape == (1, 28, 28)
    assert [m.guess for m in scenario.all_methods()] == ["backprop", "activation", "wt", "wperp"]
    tiny = Scenario(
        "tiny-cnn",
        batch=4,
        model="cnn",
        input_shape=(1, 8, 8),
        methods=scenario.methods,
    )
    out = run_bench(Preset([tiny]), repeats=1, warmup=0, memory=False)
    assert set(out["scenarios"][0]["methods"]) == {"backprop", *[m.label for m in tiny.methods]}


def test_finetune_preset_freezes_all_but_the_subset_for_backprop_too():
    from forwardgrad.bench import finetune_preset
    from forwardgrad.bench.measure import build_scenario_model

    prompts, lora = finetune_preset().scenarios
    assert prompts.memory and not prompts.time and len(finetune_preset().targets) == 2
    tiny = tiny_vit(
        "tiny-vit-lora",
        lora.methods,
        (("dim", 8), ("prompts", 2)),
        lora=lora.lora,
        trainable=prompts.trainable,
    )
    model = build_scenario_model(tiny)
    trained = sorted(n for n, p in model.named_parameters() if p.requires_grad)
    assert trained == sorted(
        ["embed.prompts", "head.weight", "head.bias"]
        + [f"blocks.0.mlp.{i}.{p}.weight" for i in (0, 3) for p in ("down", "up")]
    )
    out = run_bench(Preset([tiny]), repeats=1, warmup=0, memory=False)
    assert set(out["scenarios"][0]["methods"]) == {"backprop", *[m.label for m in tiny.methods]}
