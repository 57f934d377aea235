"""PNG plots of the evaluation report (matplotlib, Agg backend, no display needed).

- confusion matrix (counts, with the row percentage = per-class sensitivity);
- ROC curves, one-vs-rest for each class (Fawcett, 2006, "An introduction to ROC analysis");
- ROC curves of the two binary protocols of Kermany et al. (2018), with the 0.5 operating point
  and the operating point Kermany et al. report, for comparison;
- reliability diagram (DeGroot & Fienberg, 1983; as drawn by Guo et al., 2017) over the 15 ECE bins;
- label-flip rates under benign perturbations, and the contradicting flips left with the review band
  when the figures have them (:mod:`deephealth.evaluation.stability`);
- heatmap deletion curves (Petsiuk et al., 2018) and the model-randomisation cascade (Adebayo et al.,
  2018), :mod:`deephealth.evaluation.faithfulness`.

matplotlib is imported inside each function so that importing this module stays cheap.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from deephealth.evaluation.metrics import (
    DEFAULT_THRESHOLD,
    PROTOCOL_LABELS,
    PROTOCOLS,
    binary_scores,
    binary_targets,
)

_PNG_METADATA = {"Software": None}  # keep PNG bytes independent of the matplotlib version string
_DPI = 120


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=_DPI, bbox_inches="tight", metadata=_PNG_METADATA)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def plot_confusion_matrix(
    cm: Sequence[Sequence[int]], class_names: Sequence[str], path: str | Path, title: str = "Confusion matrix"
) -> Path:
    """Draw a confusion matrix as a heat map with counts and row percentages.

    Args:
        cm: ``(C, C)`` int counts, rows = true class, columns = predicted class.
        class_names: ``C`` class names in index order.
        path: output PNG path (parent folders are created).
        title: figure title.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    m = np.asarray(cm, dtype=np.int64)
    rows = m.sum(axis=1, keepdims=True)
    frac = np.divide(m, rows, out=np.zeros(m.shape, dtype=np.float64), where=rows > 0)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    im = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0)
    for i in range(m.shape[0]):
        for j in range(m.shape[1]):
            ax.text(
                j, i, f"{m[i, j]}\n{100 * frac[i, j]:.1f} %", ha="center", va="center",
                color="white" if frac[i, j] > 0.6 else "black", fontsize=10,
            )
    ax.set_xticks(range(len(class_names)), labels=list(class_names))
    ax.set_yticks(range(len(class_names)), labels=list(class_names))
    ax.set_xlabel("predicted class (arg-max)")
    ax.set_ylabel("true class")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, label="fraction of the true class (row)")
    return _save(fig, path)


def plot_roc_one_vs_rest(
    y_true: np.ndarray, probs: np.ndarray, class_names: Sequence[str], path: str | Path
) -> Path:
    """One-vs-rest ROC curve of each class, score ``probs[:, k]``, AUROC in the legend.

    Args:
        y_true: ``(N,)`` int labels.
        probs: ``(N, C)`` calibrated probabilities.
        class_names: ``C`` class names in index order.
        path: output PNG path.

    Returns:
        The PNG path.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    for k, name in enumerate(class_names):
        truth = y == k
        if truth.all() or not truth.any():
            continue
        fpr, tpr, _ = roc_curve(truth, p[:, k])
        ax.plot(fpr, tpr, lw=1.8, label=f"{name} vs rest (AUROC {roc_auc_score(truth, p[:, k]):.3f})")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="chance")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.01)
    ax.set_xlabel("1 - specificity (false positive rate)")
    ax.set_ylabel("sensitivity (true positive rate)")
    ax.set_title("ROC, one class vs the rest")
    ax.legend(loc="lower right", fontsize=9)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_roc_binary(
    y_true: np.ndarray,
    probs: np.ndarray,
    path: str | Path,
    reference_points: dict[str, tuple[float, float]] | None = None,
    thresholds: dict[str, float] | None = None,
) -> Path:
    """ROC curves of the two Kermany et al. (2018) binary protocols, side by side.

    Each panel marks the model's operating point (``thresholds[protocol]``, default 0.5) and, when given, a reference
    operating point (e.g. Kermany et al.'s reported sensitivity and specificity).

    Args:
        y_true: ``(N,)`` int labels in ``{0, 1, 2}``.
        probs: ``(N, 3)`` calibrated probabilities.
        path: output PNG path.
        reference_points: ``{protocol: (sensitivity, specificity)}`` to mark, labelled "Kermany 2018".
        thresholds: ``{protocol: threshold}`` of the model's decision rule (default 0.5 each).

    Returns:
        The PNG path.
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    plt = _pyplot()
    y = np.asarray(y_true)
    p = np.asarray(probs, dtype=np.float64)
    fig, axes = plt.subplots(1, 2, figsize=(10.0, 4.8))
    for ax, protocol in zip(axes, PROTOCOLS):
        pos, neg = PROTOCOL_LABELS[protocol]
        mask, truth = binary_targets(y, protocol)
        t, s = truth[mask], binary_scores(p, protocol)[mask]
        ax.set_title(f"{protocol.replace('_', ' ')} (positive: {pos}, n={int(mask.sum())})")
        if t.any() and not t.all():
            fpr, tpr, _ = roc_curve(t, s)
            ax.plot(fpr, tpr, lw=1.8, label=f"model (AUROC {roc_auc_score(t, s):.3f})")
            thr = (thresholds or {}).get(protocol, DEFAULT_THRESHOLD)
            pred = s >= thr
            sens, spec = float(np.mean(pred[t])), float(np.mean(~pred[~t]))
            ax.plot([1 - spec], [sens], "o", color="C0", ms=7,
                    label=f"threshold {thr:.3g} (sens {100 * sens:.1f} %, spec {100 * spec:.1f} %)")
        else:
            ax.text(0.5, 0.5, "only one class present", ha="center", va="center")
        if reference_points and protocol in reference_points:
            rs, rp = reference_points[protocol]
            ax.plot([1 - rp], [rs], "s", color="C3", ms=7,
                    label=f"Kermany 2018 (sens {100 * rs:.1f} %, spec {100 * rp:.1f} %)")
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1.01)
        ax.set_xlabel(f"1 - specificity (false {pos} rate)")
        ax.set_ylabel(f"sensitivity ({pos} recall)")
        ax.legend(loc="lower right", fontsize=8)
        ax.grid(alpha=0.3)
    fig.suptitle("Binary protocols of Kermany et al. (2018)")
    return _save(fig, path)


def plot_reliability(calibration: dict[str, Any], path: str | Path) -> Path:
    """Reliability diagram: accuracy vs mean confidence per bin, and the bin counts.

    Args:
        calibration: the ``calibration`` dict of
            :func:`deephealth.evaluation.metrics.compute_metrics` (``bins``, ``ece``, ``n_bins``).
        path: output PNG path.

    Returns:
        The PNG path.
    """
    plt = _pyplot()
    bins = calibration["bins"]
    lower = np.array([b["lower"] for b in bins])
    width = np.array([b["upper"] - b["lower"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    acc = np.array([b["accuracy"] if b["accuracy"] is not None else np.nan for b in bins])
    conf = np.array([b["confidence"] if b["confidence"] is not None else np.nan for b in bins])
    fig, (ax, axh) = plt.subplots(2, 1, figsize=(5.2, 6.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    has = counts > 0
    ax.bar(lower[has], acc[has], width=width[has], align="edge", edgecolor="black", color="C0", alpha=0.8,
           label="accuracy in bin")
    ax.bar(lower[has], (conf - acc)[has], bottom=acc[has], width=width[has], align="edge", color="C3",
           alpha=0.35, hatch="//", edgecolor="C3", label="gap to mean confidence")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect calibration")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy")
    ax.set_title(
        f"Reliability diagram (top-class confidence, {calibration['n_bins']} bins)\n"
        f"ECE {calibration['ece']:.3f}, Brier {calibration['brier']:.3f}, NLL {calibration['nll']:.3f}"
    )
    ax.legend(loc="upper left", fontsize=8)
    ax.grid(alpha=0.3)
    axh.bar(lower, counts, width=width, align="edge", edgecolor="black", color="grey")
    axh.set_xlim(0, 1)
    axh.set_xlabel("confidence (largest calibrated probability)")
    axh.set_ylabel("images")
    return _save(fig, path)


def _band_share(summary: dict[str, Any]) -> float | None:
    """The share of films the review band flags, or ``None`` when the summary has no band figures."""
    band = summary.get("review_band")
    if isinstance(band, dict):
        return band.get("review_rate")
    return None


def _has_band(summary: dict[str, Any]) -> bool:
    return isinstance(summary.get("review_band"), dict) or any(
        "contradicting_rate" in v for v in summary.get("perturbations", {}).values())


def plot_stability(summaries: dict[str, dict[str, Any]], path: str | Path,
                   title: str = "Label flips under benign perturbations") -> Path:
    """Grouped bar chart of the label-flip rate per perturbation, one bar colour per model.

    For a model whose summary carries the review band's figures (``review_band`` and per perturbation
    ``contradicting_rate``, :func:`deephealth.evaluation.stability.summarize_stability` with an
    operating point that has a band), a second, darker hatched bar beside each label-flip bar shows
    the **contradicting flips** (a definite label before, a different definite label after, neither
    flagged for review; always a subset of the label flips), with its number of films written above
    it. The legend then reads "label flips" and "contradicting flips (review band: x % of films
    flagged)", the share read from ``review_band.review_rate`` (prefixed with the model's label when
    several models are drawn; with one model, the label is the legend's title). Models without band
    figures (older reports, compare rows) keep the single label-flip bar, labelled with the model.
    The target flip rate is drawn as a horizontal dashed line.

    Args:
        summaries: ``{model label: summarize_stability dict}`` (:mod:`deephealth.evaluation.stability`);
            bars follow the first model's perturbation order; 95 % intervals of the label-flip rate
            are drawn when present.
        path: output PNG path (parent folders are created).
        title: figure title.

    Returns:
        ``path``.

    Raises:
        ValueError: if ``summaries`` is empty.
    """
    if not summaries:
        raise ValueError("no stability figures to plot")
    plt = _pyplot()
    from matplotlib.colors import to_rgb

    labels = list(summaries)
    names = list(next(iter(summaries.values()))["perturbations"])
    band = {label: _has_band(summaries[label]) for label in labels}
    n_slots = sum(2 if band[label] else 1 for label in labels)
    width = 0.8 / n_slots
    x = np.arange(len(names))
    fig, ax = plt.subplots(figsize=(max(7.0, 0.55 * len(names) * max(1, len(labels)) + 2
                                        + 0.25 * len(names) * sum(band.values())), 4.2))
    single = len(labels) == 1
    slot = 0
    for i, label in enumerate(labels):
        per = summaries[label]["perturbations"]
        rates = np.array([100 * (per.get(n, {}).get("flip_rate") or 0.0) for n in names])
        cis = [per.get(n, {}).get("flip_rate_ci") for n in names]
        yerr = None
        if all(ci is not None for ci in cis):
            lo = np.array([100 * c[0] for c in cis])
            hi = np.array([100 * c[1] for c in cis])
            yerr = np.vstack([np.maximum(rates - lo, 0), np.maximum(hi - rates, 0)])
        colour = f"C{i}"
        flips_label = label
        if band[label]:
            flips_label = "label flips" if single else f"{label}: label flips"
        ax.bar(x + (slot - (n_slots - 1) / 2) * width, rates, width, yerr=yerr, capsize=2, color=colour,
               label=flips_label)
        slot += 1
        if band[label]:
            contra = np.array([100 * (per.get(n, {}).get("contradicting_rate") or 0.0) for n in names])
            counts = [per.get(n, {}).get("n_contradicting") for n in names]
            share = _band_share(summaries[label])
            what = "contradicting flips (review band" + (
                f": {100 * share:.1f} % of films flagged)" if share is not None else ")")
            dark = tuple(0.55 * c for c in to_rgb(colour))
            xs = x + (slot - (n_slots - 1) / 2) * width
            ax.bar(xs, contra, width, color=dark, hatch="///", edgecolor="white", linewidth=0,
                   label=what if single else f"{label}: {what}")
            for xi, yi, k in zip(xs, contra, counts):
                if k is not None:
                    ax.annotate(str(k), (xi, yi), xytext=(0, 2), textcoords="offset points", ha="center",
                                va="bottom", fontsize=7, color=dark)
            slot += 1
    target = next(iter(summaries.values())).get("target_flip_rate")
    if target is not None:
        ax.axhline(100 * target, color="black", linestyle="--", linewidth=1, label=f"target ≤ {100 * target:g} %")
    ax.set_xticks(x)
    ax.set_xticklabels(names, rotation=45, ha="right")
    ax.set_ylabel("films whose label changes (%)")
    ax.set_title(title)
    ax.set_ylim(bottom=0)
    ax.legend(fontsize="small", title=labels[0] if single and band[labels[0]] else None,
              title_fontsize="small")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_deletion(results: Sequence[dict[str, Any]], path: str | Path) -> Path:
    """Mean deletion curves, one panel per model, and the model-randomisation cascade when measured.

    Args:
        results: one dict per model, as returned by
            :func:`deephealth.evaluation.faithfulness.deletion_report` plus ``model`` (a label) and
            optionally ``split`` and ``randomisation``
            (:func:`deephealth.evaluation.faithfulness.randomisation_check`).
        path: output PNG path (parent folders are created).

    Returns:
        ``path``.

    Raises:
        ValueError: if ``results`` is empty.
    """
    if not results:
        raise ValueError("no deletion curves to plot")
    plt = _pyplot()
    n = len(results)
    has_rand = any(r.get("randomisation") for r in results)
    fig, axes = plt.subplots(1, n + int(has_rand), figsize=(5.0 * (n + int(has_rand)), 4.2), squeeze=False)
    colours = {"cam": "tab:blue", "evidence": "tab:red", "random": "0.5"}
    for ax, r in zip(axes[0], results):
        for src, e in r["maps"].items():
            shape = "x".join(str(v) for v in e["map_shape"]) if e["map_shape"] else ""
            label = f"{src} {shape}".strip() + f" (AUC {e['auc']['mean']:.3f})"
            ax.plot(np.array(e["fractions"]) * 100, e["mean_curve"], color=colours.get(src, "k"), label=label,
                    ls="--" if src == "random" else "-")
        ax.set_xlabel("pixels deleted (%)")
        ax.set_ylabel("P(predicted class), mean")
        where = f"{r['films']} {r.get('split', '')} films".replace("  ", " ")
        ax.set_title(f"deletion, {r.get('model', '')}, {where}\nfill: {r['fill']}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if has_rand:
        ax = axes[0][-1]
        for r in results:
            for src, e in (r.get("randomisation") or {}).items():
                ys = [e["spearman"][st]["mean"] for st in e["stages"]]
                ax.plot(range(len(ys)), ys, marker="o", color=colours.get(src, "k"),
                        ls="-" if r is results[0] else ":", label=f"{src}, {r.get('model', '')}")
        stages = next(e["stages"] for r in results for e in (r.get("randomisation") or {}).values())
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(["+" + s.split("+")[-1] if i else s for i, s in enumerate(stages)], rotation=20, fontsize=8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_ylabel("Spearman vs trained map, mean")
        ax.set_title("model randomisation (cascading from the top)", fontsize=10)
        ax.set_ylim(-0.5, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
