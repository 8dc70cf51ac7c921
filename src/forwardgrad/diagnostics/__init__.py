"""Measurements of gradient estimates against the true gradient (the backprop oracle).

Everything here reads one batch and returns plain floats, lists and dicts (JSON-serialisable).
Only the oracle (:func:`activity_gradients`, :func:`weight_gradients`, in ``core/oracle.py``)
runs a backward pass; estimators are only ever called through their own forward-mode API
(``estimate`` / ``estimate_activity``). Layers are the modules owning trained parameters (an
MLP's Linear layers), activity rows are site calls, both numbered from 0.

* ``agreement``: cosine(ĝ, g) and relative norm ``||ĝ|| / ||g||`` per parameter tensor, per
  layer and over all parameters;
* ``bias_variance``: bias and variance over many draws on the same batch, as the W̃⊥ paper
  defines them (its Eqs. 17-18), in activity space per site call or in weight space per layer;
* ``covariance``: ``||E[u u^T] - I||_F`` of a guess's tangents per site call, from draws and in
  closed form for the guesses whose law is known;
* ``spectra``: overlap of the true activity gradient with W̃'s top-k right singular subspace
  (Eq. 19), effective ranks (Roy & Vetterli 2007), singular values of downstream Jacobians;
* ``one_step``: 1-step effectiveness (Singhal et al. 2023);
* ``probe``: the cheap ones (and, on request, the expensive ones) for a training callback.
"""

from ..core.oracle import activity_gradients, weight_gradients
from .agreement import (
    agreement,
    cosine_similarity,
    gradient_agreement,
    parameter_groups,
    relative_norm,
)
from .bias_variance import bias_variance
from .contexts import site_contexts
from .covariance import (
    MAX_COVARIANCE_WIDTH,
    closed_form_covariance_factor,
    covariance_bias,
    covariance_distance,
    factor_covariance_distance,
    tangent_covariance,
    tangent_second_moments,
)
from .one_step import DEFAULT_STEP_SIZES, one_step_effectiveness
from .probe import ESTIMATOR_EXTRAS, MODEL_EXTRAS, PROBE_EXTRAS, probe, probe_model
from .spectra import (
    effective_rank,
    effective_ranks,
    jacobian_spectra,
    overlap_curves,
    subspace_overlap,
    weight_effective_ranks,
)

__all__ = [
    "DEFAULT_STEP_SIZES",
    "ESTIMATOR_EXTRAS",
    "MAX_COVARIANCE_WIDTH",
    "MODEL_EXTRAS",
    "PROBE_EXTRAS",
    "activity_gradients",
    "agreement",
    "bias_variance",
    "closed_form_covariance_factor",
    "cosine_similarity",
    "covariance_bias",
    "covariance_distance",
    "effective_rank",
    "effective_ranks",
    "factor_covariance_distance",
    "gradient_agreement",
    "jacobian_spectra",
    "one_step_effectiveness",
    "overlap_curves",
    "parameter_groups",
    "probe",
    "probe_model",
    "relative_norm",
    "site_contexts",
    "subspace_overlap",
    "tangent_covariance",
    "tangent_second_moments",
    "weight_effective_ranks",
    "weight_gradients",
]
