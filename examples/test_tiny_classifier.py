"""The test a user writes for their model with graphduel's pytest plugin (the ``graphduel`` fixture).

    pytest examples/test_tiny_classifier.py                                   # correctness, fusion, speed
    pytest examples/test_tiny_classifier.py --graphduel-save base.json        # write a baseline (commit it)
    pytest examples/test_tiny_classifier.py --graphduel-baseline base.json    # CI: fail a test that regressed
    GRAPHDUEL_EXAMPLE_SLOWDOWN=2 pytest examples/test_tiny_classifier.py --graphduel-baseline base.json
                                                        # a planted 2x slowdown of compiled mode: the gate fails
"""

from __future__ import annotations

import numpy as np
from scipy.special import erf
from tiny_classifier import TinyClassifier, batch, make_train_step

import eager


def _numpy_forward(model: TinyClassifier):
    """The model in float64 NumPy with the model's own parameters: the truth compare() judges against."""
    w1, b1, w2, b2 = (p.detach().numpy().astype(np.float64)
                      for p in (model.fc1.weight, model.fc1.bias, model.fc2.weight, model.fc2.bias))

    def forward(x):
        h = x @ w1.T + b1
        return (0.5 * h * (1 + erf(h / np.sqrt(2)))) @ w2.T + b2
    return forward


def test_forward_matches_float64_and_fuses_into_few_kernels(graphduel):
    eager.manual_seed(0)
    model = TinyClassifier()
    x, _ = batch()
    r = graphduel.compare(model, x, reference=_numpy_forward(model))
    for mode in ("eager", "traced", "compiled"):
        assert r.correct(mode), r.why(mode)
    assert r.kernels("compiled") <= 4, r.table()


def test_compiled_train_step_agrees_with_eager_and_is_faster(graphduel):
    x, y = batch()
    r = graphduel.compare(make_train_step, x, y, kind="train")
    assert r.correct("traced") and r.correct("compiled"), r.why("compiled")
    assert r.speedup("compiled", over="eager") > 1.0, r.table()
