"""The per-file result record shared by ``deephealth predict`` (JSON) and ``deephealth batch`` (Parquet).

:func:`result_record` is one ``predict --format json`` row: the prediction's (or error's)
:meth:`~deephealth.inference.Prediction.to_dict` plus ``model`` (name, version, SHA-256 of
``model.onnx``), so a saved result always names the model that produced it (``predict`` adds
``intended_use``, the same text in every row, which :func:`flat_record` has no column for).

:func:`flat_record` turns that row into one flat row of a results table (Parquet) with fixed
columns (:data:`FLAT_FIELDS`): nested objects whose keys vary between models (``decision``,
``image``, the gate's ``scores``) are kept as JSON text, the rest as plain columns. Nothing is
dropped, so :func:`flat_record` rows carry the same information as the JSON rows. Two fields of
the decision are also columns of their own, ``review`` (the film lies in the model's review band)
and ``review_reason`` (why, in words), so that flagged films can be filtered and read without
parsing JSON.

Serving path: standard library only.
"""

from __future__ import annotations

import json
from typing import Any

from deephealth.labels import CLASS_NAMES

FLAT_FIELDS: tuple[str, ...] = (
    "source",  # str: the input as listed (absolute path or URI in batch)
    "ok",  # bool: classified
    "label",  # str | None: normal / bacterial / viral
    "label_index",  # int | None: 0 normal, 1 bacterial, 2 viral
    "probabilities",  # {class name: float} | None: calibrated probabilities (a struct column)
    "logits",  # list[float] | None
    "decision",  # str | None: JSON of the operating-point decision
    "review",  # bool | None: decision.review, the film is borderline (in the review band): have it reviewed
    "review_reason",  # str | None: decision.review_reason, why it is flagged (None: not flagged or not classified)
    "suitability_status",  # str | None: accept / warn / refuse / unavailable (None: no verdict)
    "suitability_reasons",  # list[str]
    "suitability",  # str | None: JSON of the gate's full verdict (status, reasons, scores)
    "warnings",  # list[str]
    "image",  # str | None: JSON of what the reader learned (format, size, border crop)
    "error",  # str | None: one line naming the file and the problem
    "model_name",
    "model_version",
    "model_sha256",
)
"""Columns of a flat result row, in order (``batch`` adds ``content_sha256`` and ``scored_at``)."""


def model_info(artifact: Any) -> dict[str, str]:
    """``{"name", "version", "sha256"}`` of a :class:`deephealth.artifact.ModelArtifact`."""
    return {"name": artifact.name, "version": artifact.version, "sha256": artifact.sha256}


def result_record(result: Any, artifact: Any) -> dict[str, Any]:
    """One ``predict --format json`` row.

    Args:
        result: a :class:`~deephealth.inference.Prediction` or
            :class:`~deephealth.inference.PredictionError` (anything with ``to_dict()``), or a
            dict already made by ``to_dict()``.
        artifact: the model that produced it (:class:`deephealth.artifact.ModelArtifact`).

    Returns:
        The result's dict plus ``"model": {"name", "version", "sha256"}``.
    """
    d = result if isinstance(result, dict) else result.to_dict()
    return {**d, "model": model_info(artifact)}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def flat_record(record: dict[str, Any]) -> dict[str, Any]:
    """A :func:`result_record` row as a flat row with the columns :data:`FLAT_FIELDS`.

    Args:
        record: a ``predict --format json`` row (``ok`` True with label and probabilities, or
            False with ``error``; ``suitability`` and ``model`` when known).

    Returns:
        ``{column: value}`` for every column of :data:`FLAT_FIELDS`; missing values are ``None``
        (lists: empty). ``review`` is ``None`` for a film not classified; ``review_reason`` is
        ``None`` for a film not classified or not flagged.
    """
    ok = bool(record.get("ok"))
    probs = record.get("probabilities") or {}
    suit = record.get("suitability")
    model = record.get("model") or {}
    logits = record.get("logits")
    row: dict[str, Any] = {
        "source": str(record["source"]),
        "ok": ok,
        "label": record.get("label") if ok else None,
        "label_index": int(record["label_index"]) if ok else None,
        "probabilities": {c: float(probs[c]) for c in CLASS_NAMES} if ok else None,
        "logits": [float(v) for v in logits] if ok and logits is not None else None,
        "decision": _json(record.get("decision")) if ok else None,
        "review": bool((record.get("decision") or {}).get("review")) if ok else None,
        "review_reason": (record.get("decision") or {}).get("review_reason") if ok else None,
        "suitability_status": suit["status"] if suit else None,
        "suitability_reasons": list(suit["reasons"]) if suit else [],
        "suitability": _json(suit),
        "warnings": list(record.get("warnings") or []),
        "image": _json(record.get("image")),
        "error": record.get("error") if not ok else None,
        "model_name": model.get("name"),
        "model_version": model.get("version"),
        "model_sha256": model.get("sha256"),
    }
    return row
