"""HTTP routes: the upload page, the REST API (``/api/v1/...``) and the health check.

Every error answers JSON ``{"detail": "..."}`` naming the problem: 413 upload over the limit, 415 a
format the readers do not read, 422 an unreadable or unsuitable image (the reader's message, which
names the file). Uploaded bytes stay in memory (see :mod:`deephealth.web.upload`) and are never
logged.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
from fastapi import APIRouter, Query, Request, Response
from fastapi.responses import FileResponse, JSONResponse

from deephealth import labels
from deephealth.gate import UnsuitableImageError
from deephealth.readers import ImageReadError, UnsupportedFormatError, detect_format
from deephealth.rendering import gray_png, overlay_png, shrink
from deephealth.web.audit import audit_status, record_prediction
from deephealth.web.i18n import localize_prediction, request_language, translate_text
from deephealth.web.schemas import ErrorResponse, Health, ModelCard, PredictionPublic, UnsuitableResponse
from deephealth.web.upload import FILE_FIELD, SUPPORTED_FORMATS_TEXT, UploadError, read_upload

logger = logging.getLogger(__name__)

STATIC_DIR = Path(str(resources.files("deephealth.web") / "static"))
"""Folder of the upload page's files (package data)."""


router = APIRouter()

_ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorResponse, "description": "upload over the size limit (DEEPHEALTH_MAX_UPLOAD_MB)"},
    415: {"model": ErrorResponse, "description": f"not a {SUPPORTED_FORMATS_TEXT} file, or not multipart/form-data"},
    422: {"model": UnsuitableResponse,
          "description": "unreadable image (e.g. truncated, CT, empty), or refused by the input gate (then with "
          "a suitability object; allow_unsuitable=true classifies it anyway)"},
}

_UPLOAD_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": [FILE_FIELD],
                    "properties": {
                        FILE_FIELD: {
                            "type": "string",
                            "format": "binary",
                            "description": f"the chest X-ray: {SUPPORTED_FORMATS_TEXT}",
                        },
                        "heatmap": {"type": "boolean", "description": "same as the heatmap query parameter"},
                        "preview": {"type": "boolean", "description": "same as the preview query parameter"},
                        "allow_unsuitable": {"type": "boolean",
                                             "description": "same as the allow_unsuitable query parameter"},
                    },
                }
            }
        },
    }
}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def _form_flag(fields: dict[str, str], name: str, default: bool) -> bool:
    """A boolean form field (``true``/``false``/``1``/``0``/``on``/``off``); 422 for anything else."""
    if name not in fields:
        return default
    value = fields[name].strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise UploadError(422, f"form field {name!r} must be true or false, got {fields[name][:20]!r}")


def _predict(
    request: Request, data: bytes, filename: str, heatmap: bool, preview: bool, allow_unsuitable: bool = False
) -> dict[str, Any]:
    """Classify one uploaded file (runs in a worker thread).

    Raises ImageReadError for bad images, UnsuitableImageError for images the gate refuses.
    """
    predictor = request.app.state.predictor
    start = time.perf_counter()
    # The Prediction keeps the decoded image only when a heatmap is computed; the class activation
    # map comes from the same network run, so asking for it to get the preview costs little.
    pred = predictor.predict(data, name=filename, heatmap=heatmap or preview, allow_unsuitable=allow_unsuitable)
    image = shrink(pred.image) if (heatmap or preview) else None  # (h, w), at most 1024 a side
    heatmap_b64 = None
    if heatmap:
        heat = shrink(pred.heatmap)  # aligned with the decoded image, so with `image` too
        heatmap_b64 = base64.b64encode(overlay_png(image, heat)).decode("ascii")
    preview_b64 = base64.b64encode(gray_png(image)).decode("ascii") if preview else None
    latency_ms = (time.perf_counter() - start) * 1000.0
    artifact = predictor.artifact
    class_names = list(artifact.class_names)
    probs = {name: float(pred.probabilities[name]) for name in class_names}
    info = pred.info
    return {
        "label": pred.label,
        "label_index": int(pred.label_index),
        "label_description": labels.CLASS_DESCRIPTIONS.get(pred.label, pred.label),
        "probabilities": probs,
        "classes": [
            {
                "index": i,
                "name": name,
                "description": labels.CLASS_DESCRIPTIONS.get(name, name),
                "probability": probs[name],
            }
            for i, name in enumerate(class_names)
        ],
        "decision": pred.decision,
        "warnings": list(pred.warnings),
        "suitability": pred.suitability.to_dict() if pred.suitability is not None else None,
        "model": {"name": artifact.name, "version": artifact.version, "sha256": artifact.sha256},
        "image": {
            "filename": filename,
            "format": str(getattr(info, "format", "unknown")),
            "width": int(getattr(info, "width", 0)),
            "height": int(getattr(info, "height", 0)),
            "bit_depth": getattr(info, "bit_depth", None),
            "photometric_interpretation": getattr(info, "photometric_interpretation", None),
            "modality": getattr(info, "modality", None),
            "view_position": getattr(info, "view_position", None),
            "size_bytes": len(data),
            "border_crop": (dict(zip(("top", "bottom", "left", "right"), pred.border_crop))
                            if pred.border_crop else None),
        },
        "heatmap_png": heatmap_b64,
        "preview_png": preview_b64,
        "latency_ms": round(latency_ms, 2),
        "intended_use": labels.INTENDED_USE,
    }


@router.post(
    "/api/v1/predictions",
    response_model=PredictionPublic,
    responses=_ERRORS,
    openapi_extra=_UPLOAD_BODY,
    summary="Classify a chest X-ray",
    tags=["predictions"],
)
async def create_prediction(
    request: Request,
    response: Response,
    heatmap: bool = Query(False, description="add a base64 PNG of the class activation heatmap over the image"),
    preview: bool = Query(False, description="add a base64 PNG of the decoded image (useful for DICOM)"),
    allow_unsuitable: bool = Query(
        False, description="classify an image the input gate refuses anyway (the suitability object keeps the flags)"
    ),
) -> Any:
    """Classify one chest X-ray sent as multipart field ``file`` (JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP).

    Returns the predicted class on the 0/1/2 scale (0 no pneumonia, 1 bacterial, 2 viral), the
    calibrated probability of each class, warnings about the image and the model's name and
    version, and the input gate's verdict (``suitability``). An image the gate refuses (not a
    frontal chest radiograph) is answered 422 with the reasons, unless ``allow_unsuitable=true``.
    Decision support, not a diagnosis. Human-readable texts (``detail``, ``warnings``,
    descriptions, ``intended_use``) are in English or Spanish after ``Accept-Language``; every
    request is recorded in the audit trail.
    """
    start, created_at = time.perf_counter(), _dt.datetime.now(_dt.timezone.utc)
    try:
        result = await _classify_upload(request, heatmap, preview, allow_unsuitable)
    except Exception:  # a bug: the app's handler answers 500; the audit still records the request
        record_prediction(request, JSONResponse(status_code=500, content={}), start, created_at)
        raise
    record_prediction(request, result, start, created_at)
    lang = request_language(request)
    if isinstance(result, dict):
        response.headers["Content-Language"] = lang
        return localize_prediction(result, lang)
    result.headers["Content-Language"] = lang
    return result


async def _classify_upload(
    request: Request, heatmap: bool, preview: bool, allow_unsuitable: bool
) -> dict[str, Any] | JSONResponse:
    """The prediction (a dict) or the error response for one upload request."""
    settings = request.app.state.settings
    try:
        upload = await read_upload(
            request.headers.get("content-type"),
            request.headers.get("content-length"),
            request.stream(),
            settings.max_upload_bytes,
        )
        heatmap = _form_flag(upload.fields, "heatmap", heatmap)
        preview = _form_flag(upload.fields, "preview", preview)
        allow_unsuitable = _form_flag(upload.fields, "allow_unsuitable", allow_unsuitable)
    except UploadError as exc:
        request.state.upload_name = exc.filename  # for the audit: removed from the recorded reason
        return _error(request, exc.status_code, exc.detail)
    request.state.upload_bytes = len(upload.data)
    request.state.upload_data = upload.data  # for the audit's SHA-256 (the bytes are never stored)
    name = request.state.upload_name = upload.filename  # the audit removes it from the recorded reason
    if not upload.data:
        return _error(request, 422, f"{name}: empty file (0 bytes)")
    found = detect_format(upload.data)  # the readers' one format policy, checked before queueing
    request.state.input_format = found.name
    if not found.accepted:
        return _error(request, 415, f"{name}: {found.refusal()}")
    limiter = request.app.state.limiter
    if limiter is None:  # created on first use, inside the event loop
        limiter = request.app.state.limiter = anyio.CapacityLimiter(settings.max_concurrency)
    try:
        # CPU-bound: in a worker thread, so the event loop keeps serving; at most
        # max_concurrency at once (ONNX Runtime's InferenceSession.run is thread-safe).
        body = await anyio.to_thread.run_sync(
            _predict, request, upload.data, name, heatmap, preview, allow_unsuitable, limiter=limiter
        )
    except UnsupportedFormatError as exc:
        return _error(request, 415, _one_line(str(exc)))
    except ImageReadError as exc:
        return _error(request, 422, _one_line(str(exc)))
    except UnsuitableImageError as exc:
        logger.debug("refused by the input gate: %s", exc)
        lang = request_language(request)
        request.state.gate = gate = exc.suitability.to_dict()  # for the audit
        request.state.audit_reason = _one_line(str(exc))  # for the audit, in English
        gate = {**gate, "reasons": [translate_text(r, lang) for r in gate["reasons"]]}
        return JSONResponse(status_code=422, content={"detail": translate_text(_one_line(str(exc)), lang),
                                                      "suitability": gate})
    return body


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _error(request: Request, status: int, detail: str) -> JSONResponse:
    # The detail names the client's file, which may itself be personal data: debug level only.
    logger.debug("rejected upload: %s %s", status, detail)
    request.state.audit_reason = detail  # for the audit, in English (the file name is removed there)
    return JSONResponse(status_code=status, content={"detail": translate_text(detail, request_language(request))})


def _model_card(request: Request) -> dict[str, Any]:
    """Build the model card from metadata.json and, if present, ``report/metrics.json``."""
    artifact = request.app.state.predictor.artifact
    meta: dict[str, Any] = dict(artifact.metadata)
    test_metrics = meta.get("test_metrics")
    test_review_band = None
    report = Path(artifact.directory) / "report" / "metrics.json"
    if report.is_file():
        try:
            data = json.loads(report.read_text())
            test_metrics = data.get("headline", data) if isinstance(data, dict) else data
            band = data.get("review_band") if isinstance(data, dict) else None
            if isinstance(band, dict):  # what the band costs on the test split, next to the headline
                test_review_band = {k: band.get(k) for k in ("n", "n_review", "review_rate", "by_reason",
                                                             "review_as_error", "not_flagged")}
        except (OSError, json.JSONDecodeError) as exc:
            logger.warning("cannot read %s: %s", report, exc)
    return {
        "name": artifact.name,
        "version": artifact.version,
        "sha256": artifact.sha256,
        "classes": [
            {"index": i, "name": n, "description": labels.CLASS_DESCRIPTIONS.get(n, n)}
            for i, n in enumerate(artifact.class_names)
        ],
        "temperature": artifact.temperature,
        "preprocessing": meta.get("preprocessing", {}),
        "architecture": meta.get("architecture"),
        "training": _no_absolute_paths(meta.get("training"), artifact.directory),
        "data": _no_absolute_paths(meta.get("data"), artifact.directory),
        "validation_metrics": meta.get("validation_metrics"),
        "test_metrics": test_metrics,
        "test_review_band": test_review_band,
        "summary": meta.get("summary"),
        "gate": _no_absolute_paths(meta.get("gate"), artifact.directory),
        "operating_point": artifact.operating_point,
        "initialisation": meta.get("initialisation"),
        "adaptation": _adaptation_summary(meta.get("adaptation")),
        "created": meta.get("created"),
        "intended_use": meta.get("intended_use") or labels.INTENDED_USE,
    }


def _no_absolute_paths(value: Any, model_dir: Path | str) -> Any:
    """A copy of a metadata record whose ``dataset_dir`` / ``data_dir`` values are never absolute paths
    of the machine that exported the model (models exported before 0.3.0 recorded them absolute):
    :func:`deephealth.paths.portable_path` relative to the model folder, else ``<...>/<last two parts>``."""
    from deephealth.paths import portable_path

    if isinstance(value, dict):
        return {k: portable_path(v, model_dir) if k in ("dataset_dir", "data_dir") and isinstance(v, str)
                else _no_absolute_paths(v, model_dir) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_absolute_paths(v, model_dir) for v in value]
    return value


def _adaptation_summary(adaptation: Any) -> dict[str, Any] | None:
    """A site-adapted model's provenance without the per-film hash list (that stays in metadata.json)."""
    if not isinstance(adaptation, dict):
        return None
    return {k: v for k, v in adaptation.items() if k != "images"}


@router.get("/api/v1/model", response_model=ModelCard, summary="The model card", tags=["model"])
def get_model(request: Request) -> Any:
    """The loaded model's card: classes, version, calibration, metrics and intended use."""
    card = getattr(request.app.state, "model_card", None)
    if card is None:
        card = request.app.state.model_card = _model_card(request)
    return card


def health_problems(settings_audit: bool, audit: dict[str, Any]) -> list[str]:
    """Why the service is degraded: what it must do but cannot, while it still classifies.

    Args:
        settings_audit: whether the audit trail is switched on (``DEEPHEALTH_AUDIT``).
        audit: the audit part of ``/healthz`` (:func:`deephealth.web.audit.audit_status`).

    Returns:
        One sentence per problem, empty when everything works: the audit trail is on but could not
        be opened (its packages are missing), or its last write failed (``audit["error"]``, until a
        later write succeeds; the records in between are lost, ``audit["failures"]`` counts them).
    """
    if not settings_audit:
        return []
    if not audit.get("enabled"):
        return ["audit trail: switched on but not available (SQLAlchemy/Alembic missing?): predictions are not recorded"]
    if audit.get("error"):
        return [f"audit trail: records cannot be written, {audit.get('failures', 0)} lost so far ({audit['error']})"]
    return []


@router.get("/healthz", response_model=Health, summary="Liveness and readiness", tags=["service"])
def healthz(request: Request) -> Any:
    """``status`` is ``ok`` when the model is loaded and the audit trail records, ``degraded`` (with
    ``problems``) when predictions are served but the audit trail is switched on and cannot record
    them: its last write failed (until a write succeeds again) or it could not be opened. Always
    HTTP 200 while the service answers, so a load balancer keeps it in service: alert on ``status``.
    Also the model's name and version, the upload limit and the audit trail's state (records
    written, write failures: a failing audit database never fails a prediction)."""
    artifact = request.app.state.predictor.artifact
    audit = audit_status(request)
    problems = health_problems(request.app.state.settings.audit, audit)
    return {
        "status": "degraded" if problems else "ok",
        "problems": problems,
        "model": artifact.name,
        "version": artifact.version,
        "max_upload_bytes": request.app.state.settings.max_upload_bytes,
        "audit": audit,
    }


@router.get("/", include_in_schema=False)
def index() -> FileResponse:
    """The upload page."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html")
