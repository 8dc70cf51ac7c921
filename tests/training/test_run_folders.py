"""Run folders a user can trust: one process at a time, honest resume, nothing half-made or
stray, divergence and interruption said as they are, reproducible with what was recorded."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

import forwardgrad as fg
from forwardgrad.cli import main
from forwardgrad.data import Dataset, load_dataset
from forwardgrad.io import read_jsonl
from forwardgrad.training.checkpoint import CheckpointError, load_checkpoint
from forwardgrad.training.config import TrainConfig
from forwardgrad.training.resume import ResumeRefused
from forwardgrad.training.runfolder import RunFolderBusy, RunFolderTaken, RunLock
from forwardgrad.training.train import (
    RunInterrupted,
    StepOutOfMemory,
    TrainingDiverged,
    estimate_step_bytes,
    train,
)

TINY = ["--dataset", "digits", "--depth", "1", "--width", "8", "--no-progress"]


@pytest.fixture(scope="module")
def digits() -> Dataset:
    data = load_dataset("digits")
    return Dataset("digits", data.x_train[:512], data.y_train[:512], data.x_test, data.y_test, 10)


def small(**kw) -> TrainConfig:
    base = dict(dataset="digits", guess="wt", depth=1, width=8, epochs=2, batch_size=128, lr=1e-3)
    return TrainConfig(**{**base, **kw})


# ---------------------------------------------------------------------------------- locks


def test_a_locked_folder_is_refused_and_a_released_one_is_free(digits, tmp_path):
    out = tmp_path / "run"
    with RunLock(out):
        with pytest.raises(RunFolderBusy, match="in use by another forwardgrad process"):
            train(small(), out, progress=False, data=digits)
        with pytest.raises(RunFolderBusy):
            RunLock(out).acquire()
    assert not (out / ".lock").exists()  # removed on release
    assert train(small(), out, progress=False, data=digits).summary["status"] == "completed"
    assert not (out / ".lock").exists()


def test_a_killed_process_leaves_no_stuck_lock(tmp_path):
    out = tmp_path / "run"
    code = (
        "import sys, time; from forwardgrad.training.runfolder import RunLock; "
        f"RunLock({str(out)!r}).acquire(); print('locked', flush=True); time.sleep(60)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusy, match=f"pid {holder.pid}"):
            RunLock(out).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / ".lock").exists()  # the file stays behind, the lock does not
    with RunLock(out):
        pass


def test_a_folder_holding_only_another_runs_config_is_not_overwritten(digits, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "config.json").write_text('{"config": {"guess": "activation"}}\n')
    with pytest.raises(RunFolderTaken, match="never finished an epoch"):
        train(small(), out, progress=False, data=digits)
    assert json.loads((out / "config.json").read_text())["config"]["guess"] == "activation"


# ----------------------------------------------------------------- nothing half-made or stray


def test_an_error_at_the_first_step_leaves_no_folder(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = fg.Estimator.step

    def failing(self, *a, **k):
        raise ValueError("the first step failed")

    monkeypatch.setattr(fg.Estimator, "step", failing)
    with pytest.raises(ValueError, match="first step failed"):
        train(small(), out, progress=False, data=digits)
    assert not out.exists()
    monkeypatch.setattr(fg.Estimator, "step", real_step)


def test_a_failed_step_in_an_existing_empty_folder_leaves_it_empty(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    out.mkdir()
    monkeypatch.setattr(fg.Estimator, "step", lambda self, *a, **k: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        train(small(), out, progress=False, data=digits)
    assert out.is_dir() and list(out.iterdir()) == []


def test_temporary_files_of_a_killed_writer_are_removed(digits, tmp_path):
    out = tmp_path / "run"
    train(small(epochs=1), out, progress=False, data=digits)
    stray = out / ".checkpoint.pt.abc123.tmp"
    stray.write_bytes(b"half a checkpoint")
    train(None, out, resume=True, progress=False, data=digits, epochs=2)
    assert not stray.exists()
    assert not list(out.glob(".*.tmp"))


def test_ctrl_c_keeps_the_checkpoint_and_names_the_resume_command(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 6:  # in epoch 2 (4 steps per epoch)
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(fg.Estimator, "step", step)
    with pytest.raises(RunInterrupted) as info:
        train(small(epochs=3), out, progress=False, data=digits)
    assert info.value.checkpoint_epoch == 1 and info.value.kept
    assert f"forwardgrad train --resume {out}" in str(info.value)
    assert (out / "checkpoint.pt").exists() and not list(out.glob(".*"))


def test_ctrl_c_before_the_first_checkpoint_cleans_up(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setattr(
        fg.Estimator, "step", lambda self, *a, **k: (_ for _ in ()).throw(KeyboardInterrupt)
    )
    with pytest.raises(RunInterrupted, match="before the first checkpoint; nothing was kept"):
        train(small(), out, progress=False, data=digits)
    assert not out.exists()


def test_cli_ctrl_c_is_one_line_with_exit_130(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(fg.Estimator, "step", step)
    code = main(["train", *TINY, "--epochs", "5", "--out", "run"])
    err = capsys.readouterr().err
    assert code == 130
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "the checkpoint of epoch 1 is kept" in err and "forwardgrad train --resume run" in err


@pytest.mark.slow
@pytest.mark.parametrize("sig,code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_to_the_real_command_stops_it_cleanly(tmp_path, sig, code):
    argv = ["forwardgrad", "train", *TINY, "--width", "512", "--epochs", "500", "--out", "run"]
    proc = subprocess.Popen(argv, cwd=tmp_path, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (tmp_path / "run" / "checkpoint.pt").exists() and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    assert "Traceback" not in err and "forwardgrad train --resume run" in err
    assert not list((tmp_path / "run").glob(".*"))


# ----------------------------------------------------------------------------- resume rules


def test_resume_applies_the_allowed_changes_and_records_the_session(digits, tmp_path):
    out = tmp_path / "run"
    train(small(epochs=1), out, progress=False, data=digits)
    cfg = TrainConfig(**{**small().to_dict(), "epochs": 3, "checkpoint_every": 2, "threads": 1})
    result = train(cfg, out, resume=True, progress=False, data=digits)
    assert result.epochs_trained == 2 and result.summary["epochs_completed"] == 3
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["epochs"] == 3 and record["config"]["threads"] == 1
    (session,) = record["resumed"]
    assert session["epoch"] == 1 and session["environment"]["threads"] == 1
    assert set(session["changed"]) == {"epochs", "checkpoint_every", "threads"}


def test_resume_refuses_a_fixed_setting(digits, tmp_path):
    out = tmp_path / "run"
    train(small(epochs=1), out, progress=False, data=digits)
    with pytest.raises(ResumeRefused, match=r"--lr 0\.5 \(the run has 0\.001\)"):
        train(small(lr=0.5, epochs=2), out, resume=True, progress=False, data=digits)


def test_resume_refuses_other_data(digits, tmp_path):
    out = tmp_path / "run"
    train(small(epochs=1), out, progress=False, data=digits)
    fewer = Dataset("digits", digits.x_train[:256], digits.y_train[:256], digits.x_test,
                    digits.y_test, 10)  # fmt: skip
    with pytest.raises(ResumeRefused, match="was trained on"):
        train(None, out, resume=True, progress=False, data=fewer, epochs=2)


def test_resume_of_a_finished_run_says_so(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--epochs", "1", "--out", "run"]) == 0
    before = (tmp_path / "run" / "checkpoint.pt").read_bytes()
    capsys.readouterr()
    assert main(["train", "--resume", "run", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "already complete at epoch 1 of 1: nothing to train" in out and "--epochs N" in out
    assert (tmp_path / "run" / "checkpoint.pt").read_bytes() == before
    assert main(["train", "--resume", "run", "--epochs", "2", "--no-progress"]) == 0
    assert "epoch 2" in capsys.readouterr().out


def test_resume_to_fewer_epochs_than_done_is_refused(digits, tmp_path):
    out = tmp_path / "run"
    train(small(epochs=2), out, progress=False, data=digits)
    with pytest.raises(ResumeRefused, match="is at epoch 2; epochs = 1 would not extend it"):
        train(None, out, resume=True, progress=False, data=digits, epochs=1)


def test_resuming_a_diverged_run_is_refused(digits, tmp_path, monkeypatch):
    out = tmp_path / "run"
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        loss = real_step(self, *a, **k)
        return loss * float("nan") if calls["n"] == 6 else loss

    monkeypatch.setattr(fg.Estimator, "step", step)
    with pytest.raises(TrainingDiverged):
        train(small(epochs=3), out, progress=False, data=digits)
    with pytest.raises(ResumeRefused, match="diverged .* would repeat the same steps"):
        train(None, out, resume=True, progress=False, data=digits, epochs=4)


# ------------------------------------------------------------------------------- divergence


def test_divergence_in_the_first_epoch_says_no_checkpoint_exists(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *TINY, "--guess", "wt", "--lr", "1e30", "--out", "run"]) == 1
    err = capsys.readouterr().err
    assert "at epoch 1, step 2" in err and "no checkpoint is kept" in err
    assert "last good checkpoint" not in err and "Traceback" not in err
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "diverged" and summary["checkpoint_epoch"] is None
    assert not (tmp_path / "run" / "checkpoint.pt").exists()


def test_divergence_after_a_checkpoint_names_its_epoch(digits, tmp_path, monkeypatch):
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        loss = real_step(self, *a, **k)
        return loss * float("nan") if calls["n"] == 10 else loss

    monkeypatch.setattr(fg.Estimator, "step", step)
    with pytest.raises(TrainingDiverged, match=r"epoch 3, step 10.*checkpoint \(epoch 2\) is kept"):
        train(small(epochs=5), tmp_path / "run", progress=False, data=digits)


# ----------------------------------------------------------------------------------- memory


def test_the_step_memory_estimate_follows_the_stated_formula(digits):
    from forwardgrad.training.train import build_estimator, build_model

    cfg = small(tangents=16, batch_size=64, width=32, depth=2)
    estimator = build_estimator(cfg, build_model(cfg, digits))
    units = 64 + 2 * 32 + 10  # the input and every site's activity, per example
    assert estimate_step_bytes(cfg, digits, estimator) == 2 * 16 * 64 * units * 4
    chunked = small(tangents=16, batch_size=64, width=32, depth=2, chunk_size=4)
    assert estimate_step_bytes(chunked, digits, estimator) == 2 * 4 * 64 * units * 4


def test_an_allocation_failure_in_a_step_names_the_flags(digits, tmp_path, monkeypatch):
    def oom(self, *a, **k):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried 9 GB")

    monkeypatch.setattr(fg.Estimator, "step", oom)
    with pytest.raises(StepOutOfMemory, match="--tangents.*--chunk-size"):
        train(small(), tmp_path / "run", progress=False, data=digits)
    assert not (tmp_path / "run").exists()


# -------------------------------------------------------------------------- reproducibility


def test_threads_and_versions_are_recorded(digits, tmp_path):
    train(small(epochs=1, threads=1), tmp_path / "run", progress=False, data=digits)
    record = json.loads((tmp_path / "run" / "config.json").read_text())
    env = record["environment"]
    assert env["threads"] == 1 and record["config"]["threads"] == 1
    for package in ("torch", "numpy", "scikit-learn", "python", "forwardgrad"):
        assert env[package], package


def test_threads_are_restored_after_a_run(digits, tmp_path):
    before = torch.get_num_threads()
    train(small(epochs=1, threads=1), tmp_path / "run", progress=False, data=digits)
    assert torch.get_num_threads() == before


def test_the_same_command_at_one_thread_is_bit_identical(digits, tmp_path):
    for name in ("a", "b"):
        train(small(guess="wperp", epochs=2, threads=1), tmp_path / name, progress=False,
              data=digits)  # fmt: skip
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")["model"]
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_the_quick_start_command_works_twice(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    argv = ["train", *TINY, "--epochs", "1"]
    assert main(argv) == 0
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert "runs/digits-wperp-seed0 already holds a run; this one goes to" in captured.err
    for name in ("digits-wperp-seed0", "digits-wperp-seed0-2"):
        summary = json.loads((tmp_path / "runs" / name / "summary.json").read_text())
        assert summary["status"] == "completed"


def test_train_help_groups_flags_and_shows_examples_and_constraints(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = capsys.readouterr().out
    for title in ("data:", "model:", "estimator", "optimizer:", "schedule (", "run ("):
        assert title in text, title
    assert "examples:" in text and "forwardgrad train --epochs 50" in text
    assert "--rank full and --bottom true need --solver svd" in text
    assert "wperp: --rank --solver" in text


def test_checkpoints_load_with_weights_only_for_every_optimizer(digits, tmp_path):
    for name in ("adamw", "adam", "sgd", "stable-adamw"):
        out = tmp_path / name
        train(small(optimizer=name, epochs=1), out, progress=False, data=digits)
        state = torch.load(out / "checkpoint.pt", weights_only=True)
        assert state["config"]["optimizer"] == name
        train(None, out, resume=True, progress=False, data=digits, epochs=2)


def test_a_checkpoint_that_is_not_a_dict_of_states_is_refused(tmp_path):
    torch.save([1, 2, 3], tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="holds a list, not a dict"):
        load_checkpoint(tmp_path / "checkpoint.pt")
    torch.save({"model": {}}, tmp_path / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="lacks optimizer"):
        load_checkpoint(tmp_path / "checkpoint.pt", require=("model", "optimizer"))


def test_reproduce_checkpoint_readers_refuse_a_malicious_file(digits, tmp_path):
    from forwardgrad.training.measured import model_at
    from forwardgrad.training.train import checkpoint_model

    class Payload:
        def __reduce__(self):
            return (os.system, ("touch " + str(tmp_path / "RAN"),))

    cfg = small()
    (tmp_path / "run").mkdir()
    torch.save({"model": Payload(), "epoch": 1}, tmp_path / "run" / "checkpoint.pt")
    with pytest.raises(CheckpointError, match="not loaded"):
        model_at(cfg, tmp_path / "run", digits, 1)  # how the experiments read their runs
    with pytest.raises(CheckpointError, match="not loaded"):
        checkpoint_model(cfg, digits, tmp_path / "run" / "checkpoint.pt")
    assert not (tmp_path / "RAN").exists()


def test_resume_after_ctrl_c_mid_epoch_is_bit_identical(digits, tmp_path, monkeypatch):
    cfg = small(guess="activation", epochs=4, threads=1)
    straight = train(cfg, tmp_path / "a", progress=False, data=digits)
    real_step = fg.Estimator.step
    calls = {"n": 0}

    def step(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 10:  # in epoch 3 (4 steps per epoch), after the checkpoint of epoch 2
            raise KeyboardInterrupt
        return real_step(self, *a, **k)

    monkeypatch.setattr(fg.Estimator, "step", step)
    with pytest.raises(RunInterrupted):
        train(cfg, tmp_path / "b", progress=False, data=digits)
    monkeypatch.setattr(fg.Estimator, "step", real_step)
    resumed = train(None, tmp_path / "b", resume=True, progress=False, data=digits)
    a = load_checkpoint(tmp_path / "a" / "checkpoint.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert a["step"] == b["step"] == 16
    rows = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in read_jsonl(d / "metrics.jsonl")]
        for d in (tmp_path / "a", tmp_path / "b")
    ]
    assert rows[0] == rows[1] and len(rows[0]) == 4
    assert straight.summary["final"]["train_loss"] == resumed.summary["final"]["train_loss"]
