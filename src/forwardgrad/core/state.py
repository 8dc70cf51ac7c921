"""Model state a step must leave as one forward pass would: BatchNorm statistics and dropout.

An estimate may run several passes over the same batch (chunks of tangents, the low-memory
mode's second pass, one pass per site) and re-run single modules for their local VJPs. Two
kinds of model state must not notice:

* **BatchNorm running statistics** are updated once per step, from the batch, as one training
  forward pass would. During the passes every training-mode BatchNorm runs on batch statistics
  with its running buffers detached (``torch.func`` transforms cannot update them in place, and
  k tangents must not update them k times); the first pass records each call's batch mean and
  variance, and :meth:`FrozenBatchNorm.commit` applies PyTorch's own update with them.
* **Random draws** (dropout): every pass replays the random state the first pass started from,
  so all passes, and so all k tangents, see the same dropout masks; afterwards the generator
  stands where one pass would have left it.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm


def _batch_norm_modules(model: nn.Module) -> list[_BatchNorm]:
    return [
        m
        for m in model.modules()
        if isinstance(m, _BatchNorm)
        and m.training
        and m.track_running_stats
        and m.running_mean is not None
    ]


class FrozenBatchNorm:
    """Detach the running statistics of training-mode BatchNorms; update them once at the end."""

    def __init__(self, model: nn.Module) -> None:
        self.modules = _batch_norm_modules(model)
        self._saved: list[tuple[Tensor, Tensor, Tensor | None]] = []
        self._stats: list[list[tuple[Tensor, Tensor, int]]] = [[] for _ in self.modules]
        self._hooks: list = []

    def __enter__(self) -> FrozenBatchNorm:
        for m in self.modules:
            self._saved.append((m.running_mean, m.running_var, m.num_batches_tracked))
            m.running_mean = m.running_var = m.num_batches_tracked = None
        return self

    def record(self) -> None:
        """Record every call's batch statistics during the next pass (until :meth:`stop`)."""
        for i, m in enumerate(self.modules):
            self._hooks.append(m.register_forward_pre_hook(self._recorder(i), prepend=True))

    def stop(self) -> None:
        for h in self._hooks:
            h.remove()
        self._hooks.clear()

    def _recorder(self, i: int):
        def hook(module: _BatchNorm, args: tuple) -> None:
            import torch.autograd.forward_ad as fwAD

            x = fwAD.unpack_dual(args[0]).primal.detach()
            dims = [d for d in range(x.dim()) if d != 1]
            n = x.numel() // x.shape[1]
            var, mean = torch.var_mean(x, dim=dims, correction=0)
            self._stats[i].append((mean, var, n))

        return hook

    def __exit__(self, *exc) -> None:
        self.stop()
        for m, (mean, var, count) in zip(self.modules, self._saved):
            m.running_mean, m.running_var, m.num_batches_tracked = mean, var, count
        self._saved.clear()

    def commit(self) -> None:
        """Apply PyTorch's running-statistics update for every recorded call (once per step)."""
        with torch.no_grad():
            for m, calls in zip(self.modules, self._stats):
                for mean, var, n in calls:
                    if m.num_batches_tracked is not None:
                        m.num_batches_tracked.add_(1)
                    if m.momentum is None:  # cumulative moving average
                        factor = 1.0 / float(m.num_batches_tracked)
                    else:
                        factor = m.momentum
                    unbiased = var * (n / (n - 1)) if n > 1 else var
                    m.running_mean.mul_(1 - factor).add_(
                        mean.to(m.running_mean.dtype), alpha=factor
                    )
                    m.running_var.mul_(1 - factor).add_(
                        unbiased.to(m.running_var.dtype), alpha=factor
                    )
        self._stats = [[] for _ in self.modules]


def get_random_state(device: torch.device) -> tuple:
    """The global random state that dropout draws from: CPU, and ``device`` if it is CUDA."""
    gpu = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return device, torch.get_rng_state(), gpu


def set_random_state(state: tuple) -> None:
    device, cpu, gpu = state
    torch.set_rng_state(cpu)
    if gpu is not None:
        torch.cuda.set_rng_state(gpu, device)


class RandomReplay:
    """Give every pass of a step the same random stream (CPU and the model's CUDA device)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self._start = get_random_state(device)
        self._after_first = None

    def _get(self):
        return get_random_state(self.device)

    def _set(self, state) -> None:
        set_random_state(state)

    def before_pass(self) -> None:
        if self._after_first is None:
            return  # the first pass draws from where the generator stands
        self._set(self._start)

    def after_pass(self) -> None:
        if self._after_first is None:
            self._after_first = self._get()

    def finish(self) -> None:
        if self._after_first is not None:
            self._set(self._after_first)


@contextmanager
def step_state(model: nn.Module, device: torch.device):
    """One step's BatchNorm and random-state bookkeeping; commits the statistics on success."""
    bn = FrozenBatchNorm(model)
    rng = RandomReplay(device)
    with bn:
        yield bn, rng
    rng.finish()
    bn.commit()


@contextmanager
def untouched(model: nn.Module, device: torch.device):
    """Run something (a trace, a check) that must leave no trace: BatchNorm buffers and random
    state are restored afterwards."""
    buffers = {name: b.clone() for name, b in model.named_buffers()}
    rng = RandomReplay(device)
    try:
        with FrozenBatchNorm(model):
            yield
    finally:
        rng._set(rng._start)
        for name, b in model.named_buffers():
            if name in buffers:
                b.copy_(buffers[name])
