"""Fit the review band of an exported model folder on its training run's validation split.

What ``deephealth export`` runs last, and all that ``deephealth export --review-band-only --out
MODEL`` runs. It needs the serving stack only (numpy, Pillow, onnxruntime) and the dataset: the
split is re-created from the run's config by :func:`deephealth.manifest.run_split`, the films and
their benign perturbations (:mod:`deephealth.evaluation.stability`) are scored through the exported
ONNX model itself (:class:`deephealth.inference.Predictor`, what ships), and the band is fitted by
:func:`deephealth.calibration.fit_review_band`. No PyTorch, scikit-learn or matplotlib is imported
(tested), so a serving machine can refit the band of a model folder it was given.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from deephealth.artifact import ExportError, ModelArtifact, write_metadata
from deephealth.manifest import run_split

_logger = logging.getLogger(__name__)


def fit_run_review_band(model_dir: str | Path, config: dict[str, Any], data_dir: str | Path | None = None,
                        quantile: float | None = None, progress: bool = False) -> dict[str, Any] | None:
    """Fit the review band of an exported model on its run's validation split and record it.

    Scores the validation films of the run's patient-grouped split (:func:`deephealth.manifest.run_split`,
    as the input gate's refit re-creates it) and each of their benign perturbations
    (:mod:`deephealth.evaluation.stability`) through the exported model
    (:class:`deephealth.inference.Predictor`, what ships), fits
    :func:`deephealth.calibration.fit_review_band` and writes it, with its validation figures, under
    ``operating_point["review_band"]`` in ``metadata.json``. About 70 s for 502 films on 2 cores.

    Args:
        model_dir: the exported model folder (its metadata must have an ``operating_point``).
        config: the checkpoint's training config (``data_dir``, ``val_fraction``, ``split_seed``,
            ``max_train_images``, ``seed``).
        data_dir: dataset folder overriding the config's.
        quantile: see :func:`~deephealth.calibration.fit_review_band` (default
            :data:`~deephealth.calibration.REVIEW_QUANTILE`).
        progress: show a progress bar while scoring.

    Returns:
        The ``review_band`` entry, or ``None`` if no dataset was found or the model has no
        operating point (a warning is logged; the model then flags no film).

    Raises:
        ExportError: if scoring or fitting fails.
        ModelArtifactError: ``model_dir`` is not a readable model folder.
    """
    from deephealth.calibration import REVIEW_QUANTILE, fit_review_band
    from deephealth.evaluation.stability import PERTURBATIONS, review_band_figures, score_stability
    from deephealth.inference import Predictor

    art = ModelArtifact.load(model_dir, verify=False)
    op = dict(art.metadata.get("operating_point") or {})
    if not op:
        _logger.warning("%s has no operating point: no review band", model_dir)
        return None
    split = run_split(config, data_dir)
    if split is None:
        _logger.warning("no dataset found: %s ships without a review band", model_dir)
        return None
    _, val_recs, provenance = split
    op.pop("review_band", None)
    t0 = time.time()
    try:
        scores = score_stability(Predictor(model_dir), [r.path for r in val_recs], perturbations=PERTURBATIONS,
                                 progress=progress)
        band = fit_review_band(scores.base_probs, scores.probs, op, REVIEW_QUANTILE if quantile is None else quantile)
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"fitting the review band failed: {exc}") from exc
    figs = review_band_figures(scores.base_probs, scores.probs, {**op, "review_band": band})
    band["validation"] = {
        "films": int(scores.base_probs.shape[0]),
        "perturbations": list(scores.perturbations),
        "review_rate": figs["review_rate"],
        "max_contradicting_rate": max(figs["contradicting_rate"]),
        "max_label_flip_rate": float((scores.labels != scores.base_labels[None]).mean(axis=1).max()),
        "split": provenance,
        "fit_seconds": round(time.time() - t0, 1),
    }
    meta = dict(art.metadata)
    meta["operating_point"] = {**op, "review_band": band}
    write_metadata(model_dir, meta)
    _logger.info("review band: %.1f %% of %d validation films flagged; contradicting flips at most %.1f %%",
                 100 * figs["review_rate"], band["validation"]["films"], 100 * max(figs["contradicting_rate"]))
    return band
