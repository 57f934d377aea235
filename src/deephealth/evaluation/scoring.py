"""Score dataset records with the shipped model through the user-facing Predictor.

What ships is what is scored: images go through :class:`deephealth.inference.Predictor` (the same
readers, preprocessing, ONNX Runtime session and temperature as ``deephealth predict`` and the web
app), never through a PyTorch checkpoint. No torch is imported here.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import numpy as np

from deephealth.labels import CLASS_NAMES
from deephealth.manifest import Record

_logger = logging.getLogger(__name__)


def evaluate_model(
    predictor: Any,
    records: Sequence[Record],
    *,
    batch_size: int = 32,
    progress: bool = True,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Predict every record and collect labels and calibrated probabilities.

    A file that cannot be read is not scored: its row carries the reader's one-line error and it
    is left out of ``y_true``/``probs`` (the report lists it), never silently dropped. Images the
    input gate refuses are still scored (``allow_unsuitable``), so the metrics cover the whole
    split; each row records the gate's verdict for the report's gate section.

    Args:
        predictor: a :class:`deephealth.inference.Predictor` (anything with ``artifact.class_names``
            and ``predict_many(paths, batch_size=, progress=)`` returning ``Prediction`` or
            ``PredictionError`` per input, in order).
        records: manifest records (path, label, patient id).
        batch_size: images per ONNX Runtime call.
        progress: show a progress bar on stderr while scoring.

    Returns:
        ``(y_true, probs, rows)``: ``y_true`` ``(M,)`` int64 labels and ``probs`` ``(M, 3)`` float64
        calibrated probabilities of the ``M`` scored images, in record order; ``rows`` has one dict
        per record (``path``, ``label``, ``label_index``, ``patient_id``, ``predicted`` (class name
        or None), ``probs`` (list of 3 floats or None), ``error`` (None or the one-line message),
        ``gate`` (``accept``/``warn``/``refuse``/``unavailable``, None if not read) and
        ``gate_reasons`` (list of str)).

    Raises:
        ValueError: if there are no records or the model's classes are not
            :data:`deephealth.labels.CLASS_NAMES` in that order.
    """
    if not records:
        raise ValueError("no images to evaluate")
    class_names = tuple(predictor.artifact.class_names)
    if class_names != tuple(CLASS_NAMES):
        raise ValueError(
            f"model classes {list(class_names)} differ from the evaluated classes {list(CLASS_NAMES)}"
        )
    paths = [r.path for r in records]
    results = predictor.predict_many(paths, batch_size=batch_size, progress=progress, allow_unsuitable=True)
    if len(results) != len(records):
        raise RuntimeError(f"predictor returned {len(results)} results for {len(records)} images")
    rows: list[dict[str, Any]] = []
    y_true: list[int] = []
    probs: list[np.ndarray] = []
    for rec, res in zip(records, results):
        row: dict[str, Any] = {
            "path": rec.path,
            "label": rec.label,
            "label_index": rec.label_index,
            "patient_id": rec.patient_id,
            "predicted": None,
            "probs": None,
            "error": None,
            "gate": None,
            "gate_reasons": [],
        }
        verdict = getattr(res, "suitability", None)
        if verdict is not None:
            row["gate"], row["gate_reasons"] = verdict.status, list(verdict.reasons)
        p = getattr(res, "probs", None)
        if p is None:
            row["error"] = str(getattr(res, "error", None) or f"{rec.path}: no prediction")
            _logger.debug("not scored: %s", row["error"])
        else:
            p = np.asarray(p, dtype=np.float64).reshape(len(CLASS_NAMES))
            row["probs"] = [float(v) for v in p]
            row["predicted"] = str(res.label)  # the Predictor's decision, at the model's operating point
            y_true.append(rec.label_index)
            probs.append(p)
        rows.append(row)
    y = np.asarray(y_true, dtype=np.int64)
    pr = np.stack(probs) if probs else np.zeros((0, len(CLASS_NAMES)), dtype=np.float64)
    return y, pr, rows
