"""The web service's side of the audit trail: recording each prediction request and ``GET /api/v1/audit``.

Every ``POST /api/v1/predictions`` (answered or refused) is recorded by :func:`record_prediction`
through :class:`deephealth.audit.AuditLog` (off the request's path: a queue and a writer thread).
``GET /api/v1/audit`` lists the records (oldest first, or newest first with ``order=desc``; a time
window with ``since``/``until``); it is off (404) unless ``DEEPHEALTH_ADMIN_API_KEY`` is set, and
then needs ``Authorization: Bearer <key>`` (or ``X-API-Key: <key>``).
"""

from __future__ import annotations

import datetime as _dt
import hmac
import logging
import time
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from deephealth.audit import review_outcome
from deephealth.web.i18n import tr

logger = logging.getLogger(__name__)

router = APIRouter()

INTERFACE_HEADER = "x-deephealth-interface"
"""Request header by which the upload page says it is the page (recorded interface ``page``)."""


def record_prediction(request: Request, response: Any, start: float, created_at: _dt.datetime) -> None:
    """Queue the audit record of one prediction request; never raises.

    Args:
        request: the request (its ``state`` holds ``upload_data``, ``upload_name`` and
            ``input_format`` once read, and ``audit_reason``, the English one-line message of an
            error answer).
        response: the route's answer: the result dict (HTTP 200) or a ``JSONResponse`` (an error).
        start: ``time.perf_counter()`` when the request arrived.
        created_at: the arrival time, UTC.
    """
    audit = getattr(request.app.state, "audit", None)
    if audit is None:
        return
    try:
        latency_ms = (time.perf_counter() - start) * 1000.0
        artifact = request.app.state.predictor.artifact
        body = response if isinstance(response, dict) else None
        review, review_reason = review_outcome(body.get("decision") if body else None, body is not None)
        interface = "page" if request.headers.get(INTERFACE_HEADER, "").lower() == "page" else "api"
        status_code = 200 if body is not None else int(getattr(response, "status_code", 500))
        reason = None  # the English one-line message of an error answer (the file name is removed there)
        if status_code != 200:
            reason = getattr(request.state, "audit_reason", None)
            if reason is None and status_code >= 500:
                reason = "internal server error"
        audit.record(
            created_at=created_at,
            interface=interface,
            client=request.client.host if request.client else None,
            input_data=getattr(request.state, "upload_data", None),
            input_name=getattr(request.state, "upload_name", None),
            input_format=getattr(request.state, "input_format", None),
            model_name=artifact.name,
            model_version=artifact.version,
            model_sha256=artifact.sha256,
            label=body.get("label") if body else None,
            probabilities=body.get("probabilities") if body else None,
            gate=body.get("suitability") if body else getattr(request.state, "gate", None),
            review=review,
            review_reason=review_reason,
            latency_ms=latency_ms,
            status_code=status_code,
            reason=reason,
        )
    except Exception:  # the audit must never fail a prediction
        logger.exception("cannot record the audit of a prediction")


def audit_status(request: Request) -> dict[str, Any]:
    """The audit part of ``/healthz``: enabled, database (no password), written, failures, error."""
    audit = getattr(request.app.state, "audit", None)
    if audit is None:
        return {"enabled": False, "database": None, "written": 0, "failures": 0, "error": None}
    return audit.status()


def _authorised(request: Request, key: str) -> bool:
    auth = request.headers.get("authorization", "")
    given = auth[7:].strip() if auth.lower().startswith("bearer ") else request.headers.get("x-api-key", "")
    return bool(given) and hmac.compare_digest(given.encode(), key.encode())


@router.get("/api/v1/audit", summary="The audit trail (admin only)", tags=["audit"])
def get_audit(
    request: Request,
    since: _dt.datetime | None = Query(
        None, description="only records from this time on, inclusive (ISO 8601, e.g. 2026-12-03T08:00:00Z; UTC if no zone)"),
    until: _dt.datetime | None = Query(
        None, description="only records before this time, exclusive (ISO 8601; UTC if no zone); with since, the "
        "window [since, until)"),
    order: Literal["asc", "desc"] = Query(
        "asc", description="asc: oldest first (default; with since and limit, pages forward through the trail); "
        "desc: newest first (with limit, the latest records)"),
    limit: int = Query(100, ge=1, le=1000, description="most records returned (1-1000)"),
    review: bool | None = Query(
        None, description="true: only predictions flagged for review (the review band); false: only those "
        "not flagged; omitted: all (records without a prediction, or older than the review column, read null)"),
    study_uid: str | None = Query(
        None, max_length=64, pattern=r"^[0-9.]+$",
        description="only records of DICOM inputs from this study (Study Instance UID, e.g. 1.2.840.113619.2.55.3.1), "
        "exact match"),
) -> Any:
    """Audit records, oldest first (``order=desc``: newest first), at most ``limit``, optionally in
    the time window [``since``, ``until``), optionally of one DICOM study (``study_uid``): time, interface, client, input SHA-256 and format, the
    Study and SOP Instance UIDs of a DICOM input, model, label, probabilities, gate outcome, review
    flag and reason, latency, status code and, for a request that was not answered, the reason
    (the user's one-line message, in English, without the file name). Never images, patient names
    or file names.

    Off (404) unless ``DEEPHEALTH_ADMIN_API_KEY`` is set; then send ``Authorization: Bearer <key>``.
    """
    key = request.app.state.settings.admin_api_key
    if key is None or not key.get_secret_value():
        return JSONResponse(status_code=404, content={"detail": tr(request, "audit_off")})
    if not _authorised(request, key.get_secret_value()):
        return JSONResponse(status_code=401, content={"detail": tr(request, "audit_key")},
                            headers={"WWW-Authenticate": "Bearer"})
    audit = getattr(request.app.state, "audit", None)
    if audit is None:
        return JSONResponse(status_code=503, content={"detail": tr(request, "audit_disabled")})
    try:
        records = audit.query(since=since, until=until, order=order, limit=limit, review=review,
                              study_instance_uid=study_uid)
    except Exception as exc:
        logger.error("audit query failed: %s", exc)
        return JSONResponse(status_code=503, content={"detail": tr(request, "audit_unavailable")})
    return {"count": len(records), "records": records}
