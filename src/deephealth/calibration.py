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
