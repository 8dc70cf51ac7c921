"""Every bad input is a clear error: exit code 2 (or a named exception), a message naming the bad
value and what is allowed, no traceback, and nothing written or lost.

One table, one row per case; each row runs the command line in a fresh folder (holding a copy of
a finished run where the case needs one) and compares the folder before and after.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import torch

from forwardgrad.cli import main

TINY = ["--dataset", "digits", "--depth", "1", "--width", "8", "--epochs", "1", "--no-progress"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A one-epoch run of W~perp on digits, copied into each case that needs one."""
    run = tmp_path_factory.mktemp("finished") / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    return run


def tree(root: Path) -> dict[str, str]:
    """Every file below ``root`` (hidden ones included) and a hash of its bytes."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# ------------------------------------------------------------------------- case setups


def _edit_config(key: str, value) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        path = root / "run" / "config.json"
        record = json.loads(path.read_text())
        record["config"][key] = value
        path.write_text(json.dumps(record))

    return setup


def _write_checkpoint(data: bytes, snapshot: bool = False) -> Callable[[Path], None]:
    def setup(root: Path) -> None:
        ckpt = root / "run" / "checkpoint.pt"
        if snapshot:
            shutil.copy(ckpt, root / "run" / "checkpoint-epoch1.pt")
        ckpt.write_bytes(data)

    return setup


class _Payload:
    """Unpickling this runs code: it writes the file ``marker``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').write('ran')",))


def _malicious_checkpoint(root: Path) -> None:
    torch.save({"model": _Payload(root / "PAYLOAD_RAN")}, root / "run" / "checkpoint.pt")


def _only_config_of_another_run(root: Path) -> None:
    (root / "other").mkdir()
    (root / "other" / "config.json").write_text('{"config": {"guess": "wt"}}\n')


def _lock_run_folder(root: Path, monkeypatch) -> None:
    from forwardgrad.training.runfolder import RunLock

    lock = RunLock(root / "run")
    lock.acquire()  # as another process training there would hold it
    monkeypatch.setattr("forwardgrad.training.runfolder._holder", lambda path: "pid 1 on host")
    _HELD.append(lock)


_HELD: list = []


def _file_named_out(root: Path) -> None:
    (root / "afile").write_text("not a folder\n")


def _unwritable(root: Path, monkeypatch) -> None:
    # The tests may run as root, who can write anywhere: stand in for a read-only folder.
    (root / "ro").mkdir()
    real = __import__("os").access
    monkeypatch.setattr(
        "forwardgrad.training.runfolder.os.access",
        lambda p, mode: False if Path(p).name == "ro" else real(p, mode),
    )
    monkeypatch.setattr(
        "forwardgrad.training.train.load_data",
        lambda cfg: pytest.fail("data loaded before the check"),
    )


def _little_memory(root: Path, monkeypatch) -> None:
    monkeypatch.setattr("forwardgrad.training.train.available_memory_bytes", lambda device: 2**30)


def _no_cuda(root: Path, monkeypatch) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


# ------------------------------------------------------------------------------- the table


@dataclass
class Case:
    id: str
    argv: list[str]
    messages: list[str]  # every one must appear in stderr
    code: int = 2
    needs_run: bool = False
    setup: Callable[[Path], None] | None = None
    patch: Callable | None = None  # (root, monkeypatch) -> None
    absent: list[str] = field(default_factory=list)  # paths that must not exist afterwards


RUN = ["--out", "run"]
CASES = [
    # --- security
    Case(
        "malicious-checkpoint-resume",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["run/checkpoint.pt", "not loaded", "could run code"],
        needs_run=True,
        setup=_malicious_checkpoint,
        absent=["PAYLOAD_RAN"],
    ),
    Case(
        "malicious-checkpoint-probe",
        ["probe", "run", "--guess", "wt"],
        ["run/checkpoint.pt", "not loaded"],
        needs_run=True,
        setup=_malicious_checkpoint,
        absent=["PAYLOAD_RAN"],
    ),
    # --- losing or mixing data
    Case(
        "two-runs-one-folder",
        ["train", *TINY, *RUN],
        ["run is in use by another forwardgrad process", "pid 1 on host"],
        needs_run=True,
        patch=_lock_run_folder,
    ),
    Case(
        "compare-duplicate-guesses",
        ["compare", *TINY, "--guesses", "wt,wt", "--jobs", "2", "--out", "cmp"],
        ["'wt' twice", "give each guess once"],
        absent=["cmp"],
    ),
    Case(
        "compare-same-config-twice",
        ["compare", *TINY, "--guesses", "downstream,downstream:layers=1", "--out", "cmp"],
        ["same configuration"],
        absent=["cmp"],
    ),
    Case(
        "folder-with-another-runs-config",
        ["train", *TINY, "--out", "other"],
        ["other already holds a run (config.json)", "never finished an epoch"],
        setup=_only_config_of_another_run,
    ),
    Case(
        "resume-with-other-settings",
        ["train", "--resume", "run", "--lr", "0.5", "--guess", "activation", "--no-progress"],
        ["--lr 0.5", "--guess 'activation'", "only --epochs", "start a new run"],
        needs_run=True,
    ),
    Case(
        "resume-with-other-config-file",
        ["train", "--resume", "run", "--config", "other.toml", "--no-progress"],
        ["--width 16 (the run has 8)"],
        needs_run=True,
        setup=lambda root: (root / "other.toml").write_text("width = 16\n"),
    ),
    Case(
        "resume-after-editing-the-guess",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["config.json and checkpoint.pt disagree on guess", "'wt' in config.json"],
        needs_run=True,
        setup=_edit_config("guess", "wt"),
    ),
    Case(
        "resume-after-editing-the-optimizer",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["disagree on optimizer", "'sgd' in config.json"],
        needs_run=True,
        setup=_edit_config("optimizer", "sgd"),
    ),
    Case(
        "resume-out-elsewhere",
        ["train", "--resume", "run", "--out", "elsewhere", "--no-progress"],
        ["continues in its own folder", "drop --out"],
        needs_run=True,
        absent=["elsewhere"],
    ),
    Case(
        "truncated-checkpoint",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["run/checkpoint.pt cannot be read as a checkpoint", "truncated"],
        needs_run=True,
        setup=lambda root: _write_checkpoint((root / "run" / "checkpoint.pt").read_bytes()[:300])(
            root
        ),
    ),
    Case(
        "random-checkpoint-with-snapshot",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["run/checkpoint.pt cannot be read", "checkpoint-epoch1.pt", "resume from epoch 1"],
        needs_run=True,
        setup=_write_checkpoint(bytes(range(256)) * 8, snapshot=True),
    ),
    Case(
        "empty-checkpoint",
        ["train", "--resume", "run", "--epochs", "2", "--no-progress"],
        ["run/checkpoint.pt cannot be read", "empty"],
        needs_run=True,
        setup=_write_checkpoint(b""),
    ),
    Case(
        "empty-checkpoint-probe",
        ["probe", "run"],
        ["run/checkpoint.pt cannot be read", "empty"],
        needs_run=True,
        setup=_write_checkpoint(b""),
    ),
    Case(
        "unknown-sampler",
        ["train", *TINY, "--guess", "activation", "--sampler", "frog", *RUN],
        ["unknown sampler 'frog'", "normal, rademacher, orthonormal"],
        absent=["run"],
    ),
    Case(
        "bad-angle",
        ["train", *TINY, "--guess", "activation", "--sampler", "angle", "--angle", "200", *RUN],
        ["angle must be a number of degrees in [0, 180]; got 200.0"],
        absent=["run"],
    ),
    Case(
        "bad-max-length",
        [
            "train",
            *TINY,
            "--guess",
            "activation",
            "--sampler",
            "varying-length",
            "--max-length",
            "0.5",
            *RUN,
        ],
        ["max_length must be a finite number >= 1; got 0.5"],
        absent=["run"],
    ),
    Case(
        "error-only-a-step-meets",
        ["train", *TINY, "--guess", "activation", "--sampler", "orthonormal", "--tangents", "100"],
        ["orthonormal", "at most n = 18"],
        absent=["runs"],
    ),
    # --- saying the wrong thing
    Case("lr-inf", ["train", *TINY, "--lr", "inf", *RUN], ["lr must be a finite number > 0"]),
    Case("lr-nan", ["train", *TINY, "--lr", "nan", *RUN], ["lr must be a finite number > 0"]),
    Case(
        "compare-seeds-0",
        ["compare", *TINY, "--guesses", "wt", "--seeds", "0", "--out", "cmp"],
        ["--seeds must be an integer >= 1 (runs per guess); got 0"],
        absent=["cmp"],
    ),
    Case(
        "compare-seeds-negative",
        ["compare", *TINY, "--guesses", "wt", "--seeds", "-2", "--out", "cmp"],
        ["--seeds must be an integer >= 1 (runs per guess); got -2"],
        absent=["cmp"],
    ),
    Case(
        "compare-unknown-guess-after-a-good-one",
        ["compare", *TINY, "--guesses", "wt,frog", "--out", "cmp"],
        ["unknown guess 'frog'", "wt, wperp"],
        absent=["cmp"],
    ),
    Case(
        "compare-bad-option-after-a-good-guess",
        ["compare", *TINY, "--guesses", "wt,wperp:rank=0", "--out", "cmp"],
        ["rank must be >= 1 or 'full'; got 0"],
        absent=["cmp"],
    ),
    Case(
        "compare-jobs-0",
        ["compare", *TINY, "--guesses", "wt", "--jobs", "0", "--out", "cmp"],
        ["--jobs must be an integer >= 1 (parallel runs); got 0"],
        absent=["cmp"],
    ),
    Case(
        "compare-spec-sets-seed",
        ["compare", *TINY, "--guesses", "wt:seed=5", "--out", "cmp"],
        ["'wt:seed=5' may not set 'seed'", "--seed/--seeds"],
        absent=["cmp"],
    ),
    Case(
        "compare-shared-option-no-guess-reads",
        ["compare", *TINY, "--guesses", "wt,activation", "--rank", "3", "--out", "cmp"],
        ["--rank 3", "read by none of the guesses"],
        absent=["cmp"],
    ),
    Case(
        "options-the-guess-ignores",
        ["train", *TINY, "--guess", "wt", "--rank", "3", "--solver", "svd", *RUN],
        ["rank = 3, solver = 'svd' would be ignored", "guess 'wt' reads only fallback, not rank"],
        absent=["run"],
    ),
    Case(
        "angle-without-angle-sampler",
        ["train", *TINY, "--guess", "activation", "--angle", "30", *RUN],
        ["angle applies to sampler 'angle' only"],
        absent=["run"],
    ),
    Case(
        "rank-full-needs-svd",
        ["train", *TINY, "--rank", "full", *RUN],
        ["rank='full'", "needs solver='svd'"],
        absent=["run"],
    ),
    Case(
        "abbreviated-flag",
        ["train", *TINY, "--epoch", "3", *RUN],
        ["unrecognized arguments: --epoch 3", "did you mean --epochs?"],
        absent=["run"],
    ),
    Case(
        "out-under-a-file",
        ["train", *TINY, "--out", "afile/run"],
        ["afile is a file, not a folder"],
        setup=_file_named_out,
    ),
    Case(
        "out-not-writable",
        ["train", *TINY, "--out", "ro/run"],
        ["ro is not writable"],
        patch=_unwritable,
    ),
    Case(
        "cuda-on-a-cpu-build",
        ["train", *TINY, "--device", "cuda", *RUN],
        ["device 'cuda'", "sees no CUDA GPU", "--device cpu"],
        patch=_no_cuda,
        absent=["run"],
    ),
    Case(
        "not-a-device",
        ["train", *TINY, "--device", "gpu0", *RUN],
        ["device 'gpu0' is not a torch device"],
        absent=["run"],
    ),
    Case(
        "seed-2-to-the-70",
        ["train", *TINY, "--seed", str(2**70), *RUN],
        ["seed must be an integer from 0 to 2147483647"],
        absent=["run"],
    ),
    Case(
        "seed-scikit-learn-refuses",
        ["train", *TINY, "--seed", "-1", *RUN],
        ["seed must be an integer from 0 to 2147483647; got -1"],
        absent=["run"],
    ),
    Case(
        "tangents-100000",
        ["train", *TINY, "--guess", "activation", "--tangents", "100000", *RUN],
        ["a training step needs about", "--tangents", "--chunk-size", "1.0 GB is available"],
        patch=_little_memory,
        absent=["run"],
    ),
    Case(
        "toml-unknown-key",
        ["train", "--config", "bad.toml", *RUN],
        ["unknown config key 'epoch' (did you mean 'epochs'?)"],
        setup=lambda root: (root / "bad.toml").write_text("epoch = 3\n"),
        absent=["run"],
    ),
    Case(
        "toml-binary-file",
        ["train", "--config", "bad.toml", *RUN],
        ["is not valid TOML"],
        setup=lambda root: (root / "bad.toml").write_bytes(b"\xff\xfe\x00junk"),
        absent=["run"],
    ),
    Case(
        "resume-a-folder-without-checkpoint",
        ["train", "--resume", "other", "--no-progress"],
        ["no checkpoint at other/checkpoint.pt", "never finished an epoch"],
        setup=_only_config_of_another_run,
    ),
    Case(
        "plot-nothing-there",
        ["plot", "nowhere"],
        ["no run folder at nowhere"],
    ),
    # --- fine-tuning
    Case(
        "init-from-missing-file",
        ["train", *TINY, "--guess", "activation", "--init-from", "missing.pt", *RUN],
        ["init_from 'missing.pt': no such file"],
        absent=["run"],
    ),
    Case(
        "init-from-another-model",
        ["train", *TINY, "--guess", "activation", "--init-from", "other.pt", *RUN],
        ["init_from 'other.pt' lacks: ['0.weight'"],
        setup=lambda root: torch.save({"w": torch.zeros(1)}, root / "other.pt"),
        absent=["run"],
    ),
    Case(
        "trainable-matches-nothing",
        ["train", *TINY, "--guess", "activation", "--trainable", "head.*", *RUN],
        ["trainable pattern 'head.*' matches nothing; names look like ['0.weight'"],
        absent=["run"],
    ),
    Case(
        "lora-on-no-linear",
        ["train", *TINY, "--guess", "activation", "--lora", "1", *RUN],
        ["lora pattern '1' matches no nn.Linear, only '1' (ReLU)"],
        absent=["run"],
    ),
    Case(
        "prompts-on-a-model-without-them",
        ["train", *TINY, "--guess", "activation", "--prompts", "4", *RUN],
        ["prompts = 4 would be ignored: model 'mlp' reads"],
        absent=["run"],
    ),
]


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_a_clear_error(case, finished_run, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    if case.needs_run:
        shutil.copytree(finished_run, tmp_path / "run")
    if case.setup:
        case.setup(tmp_path)
    if case.patch:
        case.patch(tmp_path, monkeypatch)
    before = tree(tmp_path)
    try:
        try:
            code = main(case.argv)
        except SystemExit as e:  # argparse's own errors
            code = e.code
    finally:
        while _HELD:
            _HELD.pop().release()
    err = capsys.readouterr().err
    assert code == case.code, err
    assert "Traceback" not in err
    for text in case.messages:
        assert text in err, f"{text!r} not in {err!r}"
    after = tree(tmp_path)
    if case.id == "two-runs-one-folder":
        before.pop("run/.lock", None)  # the stand-in holder's lock, released above
    assert after == before, "files were written, changed or lost"
    for name in case.absent:
        assert not (tmp_path / name).exists(), name


def test_the_malicious_checkpoint_would_run_code_with_weights_only_false(tmp_path):
    """The negative control of the malicious-checkpoint cases: the payload is live."""
    (tmp_path / "run").mkdir()
    _malicious_checkpoint(tmp_path)
    torch.load(tmp_path / "run" / "checkpoint.pt", weights_only=False)
    assert (tmp_path / "PAYLOAD_RAN").read_text() == "ran"
