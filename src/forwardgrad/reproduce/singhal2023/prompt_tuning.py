"""What the prompt-tuning experiment (``guess-prompt``) is made of: the class subsets a model is
pre-trained and tuned on, the estimator of each method, and the peak memory of one tuning step,
measured in a fresh process per method as ``forwardgrad bench`` measures it.

Run as ``python -m forwardgrad.reproduce.singhal2023.prompt_tuning --memory-worker JOB`` only by
:func:`step_peak_memory`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ...bench.measure import _MALLOC_ENV, _proc_status_kib
from ...data import Dataset
from ...estimation import Estimator, cross_entropy_per_example
from ...io import save_torch
from ...training.config import TrainConfig
from ...training.train import EstimatorFactory, build_estimator, build_model
from .estimators import PROMPT_LAWS, prompt_estimator

# The guesses of the prompt tokens that are no registered guess: spec -> PromptTokenGuess law.
PROMPT_PROBES = {name: law for law, name in PROMPT_LAWS.items()}


def class_subset(data: Dataset, classes: Sequence[int]) -> Dataset:
    """The examples of ``data`` whose label is in ``range(*classes)``, relabelled from 0 (the
    standardisation, computed on every class, is kept)."""
    low, high = classes

    def pick(x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        keep = (y >= low) & (y < high)
        return x[keep], y[keep] - low

    x_train, y_train = pick(data.x_train, data.y_train)
    x_test, y_test = pick(data.x_test, data.y_test)
    return dataclasses.replace(
        data,
        name=f"{data.name}[{low}-{high - 1}]",
        x_train=x_train,
        y_train=y_train,
        x_test=x_test,
        y_test=y_test,
        num_classes=high - low,
    )


def estimator_factory(method: str) -> EstimatorFactory | None:
    """The factory of a prompt probe (None for a registered guess: ``train()``'s own)."""
    law = PROMPT_PROBES.get(method)
    if law is None:
        return None

    def factory(cfg: TrainConfig, model: nn.Module) -> Estimator:
        return prompt_estimator(model, law, cfg.seed, cfg.tangents)

    return factory


def method_estimator(cfg: TrainConfig, model: nn.Module) -> Estimator:
    """The estimator ``train()`` builds for ``cfg.guess`` (a prompt probe or a registered
    guess)."""
    return (estimator_factory(cfg.guess) or build_estimator)(cfg, model)


# ------------------------------------------------------------------------------- peak memory


def step_peak_memory(
    configs: Sequence[TrainConfig], batch_file: Path, num_classes: int
) -> list[dict[str, Any]]:
    """Peak memory of one training step of each config (its guess, ``backprop`` included) on
    the batch saved in ``batch_file`` (``{"x", "y"}``, :func:`save_batch`), one after another
    in one fresh Python process.

    Each is the step's peak resident set above the resident size before it, after a warm-up
    step, every ``.grad`` allocated (Linux ``VmHWM``), with the allocator settings of
    ``forwardgrad.bench``, which return freed memory so that the resident size follows live
    memory. One config per call measures each method in a process of its own, as the bench
    does; several share the start-up cost (the smoke budget)."""
    job = json.dumps(
        {
            "configs": [cfg.to_dict() for cfg in configs],
            "batch_file": str(batch_file),
            "num_classes": num_classes,
        }
    )
    proc = subprocess.run(
        [sys.executable, "-m", __name__, "--memory-worker", job],
        capture_output=True,
        text=True,
        env={**os.environ, **_MALLOC_ENV, "PYTHONDONTWRITEBYTECODE": "1"},
    )
    if proc.returncode != 0:
        guesses = [cfg.guess for cfg in configs]
        raise RuntimeError(f"memory measurement of {guesses} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def save_batch(path: Path, data: Dataset, size: int) -> Path:
    """The first ``size`` training examples (model inputs and labels) in ``path``, so that the
    measuring process needs no dataset of its own."""
    save_torch(path, {"x": data.features(data.x_train[:size]), "y": data.y_train[:size]})
    return path


def _training_step(cfg: TrainConfig, model: nn.Module, x: Tensor, y: Tensor) -> Callable:
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    if cfg.guess == "backprop":  # a plain backward pass through the frozen model
        return lambda: cross_entropy_per_example(model(x), y).mean().backward()
    estimator = method_estimator(cfg, model)
    return lambda: estimator.step(x, y)


def _measure_here(cfg: TrainConfig, x: Tensor, y: Tensor, num_classes: int) -> dict[str, Any]:
    torch.set_num_threads(cfg.threads or 1)
    # build_model reads only the example shape and the class count of its dataset
    shape_of = Dataset("batch", x, y, x[:1], y[:1], num_classes, layout="image")
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, shape_of)
    step = _training_step(cfg, model, x, y)
    step()  # warm-up: lazily created buffers and thread pools are not the step's memory
    before = _proc_status_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step()
    peak = _proc_status_kib("VmHWM") - before
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return {"peak_mb": peak / 1024, "params_mb": params / 2**20, "batch": len(x)}


def _memory_worker(job: str) -> None:
    spec = json.loads(job)
    batch = torch.load(spec["batch_file"], map_location="cpu", weights_only=True)
    got = []
    for fields in spec["configs"]:
        cfg = TrainConfig(**fields)
        got.append(_measure_here(cfg, batch["x"], batch["y"], spec["num_classes"]))
    print(json.dumps(got))


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--memory-worker":
        _memory_worker(sys.argv[2])
    else:
        print("usage: an internal entry point of guess-prompt", file=sys.stderr)
        sys.exit(2)
