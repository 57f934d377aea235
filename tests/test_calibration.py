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


# ---------------------------------------------------------------------------------- review band

from deephealth.calibration import (  # noqa: E402
    REVIEW_NONE,
    REVIEW_PNEUMONIA,
    REVIEW_TYPE,
    decide,
    decision_margins,
    describe_decision,
    fit_review_band,
    review_flags,
    review_reason,
)


def _probs(p_pn: float, bact_share: float) -> np.ndarray:
    """Probabilities with P(pneumonia) = p_pn and P(bacterial) / P(pneumonia) = bact_share."""
    return np.array([1 - p_pn, p_pn * bact_share, p_pn * (1 - bact_share)])


def test_decision_margins_known_values() -> None:
    op = {"threshold": 0.5}
    s, t = decision_margins(np.stack([_probs(0.5, 0.5), _probs(0.75, 0.8)]), op)
    np.testing.assert_allclose(s, [0.0, np.log(3.0)], atol=1e-12)  # logit(0.75) - logit(0.5)
    np.testing.assert_allclose(t, [0.0, np.log(4.0)], atol=1e-12)  # ln(0.8 / 0.2)


def test_fit_review_band_takes_the_quantile_of_benign_shifts() -> None:
    op = {"threshold": 0.5}
    # 4 films, all called pneumonia (P = 0.9), bacterial share 0.8; 2 perturbations move the
    # pneumonia logit by 0, 0.1, ..., 0.7 and the kind's log-odds by half as much
    base = np.stack([_probs(0.9, 0.8)] * 4)
    z0, t0 = np.log(9.0), np.log(4.0)
    shifts = np.arange(8).reshape(2, 4) * 0.1
    sig = lambda x: 1 / (1 + np.exp(-x))  # noqa: E731
    pert = np.stack([[_probs(sig(z0 + d), sig(t0 + d / 2)) for d in row] for row in shifts])
    band = fit_review_band(base, pert, op, quantile=0.5)
    assert band["pneumonia_logit_margin"] == pytest.approx(0.35)  # median of 0, 0.1, ..., 0.7
    assert band["type_logit_margin"] == pytest.approx(0.175)
    assert band["pneumonia_probability_range"] == pytest.approx([sig(-0.35), sig(0.35)])
    assert band["bacterial_share_range"] == pytest.approx([sig(-0.175), sig(0.175)])
    assert (band["n_films"], band["n_views"], band["quantile"]) == (4, 2, 0.5)
    with pytest.raises(ValueError, match=r"\(N, 3\) base and \(V, N, 3\)"):
        fit_review_band(base, pert[0], op)
    with pytest.raises(ValueError, match="quantile"):
        fit_review_band(base, pert, op, quantile=1.0)
    normal = np.stack([_probs(0.1, 0.5)] * 4)
    with pytest.raises(ValueError, match="no validation film is called pneumonia"):
        fit_review_band(normal, np.stack([normal, normal]), op)


OP_BAND = {"threshold": 0.8835, "target_sensitivity": 0.95,
           "review_band": {"pneumonia_logit_margin": 0.358, "type_logit_margin": 0.312, "quantile": 0.9,
                           "pneumonia_probability_range": [0.841, 0.916], "bacterial_share_range": [0.423, 0.577]}}


def test_review_flags_and_reasons_known_films() -> None:
    films = np.stack([
        _probs(0.87, 0.9),   # just below the threshold, within 0.358 logits: borderline pneumonia
        _probs(0.90, 0.9),   # just above, within the band: borderline pneumonia (takes precedence)
        _probs(0.99, 0.55),  # clearly pneumonia, ln(0.55 / 0.45) = 0.20 < 0.312: kind borderline
        _probs(0.99, 0.60),  # ln(1.5) = 0.405: not borderline
        _probs(0.30, 0.50),  # clearly normal; the kind does not matter
        _probs(0.90, 0.50),  # both borderline: the pneumonia flag wins
    ])
    flags = review_flags(films, OP_BAND)
    assert flags.tolist() == [REVIEW_PNEUMONIA, REVIEW_PNEUMONIA, REVIEW_TYPE, REVIEW_NONE, REVIEW_NONE,
                              REVIEW_PNEUMONIA]
    assert decide(films, OP_BAND).tolist() == [0, 1, 1, 1, 0, 1]  # the label is unchanged by the band
    assert review_flags(films, {"threshold": 0.8835}).tolist() == [0] * 6 and review_flags(films, None).sum() == 0
    assert review_reason(films[0], OP_BAND) == (
        "borderline: P(pneumonia) 0.870 is within the review band 0.841-0.916 around the threshold 0.883; a change "
        "of the film that does not change the diagnosis (re-export, slight rotation) can change the label: "
        "have it reviewed")
    assert review_reason(films[2], OP_BAND) == (
        "borderline: bacterial vs viral is uncertain (bacterial share 0.550 of P(pneumonia), review band "
        "0.423-0.577); the kind of pneumonia can change with a benign change of the film: have it reviewed")
    assert review_reason(films[3], OP_BAND) is None
    d = describe_decision(films[2], OP_BAND)
    assert d["review"] is True and d["review_reason"].startswith("borderline: bacterial vs viral")
    assert d["review_kind"] == "bacterial_vs_viral"
    assert describe_decision(films[0], OP_BAND)["review_kind"] == "pneumonia_vs_normal"
    clear = describe_decision(films[3], OP_BAND)
    assert (clear["review"], clear["review_kind"], clear["review_reason"]) == (False, None, None)
    plain = describe_decision(films[0], None)
    assert (plain["review"], plain["review_kind"], plain["review_reason"]) == (False, None, None)
