"""Flügel et al. 2024, *Beyond Backpropagation: Optimization with Multi-Tangent Forward
Gradients*: the reproductions, one module per figure or section.

* :mod:`.fig3_quality` (``tangents-quality``) and :mod:`.fig5_angle` (``tangents-angle``):
  approximation quality of k tangents, closed-form (:mod:`.simulation`, :mod:`.expected_cosine`);
* :mod:`.fig4_functions` (``tangents-functions``): gradient descent on test functions;
* :mod:`.mlp` (``tangents-mlp``, §4.4) and :mod:`.sota` (``tangents-sota``, §4.5): training
  networks;
* :mod:`.common`: what these share; ``data/*.json``: the authors' published numbers.

Nothing is imported here: ``forwardgrad.reproduce`` imports each experiment module in the order
the experiments are listed.
"""
