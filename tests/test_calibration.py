"""Temperature scaling (Guo et al., 2017): softmax, NLL and the fitted temperature."""

from __future__ import annotations

import numpy as np
import pytest

from deephealth.calibration import fit_temperature, nll, softmax


def test_softmax_known_values() -> None:
    p = softmax(np.array([[0.0, 0.0, 0.0], [np.log(2.0), 0.0, 0.0]]))
    np.testing.assert_allclose(p, [[1 / 3, 1 / 3, 1 / 3], [0.5, 0.25, 0.25]])
    np.testing.assert_allclose(softmax(np.array([[2.0, 0.0]]), temperature=2.0), softmax(np.array([[1.0, 0.0]])))
    np.testing.assert_allclose(softmax(np.array([[1000.0, 0.0]])), [[1.0, 0.0]])  # no overflow


def test_nll_known_value() -> None:
    assert nll(np.array([[np.log(2.0), 0.0, 0.0]]), np.array([0])) == pytest.approx(np.log(2.0))


def test_temperature_lowers_nll_of_overconfident_model() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    labels = rng.integers(0, 3, n)
    # A model that is right 70 % of the time but puts a logit margin of 8 on its guess: over-confident.
    guess = np.where(rng.random(n) < 0.7, labels, (labels + rng.integers(1, 3, n)) % 3)
    logits = np.zeros((n, 3))
    logits[np.arange(n), guess] = 8.0
    t = fit_temperature(logits, labels)
    assert t > 1.0
    assert nll(logits, labels, t) < nll(logits, labels) - 1.0
    # Closed form: with margin m, p(correct) = e^{m/T} / (e^{m/T} + 2), optimum where p = accuracy.
    acc = (guess == labels).mean()
    t_expected = 8.0 / np.log(2 * acc / (1 - acc))
    assert t == pytest.approx(t_expected, rel=1e-4)
    np.testing.assert_array_equal(softmax(logits, t).argmax(1), guess)  # arg-max unchanged


def test_temperature_below_one_for_underconfident_model() -> None:
    labels = np.array([0, 1, 2] * 50)
    logits = np.full((150, 3), 0.0)
    logits[np.arange(150), labels] = 0.5  # always right but unsure
    assert fit_temperature(logits, labels) < 0.2


def test_fit_temperature_bad_shapes() -> None:
    with pytest.raises(ValueError):
        fit_temperature(np.zeros((3, 3)), np.zeros(2, int))
