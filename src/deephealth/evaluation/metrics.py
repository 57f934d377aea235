"""Metrics of a 3-class chest X-ray classifier from true labels and calibrated probabilities.

Pure numpy + scikit-learn (no PyTorch, no I/O). Everything is computed from

- ``y_true``: ``(N,)`` int array, values in ``{0, 1, 2}`` (0 normal, 1 bacterial, 2 viral,
  :data:`deephealth.labels.CLASS_NAMES`);
- ``probs``: ``(N, 3)`` float array of calibrated probabilities, each row summing to 1.

The predicted class is the model's decision at its shipped operating point
(:func:`deephealth.calibration.decide`, ``decision=`` the model's ``operating_point``), or
``argmax(probs)`` for a model without one (ties go to the lower index, as :func:`numpy.argmax`).

Two binary protocols of Kermany et al. (2018, Cell 172:1122, "Identifying medical diagnoses and
treatable diseases by image-based deep learning") are derived from the 3-class probabilities:

- **pneumonia vs normal** on all images: positive = pneumonia (bacterial or viral), score
  ``1 - P(normal)``, predicted positive when ``score >= threshold`` (default 0.5);
- **bacterial vs viral** on the images whose *true* label is bacterial or viral: positive = viral,
  score ``P(viral) / (P(bacterial) + P(viral))``, predicted viral when ``score >= threshold``
  (default 0.5). Sensitivity is therefore the recall of viral pneumonia and specificity the recall
  of bacterial pneumonia. We could not confirm which class Kermany et al. took as positive; both
  class recalls are reported, so the comparison can be read either way.

Calibration (Guo et al., 2017, "On Calibration of Modern Neural Networks", ICML):

- **ECE**: 15 equal-width bins ``((m-1)/15, m/15]`` over the top-class confidence ``max(probs)``;
  ``ECE = sum_b |B_b|/N * |acc(B_b) - conf(B_b)|``;
- **Brier score**: multi-class form (Brier, 1950): mean over images of
  ``sum_k (p_k - onehot_k)^2``, in ``[0, 2]``;
- **NLL**: mean of ``-ln p_true`` with ``p_true`` clipped at ``1e-12``, in nats.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
from sklearn.metrics import confusion_matrix, roc_auc_score

from deephealth.calibration import REVIEW_NONE, REVIEW_PNEUMONIA, REVIEW_TYPE, decide, review_flags
from deephealth.labels import CLASS_NAMES

_logger = logging.getLogger(__name__)

N_CLASSES = len(CLASS_NAMES)
ECE_BINS = 15
NLL_EPS = 1e-12
DEFAULT_THRESHOLD = 0.5
PROTOCOLS = ("pneumonia_vs_normal", "bacterial_vs_viral")
"""The two binary protocols of Kermany et al. (2018), in report order."""

PROTOCOL_LABELS = {
    "pneumonia_vs_normal": ("pneumonia", "normal"),
    "bacterial_vs_viral": ("viral", "bacterial"),
}
"""``(positive class, negative class)`` of each binary protocol."""


def check_inputs(y_true: Any, probs: Any) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert labels and probabilities.

    Args:
        y_true: ``(N,)`` integer labels in ``{0, 1, 2}``.
        probs: ``(N, 3)`` probabilities in ``[0, 1]``, rows summing to 1 (within 1e-4).

    Returns:
        ``(y_true, probs)`` as ``int64`` and ``float64`` arrays.

    Raises:
        ValueError: on a wrong shape, an empty set, a label outside ``{0, 1, 2}``, a non-finite or
            out-of-range probability, or a row that does not sum to 1.
    """
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    if y.ndim != 1 or p.ndim != 2 or p.shape != (len(y), N_CLASSES):
        raise ValueError(f"need y_true (N,) and probs (N, {N_CLASSES}), got {y.shape} and {p.shape}")
    if len(y) == 0:
        raise ValueError("no images to evaluate")
    if not np.issubdtype(y.dtype, np.integer):
        if not np.all(np.mod(y, 1) == 0):
            raise ValueError("y_true must hold integer class indices")
    y = y.astype(np.int64)
    if y.min() < 0 or y.max() >= N_CLASSES:
        raise ValueError(f"y_true values must be in 0..{N_CLASSES - 1}, got {sorted(set(y.tolist()))}")
    if not np.all(np.isfinite(p)) or p.min() < 0.0 or p.max() > 1.0:
        raise ValueError("probs must be finite and in [0, 1]")
    worst = float(np.abs(p.sum(axis=1) - 1.0).max())
    if worst > 1e-4:
        raise ValueError(f"each row of probs must sum to 1 (worst row is off by {worst:.3g})")
    return y, p


def binary_scores(probs: np.ndarray, protocol: str) -> np.ndarray:
    """Score of the positive class of a binary protocol, from 3-class probabilities.

    Args:
        probs: ``(N, 3)`` float calibrated probabilities.
        protocol: ``"pneumonia_vs_normal"`` (score ``1 - P(normal)``) or ``"bacterial_vs_viral"``
            (score ``P(viral) / (P(bacterial) + P(viral))``; 0.5 where both are 0).

    Returns:
        ``(N,)`` float64 scores in ``[0, 1]``.

    Raises:
        ValueError: for an unknown protocol.
    """
    p = np.asarray(probs, dtype=np.float64)
    if protocol == "pneumonia_vs_normal":
        return np.clip(1.0 - p[:, 0], 0.0, 1.0)
    if protocol == "bacterial_vs_viral":
        denom = p[:, 1] + p[:, 2]
        safe = np.where(denom > 0, denom, 1.0)
        return np.where(denom > 0, p[:, 2] / safe, 0.5)
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def binary_targets(y_true: np.ndarray, protocol: str) -> tuple[np.ndarray, np.ndarray]:
    """Which images a binary protocol uses and their binary truth.

    Args:
        y_true: ``(N,)`` int labels in ``{0, 1, 2}``.
        protocol: one of :data:`PROTOCOLS`.

    Returns:
        ``(mask, positive)``: ``(N,)`` bool arrays; ``mask`` selects the images of the protocol
        (all for pneumonia vs normal, true bacterial/viral for bacterial vs viral) and
        ``positive`` is the binary truth (pneumonia, resp. viral).

    Raises:
        ValueError: for an unknown protocol.
    """
    y = np.asarray(y_true)
    if protocol == "pneumonia_vs_normal":
        return np.ones(len(y), dtype=bool), y != 0
    if protocol == "bacterial_vs_viral":
        return y != 0, y == 2
    raise ValueError(f"unknown protocol {protocol!r}; expected one of {', '.join(PROTOCOLS)}")


def _ratio(num: float, den: float) -> float | None:
    return float(num) / float(den) if den > 0 else None


def _auroc(truth: np.ndarray, score: np.ndarray) -> float | None:
    """Area under the ROC curve, or None when only one class is present."""
    if truth.all() or not truth.any():
        return None
    return float(roc_auc_score(truth.astype(int), score))


def binary_metrics(truth: np.ndarray, score: np.ndarray, threshold: float = DEFAULT_THRESHOLD) -> dict[str, Any]:
    """Accuracy, sensitivity, specificity, PPV, NPV and AUROC of one binary decision.

    Args:
        truth: ``(n,)`` bool, True for the positive class.
        score: ``(n,)`` float score of the positive class.
        threshold: predicted positive when ``score >= threshold``.

    Returns:
        dict with ``n``, ``n_positive``, ``n_negative``, ``threshold``, ``accuracy``,
        ``sensitivity`` (TP/(TP+FN)), ``specificity`` (TN/(TN+FP)), ``ppv``, ``npv``, ``auroc``
        and ``confusion`` (``tn, fp, fn, tp``); a ratio whose denominator is 0, and the AUROC when
        only one class is present, are None.
    """
    truth = np.asarray(truth, dtype=bool)
    pred = np.asarray(score, dtype=np.float64) >= threshold
    tp = int(np.sum(pred & truth))
    tn = int(np.sum(~pred & ~truth))
    fp = int(np.sum(pred & ~truth))
    fn = int(np.sum(~pred & truth))
    n = len(truth)
    return {
        "n": n,
        "n_positive": int(truth.sum()),
        "n_negative": int((~truth).sum()),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, n),
        "sensitivity": _ratio(tp, tp + fn),
        "specificity": _ratio(tn, tn + fp),
        "ppv": _ratio(tp, tp + fp),
        "npv": _ratio(tn, tn + fn),
        "auroc": _auroc(truth, score),
        "confusion": {"tn": tn, "fp": fp, "fn": fn, "tp": tp},
    }


def ece_bin_index(confidence: np.ndarray, n_bins: int = ECE_BINS) -> np.ndarray:
    """Bin of each confidence among ``n_bins`` equal-width bins ``((m-1)/M, m/M]``.

    Args:
        confidence: ``(N,)`` float in ``[0, 1]``.
        n_bins: number of bins ``M``.

    Returns:
        ``(N,)`` int64 bin indices in ``[0, M-1]`` (a confidence of exactly 0 goes to bin 0).
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    idx = np.searchsorted(edges, np.asarray(confidence, dtype=np.float64), side="left") - 1
    return np.clip(idx, 0, n_bins - 1).astype(np.int64)


def calibration_metrics(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, Any]:
    """ECE, Brier score and NLL, plus the reliability-diagram table.

    Args:
        y_true: ``(N,)`` int labels in ``{0, 1, 2}``.
        probs: ``(N, 3)`` calibrated probabilities.
        n_bins: number of equal-width confidence bins for the ECE (Guo et al., 2017: 15).

    Returns:
        dict with ``ece``, ``brier`` (multi-class, in [0, 2]), ``nll`` (nats), ``n_bins`` and
        ``bins``: one entry per bin (``lower``, ``upper``, ``count``, ``confidence`` = mean
        top-class probability, ``accuracy``; the last two None for an empty bin).
    """
    y, p = check_inputs(y_true, probs)
    n = len(y)
    conf = p.max(axis=1)
    correct = (p.argmax(axis=1) == y).astype(np.float64)
    idx = ece_bin_index(conf, n_bins)
    counts = np.bincount(idx, minlength=n_bins)
    sum_conf = np.bincount(idx, weights=conf, minlength=n_bins)
    sum_acc = np.bincount(idx, weights=correct, minlength=n_bins)
    ece = float(np.abs(sum_acc - sum_conf).sum() / n)
    onehot = np.eye(N_CLASSES)[y]
    brier = float(((p - onehot) ** 2).sum(axis=1).mean())
    nll = float(-np.log(np.clip(p[np.arange(n), y], NLL_EPS, None)).mean())
    bins = []
    for b in range(n_bins):
        c = int(counts[b])
        bins.append(
            {
                "lower": b / n_bins,
                "upper": (b + 1) / n_bins,
                "count": c,
                "confidence": float(sum_conf[b] / c) if c else None,
                "accuracy": float(sum_acc[b] / c) if c else None,
            }
        )
    return {"ece": ece, "brier": brier, "nll": nll, "n_bins": n_bins, "bins": bins}


def _threshold_of(entry: Any) -> float | None:
    if isinstance(entry, (int, float)) and not isinstance(entry, bool):
        return float(entry)
    if isinstance(entry, dict) and isinstance(entry.get("threshold"), (int, float)):
        return float(entry["threshold"])
    return None


def compute_metrics(
    y_true: Any, probs: Any, operating_point: dict[str, Any] | None = None, decision: dict[str, Any] | None = None
) -> dict[str, Any]:
    """All metrics of the evaluation report.

    Args:
        y_true: ``(N,)`` int labels in ``{0, 1, 2}`` (0 normal, 1 bacterial, 2 viral).
        probs: ``(N, 3)`` float calibrated probabilities, rows summing to 1.
        operating_point: optional thresholds chosen on validation (e.g. metadata.json's
            ``operating_points``): ``{protocol: threshold}`` or ``{protocol: {"threshold": t, ...}}``
            for protocols in :data:`PROTOCOLS`; each is reported *in addition to* the default
            threshold 0.5, under ``binary[protocol]["operating_point"]``. Unknown keys are logged
            and ignored.
        decision: the model's shipped operating point (``metadata.json`` -> ``operating_point``,
            see :func:`deephealth.calibration.fit_operating_point`): the 3-class prediction is
            :func:`deephealth.calibration.decide` and the pneumonia-vs-normal figures are at its
            threshold instead of 0.5. ``None``: arg-max and 0.5.

    Returns:
        A JSON-able dict (floats unrounded; None where undefined):

        - ``n``, ``class_names``, ``support`` (images per class);
        - ``three_class``: ``accuracy``, ``balanced_accuracy``, ``macro_f1``, ``macro_auroc``
          (mean of the defined one-vs-rest AUROCs), ``per_class`` (per class: ``precision``,
          ``sensitivity`` (recall), ``specificity``, ``f1``, ``auroc`` one-vs-rest on
          ``probs[:, k]``, ``support``), ``confusion_matrix`` (rows = true class, columns =
          predicted class, in class order);
        - ``binary``: for each protocol, :func:`binary_metrics` at 0.5 plus ``positive``,
          ``negative``, ``score`` (a formula string) and, if given, ``operating_point``;
        - ``calibration``: :func:`calibration_metrics`.

    Raises:
        ValueError: on malformed inputs (see :func:`check_inputs`).
    """
    y, p = check_inputs(y_true, probs)
    pred = decide(p, decision)
    cm = confusion_matrix(y, pred, labels=list(range(N_CLASSES)))
    n = len(y)
    per_class: dict[str, dict[str, Any]] = {}
    recalls, f1s, aurocs = [], [], []
    for k, name in enumerate(CLASS_NAMES):
        tp = int(cm[k, k])
        fn = int(cm[k, :].sum() - tp)
        fp = int(cm[:, k].sum() - tp)
        tn = n - tp - fn - fp
        precision = _ratio(tp, tp + fp)
        recall = _ratio(tp, tp + fn)
        f1 = _ratio(2 * tp, 2 * tp + fp + fn)
        auroc = _auroc(y == k, p[:, k])
        per_class[name] = {
            "precision": precision,
            "sensitivity": recall,
            "specificity": _ratio(tn, tn + fp),
            "f1": f1,
            "auroc": auroc,
            "support": tp + fn,
        }
        if recall is not None:
            recalls.append(recall)
        # F1 of a class that is neither present nor predicted is undefined; sklearn would give 0.
        f1s.append(0.0 if f1 is None else f1)
        if auroc is not None:
            aurocs.append(auroc)
    three = {
        "accuracy": float(np.trace(cm) / n),
        "balanced_accuracy": float(np.mean(recalls)),
        "macro_f1": float(np.mean(f1s)),
        "macro_auroc": float(np.mean(aurocs)) if aurocs else None,
        "per_class": per_class,
        "confusion_matrix": cm.astype(int).tolist(),
    }
    ops = dict(operating_point or {})
    for key in sorted(set(ops) - set(PROTOCOLS)):
        _logger.warning("operating point %r ignored: not one of %s", key, ", ".join(PROTOCOLS))
    binary: dict[str, Any] = {}
    for protocol in PROTOCOLS:
        mask, truth = binary_targets(y, protocol)
        score = binary_scores(p, protocol)
        pos, neg = PROTOCOL_LABELS[protocol]
        if not mask.any():
            binary[protocol] = {"n": 0, "positive": pos, "negative": neg}
            continue
        entry: dict[str, Any] = {"positive": pos, "negative": neg, "score": _SCORE_FORMULA[protocol]}
        entry.update(binary_metrics(truth[mask], score[mask], decision_threshold(protocol, decision)))
        if protocol in ops:
            t = _threshold_of(ops[protocol])
            if t is None or not math.isfinite(t):
                _logger.warning("operating point for %s ignored: no numeric threshold in %r", protocol, ops[protocol])
            else:
                op = binary_metrics(truth[mask], score[mask], t)
                op.pop("auroc")  # threshold-free, same as above
                entry["operating_point"] = op
        binary[protocol] = entry
    return {
        "n": n,
        "class_names": list(CLASS_NAMES),
        "support": {name: int(np.sum(y == k)) for k, name in enumerate(CLASS_NAMES)},
        "three_class": three,
        "binary": binary,
        "calibration": calibration_metrics(y, p),
    }


def review_band_metrics(y_true: Any, probs: Any, decision: dict[str, Any] | None) -> dict[str, Any] | None:
    """What the operating point's review band costs and buys (issue 16: reported honestly).

    With a ``review_band`` in the operating point, each film gets a definite label or, when it
    lies in the band (:func:`deephealth.calibration.review_flags`), "indeterminate, review"; its
    label is unchanged by the band. Figures, next to the headline ones without the band:

    - the share of films flagged, split by reason (pneumonia vs normal borderline; called
      pneumonia and bacterial vs viral borderline);
    - **with flagged films counted as errors**, on all ``N`` films: 3-class accuracy (correct and
      not flagged, over ``N``), pneumonia-vs-normal sensitivity (true pneumonias called pneumonia
      and not flagged pneumonia-vs-normal borderline, over all true pneumonias) and specificity
      (likewise for normals). A bacterial-vs-viral flag leaves the pneumonia call definite, so only
      the pneumonia-vs-normal flags count as errors of the binary decision;
    - **among the films not flagged**: 3-class accuracy, and pneumonia-vs-normal sensitivity and
      specificity at the operating point, with their counts;
    - the 3-class accuracy of the labels of the flagged films, and how many of the ``N`` films'
      errors the band flags.

    Args:
        y_true: ``(N,)`` int labels in ``{0, 1, 2}``.
        probs: ``(N, 3)`` calibrated probabilities.
        decision: the model's shipped operating point; ``None`` is returned without a
            ``review_band`` in it.

    Returns:
        ``None``, or ``{"rule", "pneumonia_probability_range", "bacterial_share_range", "n",
        "n_review", "review_rate", "by_reason": {"pneumonia_vs_normal" | "bacterial_vs_viral":
        {"n", "rate"}}, "review_as_error": {"accuracy", "sensitivity", "specificity"},
        "not_flagged": {"n", "n_positive", "n_negative", "accuracy", "sensitivity",
        "specificity"}, "flagged": {"n", "accuracy", "n_errors"}, "n_errors"}``; a ratio whose
        denominator is 0 is ``None``.

    Raises:
        ValueError: on malformed inputs (see :func:`check_inputs`).
    """
    if not decision or not decision.get("review_band"):
        return None
    y, p = check_inputs(y_true, probs)
    band = decision["review_band"]
    flags = review_flags(p, decision)
    pred = decide(p, decision)
    flagged = flags != REVIEW_NONE
    kept = ~flagged
    correct = pred == y
    pos, called = y != 0, pred != 0
    n = len(y)
    n_pos, n_neg = int(pos.sum()), int((~pos).sum())
    k_pos, k_neg = int((kept & pos).sum()), int((kept & ~pos).sum())
    tp_kept, tn_kept = int((kept & pos & called).sum()), int((kept & ~pos & ~called).sum())
    pn_def = flags != REVIEW_PNEUMONIA  # the pneumonia-vs-normal answer is definite
    return {
        "rule": band.get("rule"),
        "pneumonia_probability_range": band.get("pneumonia_probability_range"),
        "bacterial_share_range": band.get("bacterial_share_range"),
        "n": n,
        "n_review": int(flagged.sum()),
        "review_rate": float(flagged.mean()),
        "by_reason": {
            "pneumonia_vs_normal": {"n": int((flags == REVIEW_PNEUMONIA).sum()),
                                    "rate": float((flags == REVIEW_PNEUMONIA).mean())},
            "bacterial_vs_viral": {"n": int((flags == REVIEW_TYPE).sum()), "rate": float((flags == REVIEW_TYPE).mean())},
        },
        "review_as_error": {
            "accuracy": _ratio(int((correct & kept).sum()), n),
            "sensitivity": _ratio(int((pn_def & pos & called).sum()), n_pos),
            "specificity": _ratio(int((pn_def & ~pos & ~called).sum()), n_neg),
        },
        "not_flagged": {
            "n": int(kept.sum()),
            "n_positive": k_pos,
            "n_negative": k_neg,
            "accuracy": _ratio(int((correct & kept).sum()), int(kept.sum())),
            "sensitivity": _ratio(tp_kept, k_pos),
            "specificity": _ratio(tn_kept, k_neg),
        },
        "flagged": {
            "n": int(flagged.sum()),
            "accuracy": _ratio(int((correct & flagged).sum()), int(flagged.sum())),
            "n_errors": int((~correct & flagged).sum()),
        },
        "n_errors": int((~correct).sum()),
    }


def decision_threshold(protocol: str, decision: dict[str, Any] | None) -> float:
    """Threshold of a binary protocol at the model's decision rule (0.5 without an operating point).

    The shipped operating point moves the pneumonia-vs-normal threshold on ``1 - P(normal)``;
    bacterial vs viral stays at 0.5 (the likelier of the two types), as in
    :func:`deephealth.calibration.decide`.
    """
    if decision and protocol == "pneumonia_vs_normal":
        return float(decision["threshold"])
    return DEFAULT_THRESHOLD


_SCORE_FORMULA = {
    "pneumonia_vs_normal": "1 - P(normal)",
    "bacterial_vs_viral": "P(viral) / (P(bacterial) + P(viral))",
}
