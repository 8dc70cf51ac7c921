"""Singhal et al. 2023, *How to Guess a Gradient*: Fig. 1 table, Table 2, Figs. 2, 4, 5, 7 and
A.5 (Fig. 9).

Six experiments on MLPs trained by :func:`forwardgrad.training.train.train` (through
:func:`forwardgrad.training.compare.compare` where several guesses are trained side by side) and
measured with :mod:`forwardgrad.diagnostics`, one module each:

* ``guess-cosine`` (Fig. 1, :mod:`.fig1_cosine`): cosine and 1-step effectiveness of each guess
  along a backprop trajectory;
* ``guess-mlp`` (Table 2, :mod:`.table2_mlp`): train/test accuracy of every method over
  datasets x (depth, width);
* ``guess-bias`` (Fig. 4, :mod:`.fig4_bias`): cosine of the mean of K guesses, and training with
  a cosine-matched unbiased directional descent, with Adam and with SGD with and without
  momentum;
* ``guess-subspace`` (Fig. 2, right, :mod:`.fig2_subspace`): the activity gradient projected on
  the activations' PCA subspace against a random subspace;
* ``guess-sharpening`` (Fig. 5, :mod:`.fig5_sharpening`): self-sharpening, and Wᵀ with its
  singular values raised to powers;
* ``guess-downstream`` (Fig. 7, :mod:`.fig7_downstream`): 1, 2, 3 downstream layers, and
  Jacobian spectra;

and one on a ViT, by the same ``train()``:

* ``guess-prompt`` (A.5, Fig. 9, :mod:`.fig9_prompt`): prompt tuning of a ViT pre-trained here
  (the paper's pre-trained ViT-B/16 and fine-tuning sets are not available offline), Wᵀ of the
  prompts against directional descent, with peak memory (:mod:`.prompt_tuning`).

The paper's datasets (CIFAR-10/100, SVHN, MNIST) are not available offline; every experiment
runs on the embedded sets (MNIST-5k, a 5000-image MNIST subset, stands in for the image sets) and
says so. The paper's "D-layer MLP" has D weight matrices (its Sec. 3.1, W_1 .. W_k), so it is
:func:`forwardgrad.models.mlp` with ``depth = D - 1`` hidden layers.

Three methods of the paper are not registered guesses, because they exist only as probes of the
phenomenon: the cosine-matched directional descent (it reads the true gradient), Wᵀ with
powered singular values and Wᵀ of a ViT's prompt tokens. They are defined in :mod:`.estimators`
(:class:`CosineMatchedEstimator`, :class:`PoweredWTranspose`, :class:`PromptTokenGuess`) and
trained by the same ``train()``. The paper's published numbers are in ``data/*.json``.
"""

# The experiment modules register themselves on import, in this order.
# isort: off
from .fig1_cosine import run_guess_cosine
from .table2_mlp import run_guess_mlp, table2_mnist
from .fig4_bias import run_guess_bias
from .fig2_subspace import run_guess_subspace, subspace_curves
from .fig5_sharpening import run_guess_sharpening
from .fig7_downstream import hidden_spectra, run_guess_downstream
from .table1_mixer import run_guess_mixer
from .fig9_prompt import run_guess_prompt
from .averaged_guesses import cosine_against_guess_count, guess_counts
from .common import hidden_layers
from .estimators import (
    CosineMatchedEstimator,
    PoweredWTranspose,
    PromptTokenGuess,
    UnitGuess,
    powered_wt_estimator,
    prompt_estimator,
)
from .maths import (
    activity_cosine,
    cosine_matched_direction,
    pca_basis,
    per_example_weight_cosine,
    powered_matrix,
    random_basis,
    spearman,
    subspace_cosine,
)
from .runs import train_with_measurements
# isort: on

__all__ = [
    "CosineMatchedEstimator",
    "PoweredWTranspose",
    "PromptTokenGuess",
    "UnitGuess",
    "activity_cosine",
    "cosine_against_guess_count",
    "cosine_matched_direction",
    "guess_counts",
    "hidden_layers",
    "hidden_spectra",
    "pca_basis",
    "per_example_weight_cosine",
    "powered_matrix",
    "powered_wt_estimator",
    "prompt_estimator",
    "random_basis",
    "run_guess_bias",
    "run_guess_cosine",
    "run_guess_downstream",
    "run_guess_mixer",
    "run_guess_mlp",
    "run_guess_prompt",
    "run_guess_sharpening",
    "run_guess_subspace",
    "spearman",
    "subspace_cosine",
    "subspace_curves",
    "table2_mnist",
    "train_with_measurements",
]
