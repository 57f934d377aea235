"""The audit trail's table, as a SQLAlchemy 2.0 declarative model (https://docs.sqlalchemy.org/).

The schema itself is created and changed only by the Alembic migrations in
``deephealth/audit/migrations/versions``; this model must match the latest one.
"""

from __future__ import annotations

import datetime as _dt

from sqlalchemy import JSON, Boolean, DateTime, Float, Integer, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


class Base(DeclarativeBase):
    """Declarative base of the audit tables."""


class AuditRecord(Base):
    """One prediction request (never the image, never a patient's name or ID, never a file name).

    Columns:
        id: row number.
        created_at: when the request arrived, UTC (timezone-aware).
        interface: ``api``, ``page`` (the web page), ``cli`` or ``pacs``.
        client: the client's IP address (web), ``local`` (CLI) or the DICOMweb URL (pacs).
        input_sha256: hex SHA-256 of the uploaded/read file's bytes; null if nothing was read.
        input_format: ``JPEG``, ``PNG``, ``TIFF``, ``DICOM``...; null if unknown.
        input_bytes: the input's size in bytes; null if nothing was read.
        model_name, model_version, model_sha256: the model that answered (SHA-256 of its ONNX file).
        label: ``normal``, ``bacterial`` or ``viral``; null when no prediction was made.
        probabilities: calibrated ``{class: probability}`` (JSON); null when no prediction was made.
        gate: the input gate's outcome (JSON) when the service has one; null otherwise.
        review: the prediction lies in the model's review band (``decision.review``: borderline,
            have it reviewed); false when not (or the model has no band); null when no prediction
            was made and for records written before migration 0002. Indexed (migration 0003) for
            the ``review`` filter of :meth:`deephealth.audit.AuditLog.query`.
        review_reason: with ``review`` true, which decision is borderline, in words
            (``decision.review_reason``); null otherwise.
        study_instance_uid, sop_instance_uid: the input's Study Instance UID (0020,000D) and SOP
            Instance UID (0008,0018) when it is DICOM (a PACS instance, a ``.dcm`` file, an upload),
            so that a record leads to its instance in the PACS; null for other formats, for a DICOM
            file whose header has no valid UID, and for records written before migration 0004.
        reason: why the request was not answered (``status_code`` other than 200): the one-line
            message the user got, in English (like ``review_reason``), without the input's file
            name, at most :data:`deephealth.audit.REASON_MAX` characters; null for an answered
            request and for records written before migration 0004.
        latency_ms: time from request to answer, in milliseconds.
        status_code: HTTP status of the answer (CLI/pacs: 200 classified, 422 unreadable image,
            502 PACS error, 500 other).
    """

    __tablename__ = "audit_log"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    created_at: Mapped[_dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    interface: Mapped[str] = mapped_column(String(16))
    client: Mapped[str | None] = mapped_column(String(255), nullable=True)
    input_sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    input_format: Mapped[str | None] = mapped_column(String(16), nullable=True)
    input_bytes: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(64))
    model_sha256: Mapped[str] = mapped_column(String(64))
    label: Mapped[str | None] = mapped_column(String(16), nullable=True)
    probabilities: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    gate: Mapped[dict | None] = mapped_column(JSON(none_as_null=True), nullable=True)
    review: Mapped[bool | None] = mapped_column(Boolean, nullable=True, index=True)  # migration 0003
    review_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)  # migration 0004
    sop_instance_uid: Mapped[str | None] = mapped_column(String(64), nullable=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Float)
    status_code: Mapped[int] = mapped_column(Integer)

    def to_dict(self) -> dict:
        """JSON-able dict of every column (``created_at`` as ISO 8601 UTC)."""
        d = {c.name: getattr(self, c.name) for c in self.__table__.columns}
        t = d["created_at"]
        if t is not None and t.tzinfo is None:  # SQLite returns naive datetimes; they are UTC
            t = t.replace(tzinfo=_dt.timezone.utc)
        d["created_at"] = t.isoformat() if t is not None else None
        return d
