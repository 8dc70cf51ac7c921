"""Step time and peak memory of every estimator, side by side with a backprop step.

Everything that is compared is measured in one run: the methods of a scenario share one model
and one batch, and their steps are timed interleaved (round-robin, order rotated every round),
so a slow spell of the machine hits all of them alike. Reported are medians and ratios:

* ``x backprop``: step time (or peak memory) over a backprop step's on the same model and batch;
* ``x limit``: that time ratio over the ratio forward mode costs in principle, counted in forward
  passes: backprop ~3 (forward + backward), activity-space JVPs with k tangents sharing one
  primal ~1 + k, weight-space JVPs ~1 + 2k (the ``V x`` products), the frog-style peer ~2k + 2.
  1.0 means "as fast as the cost model allows"; the model ignores the cost of forming structured
  tangents (W~perp's subspaces) and of the local gradient rules.

Memory on the CPU is measured in a fresh process per (scenario, method): the step's peak resident
set size above the resident size just before it, after one warm-up step and with every ``.grad``
already allocated (Linux ``VmHWM``, reset through ``/proc/self/clear_refs``). On a GPU it is
``torch.cuda.max_memory_allocated`` above the allocation before the step.

Modules: ``scenarios`` (methods, scenarios, targets, presets), ``peers`` (the frog-style loop),
``measure`` (timing and memory), ``report`` (running a preset, JSON and Markdown).
"""

from .measure import measure_memory, memory_available, time_scenario
from .report import machine, run_bench, to_markdown, write_results
from .scenarios import (
    BACKPROP,
    GRID_DEFAULTS,
    PRESET_NAMES,
    QUICK,
    Method,
    Preset,
    Scenario,
    Target,
    conv_preset,
    finetune_preset,
    grid_preset,
    models_preset,
    targets_preset,
)

__all__ = [
    "BACKPROP",
    "GRID_DEFAULTS",
    "PRESET_NAMES",
    "QUICK",
    "Method",
    "Preset",
    "Scenario",
    "Target",
    "conv_preset",
    "finetune_preset",
    "grid_preset",
    "machine",
    "measure_memory",
    "memory_available",
    "models_preset",
    "run_bench",
    "targets_preset",
    "time_scenario",
    "to_markdown",
    "write_results",
]
