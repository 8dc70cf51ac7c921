"""Training loop: one loop for every estimator, with evaluation, checkpoints and metric logs.

A run directory holds ``config.json`` (the full config, seed and versions), ``metrics.jsonl``
(one line per epoch), ``checkpoint.pt`` (the last good state, for ``--resume``) and
``summary.json``; with ``probe_every`` N > 0 also ``probes.jsonl`` (the gradient estimate against
backprop on a fixed batch of the training set, at epoch 0 and every N epochs). Every file is
written atomically.
"""

from __future__ import annotations

import dataclasses
import math
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from . import __version__
from .config import ConfigError, TrainConfig, config_from_mapping
from .data import Dataset, load_dataset
from .diagnostics import probe
from .estimation import Estimator, cross_entropy_per_example
from .io import read_jsonl, save_torch, write_json, write_jsonl
from .models import mlp
from .optim import make_optimizer


class TrainingDiverged(RuntimeError):
    """The loss or the gradient estimate became NaN or infinite."""

    def __init__(self, epoch: int, step: int, what: str) -> None:
        super().__init__(
            f"{what} is not finite at epoch {epoch}, step {step}; training stopped and the last "
            "good checkpoint was kept"
        )
        self.epoch, self.step, self.what = epoch, step, what


@dataclass
class RunResult:
    out_dir: Path
    summary: dict


def build_model(cfg: TrainConfig, data: Dataset) -> nn.Sequential:
    model = mlp(
        data.num_features, data.num_classes, depth=cfg.depth, width=cfg.width, bias=cfg.bias
    )
    if len(data.input_shape) > 1:
        model = nn.Sequential(nn.Flatten(), *model)
    return model


def build_estimator(cfg: TrainConfig, model: nn.Module) -> Estimator:
    return Estimator(
        model,
        cfg.guess,
        tangents=cfg.tangents,
        aggregate=cfg.aggregate,
        scope=cfg.scope,
        jvp=cfg.jvp,
        seed=cfg.seed,
        chunk_size=cfg.chunk_size,
        low_memory=cfg.low_memory,
        **cfg.guess_options(),
    )


# Offsets from the run's seed for the probe's own random streams, so probing never draws from
# the training run's generators and a run with probes follows the same trajectory as one without.
PROBE_SEED_OFFSET = 3


def probe_batch(
    data: Dataset, size: int, seed: int, device: torch.device | str = "cpu"
) -> tuple[Tensor, Tensor]:
    """A fixed batch of ``size`` training examples (features, labels), chosen by ``seed``."""
    n = len(data.x_train)
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(seed + PROBE_SEED_OFFSET))
    pick = pick[: min(size, n)]
    x = data.features(data.x_train[pick]).to(device)
    return x, data.y_train[pick].to(device)


EstimatorFactory = Callable[[TrainConfig, nn.Module], Estimator]
"""``factory(cfg, model) -> Estimator``; :func:`build_estimator` is the default."""


def build_probe_estimator(
    cfg: TrainConfig, model: nn.Module, factory: EstimatorFactory | None = None
) -> Estimator:
    """The run's estimator with its own tangent seed, for probes beside training."""
    probe_cfg = dataclasses.replace(cfg, seed=cfg.seed + PROBE_SEED_OFFSET)
    return (factory or build_estimator)(probe_cfg, model)


@torch.no_grad()
def evaluate(
    model: nn.Module, x: Tensor, y: Tensor, batch_size: int = 4096, features=None
) -> tuple[float, float]:
    """Mean cross-entropy and accuracy on (x, y); ``features`` maps raw rows to model inputs."""
    total_loss, correct = 0.0, 0
    for start in range(0, len(x), batch_size):
        xb = x[start : start + batch_size]
        out = model(features(xb) if features is not None else xb)
        yb = y[start : start + batch_size]
        total_loss += float(cross_entropy_per_example(out, yb).sum())
        correct += int((out.argmax(-1) == yb).sum())
    return total_loss / len(x), correct / len(x)


def _all_finite(tensors) -> bool:
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def _environment() -> dict:
    return {
        "forwardgrad": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
    }


def train(
    cfg: TrainConfig,
    out_dir: str | Path,
    resume: bool = False,
    progress: bool = True,
    data: Dataset | None = None,
    epochs: int | None = None,
    estimator_factory: EstimatorFactory | None = None,
) -> RunResult:
    """Train with ``cfg`` into ``out_dir``.

    With ``resume``, continue the run saved in ``out_dir`` from its checkpoint with its saved
    config (``cfg`` is ignored); ``epochs`` may extend it. ``estimator_factory`` builds the
    training (and probe) estimator instead of :func:`build_estimator`, for estimators that are
    no registered guess; such a run must be resumed with the same factory.
    """
    out = Path(out_dir)
    ckpt_path = out / "checkpoint.pt"
    if resume:
        if not ckpt_path.exists():
            raise FileNotFoundError(f"cannot resume: no checkpoint at {ckpt_path}")
        saved = read_config(out)
        if epochs is not None:
            saved["epochs"] = epochs
        cfg = config_from_mapping(saved, TrainConfig())
    elif (out / "metrics.jsonl").exists() or ckpt_path.exists():
        raise FileExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out"
        )
    cfg.validate()
    device = torch.device(cfg.device)
    if data is None:
        options: dict = {"data_dir": cfg.data_dir} if cfg.data_dir else {}
        if cfg.augment:
            options["augment"] = True
        data = load_dataset(cfg.dataset, seed=cfg.seed, **options)
    x_train, y_train = data.x_train.to(device), data.y_train.to(device)
    x_test, y_test = data.x_test.to(device), data.y_test.to(device)

    torch.manual_seed(cfg.seed)
    model = build_model(cfg, data).to(device)
    estimator = (estimator_factory or build_estimator)(cfg, model)
    optimizer = make_optimizer(
        cfg.optimizer, model.parameters(), cfg.lr, cfg.weight_decay, cfg.momentum
    )
    shuffle = torch.Generator().manual_seed(cfg.seed + 1)
    augment = torch.Generator().manual_seed(cfg.seed + 2)  # on-the-fly augmentation, if any
    probe_estimator = (
        build_probe_estimator(cfg, model, estimator_factory) if cfg.probe_every else None
    )
    if probe_estimator is not None:
        probe_x, probe_y = probe_batch(data, cfg.batch_size, cfg.seed, device)

    def run_probe(epoch: int, step: int) -> None:
        probe_rows.append(
            {"epoch": epoch, "step": step, **probe(model, probe_estimator, probe_x, probe_y)}
        )
        write_jsonl(out / "probes.jsonl", probe_rows)

    rows: list[dict] = []
    probe_rows: list[dict] = []
    start_epoch, step, elapsed = 0, 0, 0.0
    if resume:
        state = torch.load(ckpt_path, map_location=device, weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        estimator.load_state_dict(state["estimator"])
        shuffle.set_state(state["shuffle"])
        if "augment" in state:  # checkpoints from before augmentation existed lack it
            augment.set_state(state["augment"])
        start_epoch, step, elapsed = state["epoch"], state["step"], state["elapsed"]
        rows = [r for r in read_jsonl(out / "metrics.jsonl") if r["epoch"] <= start_epoch]
        if probe_estimator is not None:
            if "probe_estimator" in state:
                probe_estimator.load_state_dict(state["probe_estimator"])
            probe_rows = [r for r in read_jsonl(out / "probes.jsonl") if r["epoch"] <= start_epoch]
    else:
        write_json(
            out / "config.json",
            {
                "config": cfg.to_dict(),
                "seed": cfg.seed,
                "data": data.summary(),
                "environment": _environment(),
            },
        )
        if probe_estimator is not None:
            run_probe(0, 0)  # the starting point of the trajectory

    status, failure = "completed", None
    bar = _progress(
        range(start_epoch, cfg.epochs),
        progress,
        desc=f"{cfg.guess} seed {cfg.seed}",
        initial=start_epoch,
        total=cfg.epochs,
    )
    n = len(x_train)
    try:
        for epoch in bar:
            t0 = time.perf_counter()
            order = torch.randperm(n, generator=shuffle).to(device)
            model.train()
            for start in range(0, n, cfg.batch_size):
                idx = order[start : start + cfg.batch_size]
                loss = estimator.step(data.features(x_train[idx], True, augment), y_train[idx])
                step += 1
                grads = [p.grad for p in model.parameters() if p.grad is not None]
                if not math.isfinite(float(loss)):
                    raise TrainingDiverged(epoch + 1, step, "the loss")
                if not _all_finite(grads):
                    raise TrainingDiverged(epoch + 1, step, "the gradient estimate")
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            seconds = time.perf_counter() - t0
            elapsed += seconds
            model.eval()
            train_loss, train_acc = evaluate(model, x_train, y_train, features=data.features)
            test_loss, test_acc = evaluate(model, x_test, y_test, features=data.features)
            if not math.isfinite(train_loss):
                raise TrainingDiverged(epoch + 1, step, "the training loss")
            rows.append(
                {
                    "epoch": epoch + 1,
                    "step": step,
                    "train_loss": train_loss,
                    "train_acc": train_acc,
                    "test_loss": test_loss,
                    "test_acc": test_acc,
                    "seconds": seconds,
                }
            )
            write_jsonl(out / "metrics.jsonl", rows)
            if probe_estimator is not None and (epoch + 1) % cfg.probe_every == 0:
                run_probe(epoch + 1, step)  # before the checkpoint, which saves its generator
            if (epoch + 1) % cfg.checkpoint_every == 0 or epoch + 1 == cfg.epochs:
                state = {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "estimator": estimator.state_dict(),
                    "shuffle": shuffle.get_state(),
                    "augment": augment.get_state(),
                    "epoch": epoch + 1,
                    "step": step,
                    "elapsed": elapsed,
                }
                if probe_estimator is not None:
                    state["probe_estimator"] = probe_estimator.state_dict()
                save_torch(ckpt_path, state)
            if hasattr(bar, "set_postfix"):
                bar.set_postfix(
                    loss=f"{train_loss:.3f}", train=f"{train_acc:.3f}", test=f"{test_acc:.3f}"
                )
    except TrainingDiverged as e:
        status, failure = (
            "diverged",
            {"epoch": e.epoch, "step": e.step, "what": e.what, "message": str(e)},
        )
    summary = {
        "status": status,
        "guess": cfg.guess,
        "seed": cfg.seed,
        "epochs_completed": rows[-1]["epoch"] if rows else 0,
        "steps": step,
        "train_seconds": elapsed,
        "final": rows[-1] if rows else None,
        "failure": failure,
        "config": cfg.to_dict(),
    }
    write_json(out / "summary.json", summary)
    if failure is not None:
        raise TrainingDiverged(failure["epoch"], failure["step"], failure["what"])
    return RunResult(out, summary)


def read_config(out_dir: str | Path) -> dict:
    import json

    p = Path(out_dir) / "config.json"
    if not p.exists():
        raise ConfigError(f"{p} is missing: {out_dir} is not a forwardgrad run directory")
    try:
        return json.loads(p.read_text())["config"]
    except (json.JSONDecodeError, KeyError) as e:
        raise ConfigError(f"{p} is corrupt ({e}); cannot resume") from None


def _progress(iterable, enabled: bool, **kwargs):
    if not enabled:
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, leave=False, dynamic_ncols=True, **kwargs)
