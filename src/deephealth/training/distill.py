"""Knowledge distillation from released models: soft targets for the training films.

A run with ``distill_weight > 0`` learns, besides the labels, the averaged softened predictions of
one or more teacher models (released model folders: ``model.onnx`` + ``metadata.json``), as in
Hinton, Vinyals & Dean, "Distilling the knowledge in a neural network" (2015): the loss adds
``distill_weight * tau^2 * KL(p_teacher || p_student)`` with both distributions softened by the
temperature ``tau``. An ensemble of teachers distilled into one network keeps one network's
serving cost (the ensemble of 0.2.0 and 0.3.0 scored 85.9 % on validation against 85.1 % for
0.3.0 alone; docs/model-development.md section 10).

The teachers are run once, before training, on the training films as the contract gives them
(uint8, the student's preprocessing), with ONNX Runtime: fixed targets, one per film, not per
augmented view. That keeps training as fast as without distillation; the cost is that a strongly
augmented view (zoomed, occluded) is taught the clean film's soft label.

A teacher must never have trained on this run's validation films, or selecting the student on
them would be biased: its recorded split (``val_fraction``, ``split_seed`` and, where recorded, the
validation films' identity or counts) must be this run's.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from deephealth.manifest import SPLIT_IDENTITY_KEYS, split_difference
from deephealth.preprocessing import PreprocessConfig, normalize

_logger = logging.getLogger(__name__)


def teacher_dirs(spec: str) -> list[Path]:
    """The teacher model folders of a ``distill_teachers`` setting (comma-separated; blanks ignored)."""
    return [Path(p.strip()) for p in spec.split(",") if p.strip()]


def _check_teacher(artifact: Any, preprocessing: PreprocessConfig, val_fraction: float, split_seed: int,
                   split_id: dict[str, Any] | None) -> None:
    """Refuse a teacher whose contract or train/validation split is not this run's (see the module doc)."""
    d = artifact.directory
    mine, theirs = preprocessing.to_dict(), artifact.preprocessing.to_dict()
    diff = [k for k in ("input_size", "interpolation", "mean", "std", "crop_border") if mine[k] != theirs[k]]
    if diff:
        k = diff[0]
        raise ValueError(f"distill teacher {d}: its preprocessing differs from this run's ({k} is {theirs[k]!r} "
                         f"there but {mine[k]!r} here); the teacher must read the same inputs")
    data = artifact.metadata.get("data") or {}
    for key, here in (("val_fraction", val_fraction), ("split_seed", split_seed)):
        if data.get(key) != here:
            raise ValueError(f"distill teacher {d}: {key} is {data.get(key)!r} there but {here!r} here; a teacher "
                             "trained on another split may have trained on this run's validation films")
    if split_id is None:
        return
    prev = data.get("split") or {k: data[k] for k in SPLIT_IDENTITY_KEYS if k in data}
    if not any(k in prev for k in SPLIT_IDENTITY_KEYS):
        _logger.warning("distill teacher %s records no validation split; cannot check that its validation films "
                        "are this run's", d)
        return
    k = split_difference(prev, split_id)
    if k is not None:
        raise ValueError(f"distill teacher {d}: its validation split differs from this run's ({k}: {prev[k]!r} there, "
                         f"{split_id[k]!r} here; dataset folder there: {data.get('dataset_dir')})")


def check_teachers(teachers: list[Path], preprocessing: PreprocessConfig, val_fraction: float, split_seed: int,
                   split_id: dict[str, Any] | None) -> None:
    """Check every teacher folder before any film is decoded (fail in seconds, not minutes).

    Raises:
        ValueError: no teacher, or a teacher's files, preprocessing or split are not usable here
            (a missing or corrupt folder is reported as a ``ValueError`` naming it).
    """
    from deephealth.artifact import ModelArtifact, ModelArtifactError

    if not teachers:
        raise ValueError("distillation needs at least one teacher model folder (distill_teachers)")
    for d in teachers:
        try:
            artifact = ModelArtifact.load(d, verify=True)
        except (ModelArtifactError, OSError) as exc:
            raise ValueError(f"distill teacher {d}: {exc}") from exc
        _check_teacher(artifact, preprocessing, val_fraction, split_seed, split_id)


def teacher_targets(
    teachers: list[Path], images_u8: np.ndarray, labels: np.ndarray, preprocessing: PreprocessConfig, *,
    tau: float, val_fraction: float, split_seed: int, split_id: dict[str, Any] | None,
    num_threads: int | None = None, batch_size: int = 64,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Averaged softened teacher probabilities for each training film.

    Args:
        teachers: released model folders (``model.onnx`` + ``metadata.json``), at least one.
        images_u8: ``(N, S, S)`` uint8 training films after the contract's resize
            (:func:`deephealth.training.data.decode_records`).
        labels: ``(N,)`` int class indices of those films (for the provenance's accuracy).
        preprocessing: the run's contract; each teacher's must be the same.
        tau: distillation temperature (> 0), applied to the teachers' raw logits.
        val_fraction, split_seed: the run's split settings; split_id: its
            :func:`deephealth.training.loop.split_identity` (``None`` skips the identity check,
            for a subset run).
        num_threads: ONNX Runtime threads (``None``: all cores).
        batch_size: films per ONNX Runtime call.

    Returns:
        ``(targets, provenance)``: ``(N, 3)`` float32 probabilities, each row the mean over the
        teachers of ``softmax(logits / tau)`` (rows sum to 1), and per teacher ``{"path", "name",
        "version", "sha256", "train_accuracy"}`` (arg-max accuracy on these films, which it has
        trained on) for the run's summary.

    Raises:
        ValueError: no teacher, ``tau <= 0``, a teacher folder is missing or incomplete, or its
            preprocessing or split differs (the checks of :func:`check_teachers`).
    """
    from deephealth.artifact import ModelArtifactError
    from deephealth.calibration import softmax
    from deephealth.inference import Predictor

    if not tau > 0:
        raise ValueError(f"distill_temperature must be > 0, got {tau!r}")
    if not teachers:
        raise ValueError("distillation needs at least one teacher model folder (distill_teachers)")
    total = np.zeros((len(images_u8), 3), np.float64)
    provenance = []
    for d in teachers:
        try:
            p = Predictor(d, num_threads=num_threads)
        except ModelArtifactError as exc:  # e.g. ONNX Runtime cannot load the graph
            raise ValueError(f"distill teacher {d}: {exc}") from exc
        _check_teacher(p.artifact, preprocessing, val_fraction, split_seed, split_id)
        logits = np.concatenate([
            p.infer(normalize(images_u8[i : i + batch_size], preprocessing)[:, None])[0]
            for i in range(0, len(images_u8), batch_size)
        ]) if len(images_u8) else np.zeros((0, 3), np.float32)
        total += softmax(logits, tau)
        acc = float((logits.argmax(1) == labels).mean()) if len(logits) else float("nan")
        provenance.append({"path": str(d), "name": p.artifact.name, "version": p.artifact.version,
                           "sha256": p.artifact.sha256, "train_accuracy": acc})
        _logger.info("distillation teacher %s %s scored %d training films (accuracy %.3f)", p.artifact.name,
                     p.artifact.version, len(images_u8), acc)
    return (total / len(teachers)).astype(np.float32), provenance
