"""compare: checked before anything trains, honest about diverged runs, careful with old runs."""

from __future__ import annotations

import json

import pytest

import forwardgrad as fg
from forwardgrad.cli import main
from forwardgrad.training.compare import compare, format_table, guess_configs
from forwardgrad.training.config import ConfigError, TrainConfig

TINY = ["--dataset", "digits", "--depth", "1", "--width", "8", "--epochs", "1", "--no-progress"]


def base(**kw) -> TrainConfig:
    cfg = dict(dataset="digits", depth=1, width=8, epochs=1, batch_size=256, lr=1e-3)
    return TrainConfig(**{**cfg, **kw})


def test_shared_options_go_only_to_the_guesses_that_read_them():
    configs = dict(guess_configs(base(rank=25, solver="svd"), ["wt", "wperp"]))
    assert configs["wt"].rank == 10 and configs["wt"].solver == "randomized"  # defaults
    assert configs["wperp"].rank == 25 and configs["wperp"].solver == "svd"


def test_an_option_in_a_spec_that_its_guess_ignores_is_refused():
    with pytest.raises(ConfigError, match="guess 'wt' reads only fallback, not rank"):
        guess_configs(base(), ["wt:rank=3"])


def test_a_late_bad_guess_fails_before_the_good_one_trains(tmp_path, monkeypatch):
    trained = []
    monkeypatch.setattr("forwardgrad.training.ensure.train", lambda *a, **k: trained.append(a))
    with pytest.raises(ValueError, match="sampler 'orthonormal' draws at most"):
        compare(base(), ["wt", "activation:sampler=orthonormal:tangents=50"], 2, tmp_path / "c")
    assert trained == [] and not (tmp_path / "c").exists()


def test_diverged_runs_are_reported_not_averaged(tmp_path, monkeypatch, capsys):
    real_step = fg.Estimator.step

    def step(self, x, y, loss_fn=None):
        loss = real_step(self, x, y, loss_fn)
        return loss * float("nan") if self.guess_name == "activation" else loss

    monkeypatch.setattr(fg.Estimator, "step", step)
    rows = compare(base(), ["wt", "activation"], 2, tmp_path / "c", progress=False)
    act = rows[1]
    assert act["completed"] == 0 and act["diverged"] == 2
    assert "seed 0: epoch 1, step 1" in act["diverged_at"]
    table = format_table(rows)
    assert "nan" not in table
    assert "diverged" in table.splitlines()[3]
    assert "activation: 2 run(s) diverged" in table


def test_a_rerun_reuses_finished_runs_and_refuses_other_settings(tmp_path, monkeypatch):
    out = tmp_path / "c"
    compare(base(), ["wt"], 1, out, progress=False)
    first = (out / "wt" / "seed0" / "checkpoint.pt").read_bytes()
    compare(base(), ["wt"], 1, out, progress=False)  # reused: untouched
    assert (out / "wt" / "seed0" / "checkpoint.pt").read_bytes() == first
    with pytest.raises(ConfigError, match=r"holds a run with other settings \(lr\)"):
        compare(base(lr=1e-2), ["wt"], 1, out, progress=False)
    rows = compare(base(epochs=2), ["wt"], 1, out, progress=False)  # extends the run
    assert rows[0]["completed"] == 1
    summary = json.loads((out / "wt" / "seed0" / "summary.json").read_text())
    assert summary["epochs_completed"] == 2


def test_compare_draws_curves_by_default_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["compare", *TINY, "--guesses", "wt,activation", "--seeds", "2", "--out", "c"]
    assert main(argv) == 0
    assert (tmp_path / "c" / "curves.png").read_bytes()[:4] == b"\x89PNG"
    assert "c/curves.png" in capsys.readouterr().out
    assert main([*argv[:-2], "--out", "d", "--no-plot"]) == 0
    assert not (tmp_path / "d" / "curves.png").exists()


def test_a_compare_folder_is_locked_for_the_whole_comparison(tmp_path):
    from forwardgrad.training.runfolder import RunFolderBusy, RunLock

    with RunLock(tmp_path / "c"):
        with pytest.raises(RunFolderBusy):
            compare(base(), ["wt"], 1, tmp_path / "c", progress=False)
