"""Calibration: temperature scaling (Guo et al., 2017, "On Calibration of Modern Neural Networks").

One scalar ``T > 0`` divides the logits before the softmax; it is fitted by minimising the negative
log-likelihood on the validation split and leaves the arg-max (the predicted class) unchanged.
Pure numpy, shared by training (fit) and inference/evaluation (apply).
"""

from __future__ import annotations

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
        ``{"rule", "pneumonia_probability", "threshold", "target_sensitivity"}`` (the last two
        ``None`` without an operating point).
    """
    p = float(pneumonia_score(probs))
    if not operating_point:
        return {"rule": "the most probable class", "pneumonia_probability": p, "threshold": None,
                "target_sensitivity": None}
    tau = float(operating_point["threshold"])
    target = operating_point.get("target_sensitivity")
    why = f", set on validation films for {100 * float(target):.0f} % sensitivity" if target else ""
    return {"rule": f"pneumonia when P(pneumonia) >= {tau:.3f}{why}; then the likelier of bacterial and viral",
            "pneumonia_probability": p, "threshold": tau,
            "target_sensitivity": float(target) if target is not None else None}


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
