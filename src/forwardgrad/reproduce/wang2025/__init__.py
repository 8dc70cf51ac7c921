"""Wang, Markou & Campbell 2025 (W̃⊥) on MNIST-1D: Tables 1-5 and Figs. 1-2.

Six experiments share one setting (the paper's §4.1): an MLP with 3 hidden ReLU layers of equal
width and no biases (the paper optimises only the weights; its code never adds the biases),
cross-entropy, AdamW (lr 1e-4, PyTorch's default weight decay 0.01), batch 512, 300 epochs,
one tangent per step. Every training run is a plain :func:`forwardgrad.training.train.train` run
under ``OUT/runs/width<W>/<guess spec>/seed<s>`` (checkpoints included; ``runs/`` is git-ignored); a
finished run is reused when the experiment is run again and an interrupted one resumes from its
checkpoint.

Measurements along a trajectory (Table 2, Table 5, Fig. 1) train in segments: ``train()`` runs
to the next measurement epoch, the checkpoint's model is measured, and the next segment resumes
from that checkpoint, so the trajectory is that of one uninterrupted run. Measurements are
cached beside the run (``measurements-*.json``).

Exact SVD is the reference W̃⊥ solver. It is replaced by the randomized top-k solver where it
cannot run in reasonable time on a CPU: above width 128 everywhere (hours per run at width 256,
about 9 h at width 512 on one thread, from ``wperp-cost``'s timed epoch), and above width 64 in the
many-run Tables 1 and 3 (at width 128 an exact step takes ~0.65 s on 2 cores, ~25 min per 300-epoch
run, which is ~4 h of exact runs for Table 1 and as much again for Table 3). W̃⊥ with k = rank(W̃)
stays exact at every width: for a square full-rank W the row space of W diag(m) is the active
units' coordinates, so it needs no eigendecomposition. Each README says which solver ran where.

One module per table or figure (``table1_rank`` ... ``table5_precond``, ``fig1_overlap``), each
registering its experiment; ``common`` (contenders, budgets, tolerances, settings, the result
every experiment returns), ``training`` (the paper's runs), ``measurements`` (along
trajectories, with :mod:`forwardgrad.training.measured`), ``plots``, and ``published`` (the
paper's numbers, from ``data/*.json``) are what they share.

A seventh, ``wperp_conv`` (``wperp-conv``), has a setting of its own: it carries Fig. 1 and
Table 1's comparison to the library's conv net, the ``cnn`` on MNIST-5k, with exact overlaps at
its conv sites one example at a time (``conv_measurements``).
"""

from . import table1_rank  # noqa: F401  isort: skip
from . import table2_bias  # noqa: F401  isort: skip
from . import table3_width  # noqa: F401  isort: skip
from . import table4_cost  # noqa: F401  isort: skip
from . import table5_precond  # noqa: F401  isort: skip
from . import fig1_overlap  # noqa: F401  isort: skip
from . import wperp_conv  # noqa: F401  isort: skip
