"""Training loop, run files, resume, divergence handling and the command line."""

import json

import pytest
import torch

import forwardgrad as fg
from forwardgrad.cli import main
from forwardgrad.data import Dataset, load_dataset
from forwardgrad.training.config import ConfigError, TrainConfig
from forwardgrad.training.config_values import config_from_mapping
from forwardgrad.training.guess_specs import parse_guess_spec
from forwardgrad.training.train import PROBE_SEED_OFFSET, TrainingDiverged, evaluate, train


@pytest.fixture(scope="module")
def mnist1d_small() -> Dataset:
    data = load_dataset("mnist1d")
    return Dataset(
        "mnist1d",
        data.x_train[:1024],
        data.y_train[:1024],
        data.x_test[:256],
        data.y_test[:256],
        data.num_classes,
    )


GUESS_SPECS = [g for g in fg.GUESSES] + ["wperp:solver=randomized", "wperp:solver=newton-schulz"]


@pytest.mark.parametrize("spec", GUESS_SPECS)
def test_short_mnist1d_run_lowers_training_loss(spec, mnist1d_small, tmp_path):
    name, opts = parse_guess_spec(spec)
    optimizer = "stable-adamw" if name == "self-sharpening" else "adamw"
    # Weight perturbation's variance is the highest by far: give it 16 tangents per step.
    tangents = 16 if name == "weight" else 1
    cfg = TrainConfig(
        guess=name,
        depth=2,
        width=32,
        epochs=4,
        batch_size=128,
        lr=3e-3,
        optimizer=optimizer,
        tangents=tangents,
        **opts,
    )
    torch.manual_seed(cfg.seed)
    initial = fg.mlp(40, 10, depth=2, width=32)
    loss0, _ = evaluate(initial, mnist1d_small.x_train, mnist1d_small.y_train)
    result = train(cfg, tmp_path / "run", progress=False, data=mnist1d_small)
    assert result.summary["status"] == "completed"
    assert result.summary["final"]["train_loss"] < loss0 - 0.01, (
        spec,
        loss0,
        result.summary["final"],
    )


def test_estimator_factory_builds_the_training_and_probe_estimators(mnist1d_small, tmp_path):
    built = []

    def factory(cfg: TrainConfig, model: torch.nn.Module) -> fg.Estimator:
        built.append(cfg.seed)
        return fg.Estimator(model, "activation", seed=cfg.seed)

    cfg = TrainConfig(guess="wt", depth=1, width=16, epochs=2, batch_size=256, probe_every=1)
    train(cfg, tmp_path / "run", progress=False, data=mnist1d_small, estimator_factory=factory)
    assert built == [cfg.seed, cfg.seed + PROBE_SEED_OFFSET]  # the run, then the probes
    # ... and it trained with the factory's estimator: the same run with the factory's guess
    # by name gives the same weights.
    ref = train(
        TrainConfig(guess="activation", depth=1, width=16, epochs=2, batch_size=256, probe_every=1),
        tmp_path / "ref",
        progress=False,
        data=mnist1d_small,
    )
    a = torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)["model"]
    b = torch.load(tmp_path / "ref" / "checkpoint.pt", weights_only=False)["model"]
    assert ref.summary["status"] == "completed"
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_run_directory_contents_and_resume(mnist1d_small, tmp_path):
    cfg = TrainConfig(guess="wt", depth=1, width=16, epochs=2, batch_size=256, lr=1e-3)
    out = tmp_path / "run"
    train(cfg, out, progress=False, data=mnist1d_small)
    saved = json.loads((out / "config.json").read_text())
    assert saved["config"]["guess"] == "wt" and saved["seed"] == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    assert set(rows[0]) >= {"epoch", "train_loss", "train_acc", "test_loss", "test_acc", "seconds"}
    assert json.loads((out / "summary.json").read_text())["status"] == "completed"
    assert not list(out.glob("*.tmp")), "temporary files left behind"
    with pytest.raises(FileExistsError, match="already holds a run"):
        train(cfg, out, progress=False, data=mnist1d_small)


def test_resume_continues_exactly(mnist1d_small, tmp_path):
    cfg = TrainConfig(guess="activation", depth=1, width=16, epochs=4, batch_size=256, lr=1e-3)
    straight = train(cfg, tmp_path / "a", progress=False, data=mnist1d_small).summary["final"]
    short = TrainConfig(**{**cfg.to_dict(), "epochs": 2})
    train(short, tmp_path / "b", progress=False, data=mnist1d_small)
    # Extend the 2-epoch run to 4 epochs: the result equals the uninterrupted run's.
    resumed = train(None, tmp_path / "b", resume=True, progress=False, data=mnist1d_small, epochs=4)
    assert resumed.summary["final"]["train_loss"] == pytest.approx(straight["train_loss"], rel=1e-6)


def test_nan_loss_stops_reports_step_and_keeps_last_good_checkpoint(
    mnist1d_small, tmp_path, monkeypatch
):
    cfg = TrainConfig(guess="activation", depth=1, width=16, epochs=5, batch_size=256, lr=1e-3)
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, x, y, loss_fn=None):
        calls["n"] += 1
        loss = real_step(self, x, y, loss_fn)
        return loss * float("nan") if calls["n"] == 10 else loss

    monkeypatch.setattr(fg.Estimator, "step", step)
    out = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match="epoch 3, step 10"):
        train(cfg, out, progress=False, data=mnist1d_small)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["failure"]["step"] == 10
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["epoch"] == 2  # 4 steps per epoch: the last good epoch's checkpoint is kept


def test_config_validation(tmp_path):
    with pytest.raises(ConfigError, match="unknown config key 'widht'"):
        config_from_mapping({"widht": 3})
    with pytest.raises(ConfigError, match="'lr' must be float"):
        config_from_mapping({"lr": "fast"})
    with pytest.raises(ConfigError, match="width must be >= 1"):
        config_from_mapping({"width": 0})
    assert config_from_mapping({"rank": "full", "solver": "svd"}).rank is None
    # The guess's own constraints are checked when the config is loaded, not at the first step.
    with pytest.raises(ConfigError, match="rank='full' .* needs solver='svd'"):
        config_from_mapping({"rank": "full"})
    assert parse_guess_spec("wperp:rank=25:solver=randomized") == (
        "wperp",
        {"rank": 25, "solver": "randomized"},
    )
    with pytest.raises(ConfigError, match="key=value"):
        parse_guess_spec("wperp:25")


def test_cli_train_with_toml_config(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text(
        'dataset = "digits"\nguess = "wt"\ndepth = 1\nwidth = 16\nepochs = 2\nlr = 1e-3\n'
    )
    out = tmp_path / "run"
    assert (
        main(["train", "--config", str(cfg), "--epochs", "1", "--out", str(out), "--no-progress"])
        == 0
    )
    saved = json.loads((out / "config.json").read_text())["config"]
    assert saved["dataset"] == "digits" and saved["epochs"] == 1 and saved["guess"] == "wt"
    assert "train acc" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv,message",
    [
        (["train", "--guess", "frog"], "unknown guess 'frog'"),
        (["train", "--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (["train", "--config", "missing.toml"], "does not exist"),
        (["train", "--resume", "nowhere"], "no checkpoint"),
    ],
)
def test_cli_errors_are_clear(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + ["--no-progress"]) == 2
    assert message in capsys.readouterr().err


def test_cli_malformed_toml(tmp_path, capsys):
    bad = tmp_path / "bad.toml"
    bad.write_text("width = = 3\n")
    assert main(["train", "--config", str(bad)]) == 2
    assert "not valid TOML" in capsys.readouterr().err


def test_cli_compare_writes_table(tmp_path, capsys):
    out = tmp_path / "cmp"
    argv = [
        "compare",
        "--dataset",
        "digits",
        "--guesses",
        "wt,activation",
        "--seeds",
        "2",
        "--depth",
        "1",
        "--width",
        "8",
        "--epochs",
        "1",
        "--out",
        str(out),
        "--no-progress",
    ]
    assert main(argv) == 0
    text = capsys.readouterr().out
    assert "wt" in text and "activation" in text and "±" in text
    lines = (out / "summary.csv").read_text().splitlines()
    assert lines[0].startswith("guess,seeds,completed,train_acc_mean")
    assert len(lines) == 3


def test_cli_list_names_everything(capsys):
    assert main(["list"]) == 0
    text = capsys.readouterr().out
    for name in (
        list(fg.GUESSES) + list(fg.SAMPLERS) + ["projection", "mnist1d", "digits", "mnist5k"]
    ):
        assert name in text


def test_cli_data_info_names_missing_files(tmp_path, capsys):
    assert main(["data", "info", "mnist", "--data-dir", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "MISSING train-images-idx3-ubyte" in out and str(tmp_path / "mnist") in out
    assert main(["data", "info", "imagenet", "--data-dir", str(tmp_path)]) == 2


def test_a_callers_callback_sees_every_step_and_every_epoch_row(tmp_path):
    """``train(callbacks=...)`` runs after the standard callbacks: each epoch's row reaches it
    after metrics.jsonl holds it, and it sees one loss per step."""
    import json

    from forwardgrad.training.config import TrainConfig
    from forwardgrad.training.loop import Callback
    from forwardgrad.training.train import train

    class Record(Callback):
        def __init__(self):
            self.losses, self.rows = [], []

        def after_step(self, run, loss):
            self.losses.append(float(loss))

        def after_epoch(self, run, row):
            logged = [json.loads(line) for line in (run.out / "metrics.jsonl").open()]
            assert logged[-1] == row
            self.rows.append(row)

    cfg = TrainConfig(dataset="digits", guess="wt", depth=1, width=16, epochs=2, batch_size=256)
    record = Record()
    result = train(cfg, tmp_path / "run", progress=False, callbacks=[record])
    assert [r["epoch"] for r in record.rows] == [1, 2]
    assert len(record.losses) == result.summary["steps"]
    assert record.rows[-1] == result.summary["final"]
