"""Calibration: temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar ``T > 0`` divides the logits before the softmax; it is fitted by minimising the negative
log-likelihood on the validation split and leaves the arg-max (the predicted class) unchanged.
Pure numpy, shared by training (fit) and inference/evaluation (apply).
"""

from __future__ import annotations

import functools

import numpy as np


def softmax(logits: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """Numerically stable softmax of ``logits / temperature`` along the last axis.

    Args:
        logits: ``(..., C)`` float array of raw network outputs.
        temperature: ``T > 0``; 1 leaves the logits unchanged.

    Returns:
        float64 array of the same shape, each row summing to 1.
    """
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def nll(logits: np.ndarray, labels: np.ndarray, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood (natural log) of integer ``labels`` (N,) under ``softmax(logits / T)``."""
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), np.asarray(labels, dtype=int)].mean())


def fit_temperature(
    logits: np.ndarray, labels: np.ndarray, t_min: float = 0.05, t_max: float = 20.0
) -> float:
    """Temperature minimising the validation NLL (Guo et al., 2017).

    NLL is convex in ``1/T``; a golden-section search over ``log T`` in ``[t_min, t_max]``
    (to 1e-6 relative precision) finds the minimum.

    Args:
        logits: ``(N, C)`` float validation logits.
        labels: ``(N,)`` int true class indices in ``[0, C)``.
        t_min: smallest temperature considered (> 0).
        t_max: largest temperature considered.

    Returns:
        The fitted temperature, a float in ``[t_min, t_max]``.

    Raises:
        ValueError: if the shapes disagree or there are no samples.
    """
    logits = np.asarray(logits, dtype=np.float64)
    labels = np.asarray(labels, dtype=int)
    if logits.ndim != 2 or len(logits) != len(labels) or len(labels) == 0:
        raise ValueError(f"need (N, C) logits and (N,) labels, got {logits.shape} and {labels.shape}")
    lo, hi = np.log(t_min), np.log(t_max)
    g = (np.sqrt(5.0) - 1.0) / 2.0
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(logits, labels, np.exp(a)), nll(logits, labels, np.exp(b))
    while hi - lo > 1e-6:
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(logits, labels, np.exp(a))
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(logits, labels, np.exp(b))
    return float(np.exp((lo + hi) / 2.0))


# ------------------------------------------------------------------------------ operating point

NORMAL_INDEX = 0
"""Class index of "no pneumonia"; the pneumonia score of a film is ``1 - P(normal)``."""


def pneumonia_score(probs: np.ndarray) -> np.ndarray:
    """``P(bacterial) + P(viral) = 1 - P(normal)`` of calibrated ``(..., 3)`` probabilities (float64)."""
    return 1.0 - np.asarray(probs, dtype=np.float64)[..., NORMAL_INDEX]


def fit_operating_point(probs: np.ndarray, labels: np.ndarray, target_sensitivity: float) -> dict:
    """The pneumonia threshold that reaches ``target_sensitivity`` on labelled validation films.

    A film is called pneumonia when its pneumonia score ``1 - P(normal)`` is at least the
    threshold ``tau``; ``tau`` is the largest value whose validation sensitivity (pneumonia films
    called pneumonia) is still ``>= target_sensitivity``, so it buys as much specificity as that
    sensitivity allows. Operating points chosen at a clinical sensitivity rather than at the
    arg-max are how screening tools are usually set (e.g. Kermany et al., 2018, report theirs at
    about 93 % sensitivity).

    Args:
        probs: ``(N, 3)`` calibrated validation probabilities.
        labels: ``(N,)`` int true classes (0 normal, 1 bacterial, 2 viral).
        target_sensitivity: in (0, 1).

    Returns:
        ``{"rule", "threshold", "target_sensitivity", "val_sensitivity", "val_specificity", "n_val"}``
        (the form stored under ``operating_point`` in ``metadata.json``).

    Raises:
        ValueError: if there is no pneumonia or no normal film, or the target is outside (0, 1).
    """
    if not 0.0 < target_sensitivity < 1.0:
        raise ValueError(f"target_sensitivity must be in (0, 1), got {target_sensitivity}")
    s = pneumonia_score(probs)
    y = np.asarray(labels, dtype=int) != NORMAL_INDEX
    if y.all() or not y.any():
        raise ValueError("fitting an operating point needs both normal and pneumonia films")
    pos = np.sort(s[y])
    k = int(np.floor((1.0 - target_sensitivity) * len(pos) + 1e-9))  # films allowed below tau
    tau = float(pos[min(k, len(pos) - 1)])
    return {
        "rule": "pneumonia if 1 - P(normal) >= threshold, then the likelier of bacterial and viral",
        "threshold": tau,
        "target_sensitivity": float(target_sensitivity),
        "val_sensitivity": float(np.mean(s[y] >= tau)),
        "val_specificity": float(np.mean(s[~y] < tau)),
        "n_val": int(len(y)),
    }


def describe_decision(probs: np.ndarray, operating_point: dict | None = None) -> dict:
    """How one film's label follows from its calibrated probabilities, for people and the API.

    Args:
        probs: ``(3,)`` calibrated probabilities (normal, bacterial, viral).
        operating_point: the model's operating point, or ``None`` (arg-max).

    Returns:
        ``{"rule", "pneumonia_probability", "threshold", "target_sensitivity", "review",
        "review_kind", "review_reason"}``: the threshold and target are ``None`` without an
        operating point; ``review`` is ``True`` when the film lies in the operating point's review
        band (:func:`review_flags`; always ``False`` without one), ``review_kind`` then names the
        borderline decision (``"pneumonia_vs_normal"`` or ``"bacterial_vs_viral"``,
        :data:`REVIEW_KINDS`) and ``review_reason`` says it in words (both ``None`` otherwise).
    """
    p = float(pneumonia_score(probs))
    flag = int(review_flags(np.asarray(probs, dtype=np.float64)[None], operating_point)[0])
    review = {"review": flag != REVIEW_NONE, "review_kind": REVIEW_KINDS[flag],
              "review_reason": review_reason(probs, operating_point, flag)}
    if not operating_point:
        return {"rule": "the most probable class", "pneumonia_probability": p, "threshold": None,
                "target_sensitivity": None, **review}
    tau = float(operating_point["threshold"])
    target = operating_point.get("target_sensitivity")
    why = f", set on validation films for {100 * float(target):.0f} % sensitivity" if target else ""
    return {"rule": f"pneumonia when P(pneumonia) >= {tau:.3f}{why}; then the likelier of bacterial and viral",
            "pneumonia_probability": p, "threshold": tau,
            "target_sensitivity": float(target) if target is not None else None, **review}


def decide(probs: np.ndarray, operating_point: dict | None = None) -> np.ndarray:
    """Predicted class indices of calibrated probabilities at the model's operating point.

    Args:
        probs: ``(N, 3)`` or ``(3,)`` calibrated probabilities (normal, bacterial, viral).
        operating_point: ``metadata.json``'s ``operating_point`` (see :func:`fit_operating_point`),
            or ``None`` for the arg-max.

    Returns:
        int64 array of shape ``probs.shape[:-1]``: 0 when ``1 - P(normal) < threshold``, else 1 or
        2, whichever of bacterial and viral is likelier (ties to bacterial).
    """
    p = np.asarray(probs, dtype=np.float64)
    if not operating_point:
        return np.argmax(p, axis=-1).astype(np.int64)
    tau = float(operating_point["threshold"])
    kind = np.where(p[..., 2] > p[..., 1], 2, 1)
    return np.where(pneumonia_score(p) >= tau, kind, NORMAL_INDEX).astype(np.int64)


# ---------------------------------------------------------------------------------- review band

REVIEW_QUANTILE = 0.9
"""Default quantile of the benign-perturbation score changes that sets the review band's half-widths."""
REVIEW_NONE, REVIEW_PNEUMONIA, REVIEW_TYPE = 0, 1, 2
"""Codes of :func:`review_flags`: not borderline; pneumonia vs normal borderline; bacterial vs viral borderline."""
REVIEW_KINDS = {REVIEW_NONE: None, REVIEW_PNEUMONIA: "pneumonia_vs_normal", REVIEW_TYPE: "bacterial_vs_viral"}
"""Machine-readable names of the :func:`review_flags` codes (``decision.review_kind``; never translated)."""


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), 1e-12, 1.0 - 1e-12)
    return np.log(p) - np.log1p(-p)


def decision_margins(probs: np.ndarray, operating_point: dict) -> tuple[np.ndarray, np.ndarray]:
    """Where films lie against the two decisions of the operating point, in logit units.

    Args:
        probs: ``(..., 3)`` calibrated probabilities (normal, bacterial, viral).
        operating_point: ``metadata.json``'s ``operating_point`` (needs ``threshold`` in (0, 1)).

    Returns:
        ``(s, t)``, float64 arrays of shape ``probs.shape[:-1]``: ``s = logit(1 - P(normal)) -
        logit(threshold)`` (>= 0: called pneumonia) and ``t = ln(P(bacterial) / P(viral))``
        (> 0: bacterial is the likelier kind; ``t = 0`` is decided for bacterial, as :func:`decide`).
    """
    p = np.asarray(probs, dtype=np.float64)
    s = _logit(pneumonia_score(p)) - _threshold_logit(float(operating_point["threshold"]))
    # np.maximum is what np.clip(x, 1e-300, None) calls, without its wrappers
    t = np.log(np.maximum(p[..., 1], 1e-300)) - np.log(np.maximum(p[..., 2], 1e-300))
    return s, t


@functools.lru_cache(maxsize=64)
def _threshold_logit(threshold: float) -> np.float64:
    """``_logit(threshold)``, computed once per threshold (every film of a model shares it)."""
    return _logit(threshold)


def fit_review_band(base_probs: np.ndarray, perturbed_probs: np.ndarray, operating_point: dict,
                    quantile: float = REVIEW_QUANTILE) -> dict:
    """The review band: how far a benign change of the film moves its scores, measured on validation.

    An "indeterminate, review" band around the operating point (issue 16): a film whose pneumonia
    score lies within ``m_p`` logits of the threshold, or which is called pneumonia with its
    bacterial-vs-viral log-odds within ``m_t`` of 0, is flagged for review, because a change of the
    film that does not change the diagnosis (re-encoding, a grey level of noise, a 3° rotation, a
    4 px shift...; :mod:`deephealth.evaluation.stability`) can move it across the decision. The
    half-widths are the ``quantile`` of the absolute score changes those perturbations cause on the
    validation films: ``m_p`` over every (film, perturbation) pair, ``m_t`` over the pairs called
    pneumonia both before and after. Two films on opposite sides outside the band would need a
    change of more than ``2 m`` to contradict each other. The label itself is unchanged (still the
    best guess); the band only adds the flag.

    Args:
        base_probs: ``(N, 3)`` calibrated probabilities of the unchanged validation films.
        perturbed_probs: ``(V, N, 3)`` the same films after each of ``V`` perturbations.
        operating_point: the model's operating point (:func:`fit_operating_point`).
        quantile: in (0, 1), default :data:`REVIEW_QUANTILE`.

    Returns:
        ``{"rule", "quantile", "pneumonia_logit_margin", "type_logit_margin",
        "pneumonia_probability_range", "bacterial_share_range", "n_films", "n_views"}``: the form
        stored under ``operating_point["review_band"]`` in ``metadata.json``; the two ranges give
        the band in probabilities (``P(pneumonia)``, and ``P(bacterial) / (P(bacterial) + P(viral))``).

    Raises:
        ValueError: if the shapes disagree, there are no films, no film is called pneumonia both
            before and after a perturbation, or ``quantile`` is outside (0, 1).
    """
    base = np.asarray(base_probs, dtype=np.float64)
    pert = np.asarray(perturbed_probs, dtype=np.float64)
    if base.ndim != 2 or base.shape[1] != 3 or pert.ndim != 3 or pert.shape[1:] != base.shape or not len(base):
        raise ValueError(f"need (N, 3) base and (V, N, 3) perturbed probabilities, got {base.shape} and {pert.shape}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    s0, t0 = decision_margins(base, operating_point)
    s1, t1 = decision_margins(pert, operating_point)
    both = (s0 >= 0)[None] & (s1 >= 0)
    if not both.any():
        raise ValueError("no validation film is called pneumonia before and after a perturbation")
    m_p = float(np.quantile(np.abs(s1 - s0[None]), quantile))
    m_t = float(np.quantile(np.abs(t1 - t0[None])[both], quantile))
    z = _logit(float(operating_point["threshold"]))
    sig = lambda x: float(1.0 / (1.0 + np.exp(-x)))  # noqa: E731
    return {
        "rule": "review when |logit P(pneumonia) - logit threshold| < pneumonia_logit_margin, or when called "
                "pneumonia and |ln(P(bacterial) / P(viral))| < type_logit_margin",
        "quantile": float(quantile),
        "pneumonia_logit_margin": m_p,
        "type_logit_margin": m_t,
        "pneumonia_probability_range": [sig(z - m_p), sig(z + m_p)],
        "bacterial_share_range": [sig(-m_t), sig(m_t)],
        "n_films": int(base.shape[0]),
        "n_views": int(pert.shape[0]),
    }


def review_flags(probs: np.ndarray, operating_point: dict | None) -> np.ndarray:
    """Which films lie in the operating point's review band (see :func:`fit_review_band`).

    Args:
        probs: ``(N, 3)`` calibrated probabilities.
        operating_point: the model's operating point; without one, or without a ``review_band``
            in it, no film is flagged.

    Returns:
        ``(N,)`` int8 codes: :data:`REVIEW_NONE`, :data:`REVIEW_PNEUMONIA` (pneumonia vs normal
        is borderline; takes precedence) or :data:`REVIEW_TYPE` (called pneumonia, bacterial vs
        viral is borderline).
    """
    p = np.asarray(probs, dtype=np.float64)
    band = (operating_point or {}).get("review_band")
    out = np.zeros(p.shape[:-1], dtype=np.int8)
    if not band:
        return out
    s, t = decision_margins(p, operating_point)
    out[(s >= 0) & (np.abs(t) < float(band["type_logit_margin"]))] = REVIEW_TYPE
    out[np.abs(s) < float(band["pneumonia_logit_margin"])] = REVIEW_PNEUMONIA
    return out


def review_reason(probs: np.ndarray, operating_point: dict | None, flag: int | None = None) -> str | None:
    """Why one film is flagged for review, in words; ``None`` when it is not.

    Args:
        probs: ``(3,)`` calibrated probabilities.
        operating_point: the model's operating point (with its ``review_band``).
        flag: the film's :func:`review_flags` code, if already known.
    """
    p = np.asarray(probs, dtype=np.float64)
    if flag is None:
        flag = int(review_flags(p[None], operating_point)[0])
    if flag == REVIEW_NONE:
        return None
    band = operating_point["review_band"]
    if flag == REVIEW_PNEUMONIA:
        lo, hi = band["pneumonia_probability_range"]
        return (f"borderline: P(pneumonia) {float(pneumonia_score(p)):.3f} is within the review band "
                f"{lo:.3f}-{hi:.3f} around the threshold {float(operating_point['threshold']):.3f}; a change of "
                "the film that does not change the diagnosis (re-export, slight rotation) can change the label: "
                "have it reviewed")
    share = float(p[1] / max(p[1] + p[2], 1e-300))
    lo, hi = band["bacterial_share_range"]
    return (f"borderline: bacterial vs viral is uncertain (bacterial share {share:.3f} of P(pneumonia), "
            f"review band {lo:.3f}-{hi:.3f}); the kind of pneumonia can change with a benign change of the "
            "film: have it reviewed")
