"""The audit trail: one database row per prediction, through SQLAlchemy, schema by Alembic.

What is recorded is :class:`deephealth.audit.models.AuditRecord`: time, interface, client address,
the input's SHA-256, format and size, the model's name, version and SHA-256, the label, the
calibrated probabilities, the input gate's outcome, whether the prediction was flagged for review
(its ``decision.review`` and ``review_reason``: the review band), the latency and the status code;
for a DICOM input its Study and SOP Instance UIDs; for a request that was not answered, the reason
(the one-line message the user got, without the file's name, cut at :data:`REASON_MAX` characters).
Never the pixels, never a patient's name, ID or birth date (no other DICOM attribute is read), never a
file name (it is removed from the reason).

The UIDs are recorded as they are, not hashed: they are what lets an administrator find a refused
instance in the PACS, and like the input's SHA-256 they are pseudonymous keys that lead to a patient
only through the PACS itself, to which the trail adds nothing; so the trail's database needs the same
access control as the PACS (the API is admin-only). Only values that are valid UIDs (digits and dots,
at most 64 characters) are kept, so a malformed header cannot slip other text into these columns.

Database: ``DEEPHEALTH_DATABASE_URL`` (a SQLAlchemy URL), by default the SQLite file
``<state dir>/audit.sqlite3`` (:func:`deephealth.paths.state_dir`: ``DEEPHEALTH_STATE_DIR`` or
``~/.local/state/deephealth``). PostgreSQL: ``postgresql+psycopg://user:password@host/deephealth``
(install ``psycopg[binary]``). The schema is brought up to date by the Alembic migrations in
``deephealth/audit/migrations`` when the log opens.

Speed and failure: :meth:`AuditLog.record` only puts the record on an in-memory queue
(microseconds); a background thread hashes the input and writes the rows in batches. A database
that fails never fails a prediction: the error is logged (without the record's content) and
counted in :attr:`AuditLog.failures`, which ``/healthz`` reports.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import os
import queue
import re
import threading
import time
from importlib import resources
from pathlib import Path
from typing import Any

from deephealth.paths import state_dir

_logger = logging.getLogger(__name__)

DATABASE_FILE = "audit.sqlite3"
"""Name of the default SQLite file inside the state folder."""
FIELDS = (
    "interface", "client", "input_sha256", "input_format", "input_bytes", "model_name", "model_version",
    "model_sha256", "label", "probabilities", "gate", "review", "review_reason", "latency_ms", "status_code",
    "study_instance_uid", "sop_instance_uid", "reason",
)
"""Keyword fields accepted by :meth:`AuditLog.record` (plus ``input_data``, ``input_name`` and ``created_at``)."""
REASON_MAX = 500
"""Longest ``reason`` stored, in characters (a longer one is cut and ends with ``...``)."""
ORDERS = ("asc", "desc")
"""Orders of :meth:`AuditLog.query`: oldest first (``asc``, the default) or newest first (``desc``)."""
_UID = re.compile(r"[0-9]+(\.[0-9]+)*")
_CREDENTIALS = re.compile(r"(\b[a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s:@]+:[^/\s@]*@")
BATCH_MAX = 256
"""Most rows written in one transaction by the background writer."""


def gate_outcome(result: object) -> dict | None:
    """The input gate's outcome of a prediction or batch error as a dict, or ``None`` without a gate.

    Reads ``result.suitability`` (:class:`deephealth.gate.Suitability`, issue 10) when present:
    ``{"status": "accept"|"warn"|"refuse"|"unavailable", "reasons": [...], "scores": {...}, ...}``.
    """
    suitability = getattr(result, "suitability", None)
    if suitability is None:
        return None
    to_dict = getattr(suitability, "to_dict", None)
    return to_dict() if callable(to_dict) else dict(suitability)


def review_outcome(decision: dict | None, predicted: bool = True) -> tuple[bool | None, str | None]:
    """``(review, review_reason)`` of a prediction's ``decision`` dict, for the audit record.

    ``(None, None)`` when no prediction was made (``predicted`` false or no decision dict);
    otherwise ``decision["review"]`` as a bool (``False`` for a model without a review band) and,
    when flagged, ``decision["review_reason"]``.
    """
    if not predicted or not isinstance(decision, dict):
        return None, None
    review = bool(decision.get("review"))
    return review, (decision.get("review_reason") or None) if review else None


def failure_reason(message: str | None, name: str | None = None) -> str | None:
    """The ``reason`` column for a request that was not answered: ``message`` on one line, without ``name``.

    Args:
        message: the one-line message the user got (English), e.g. ``"scan.jpeg: empty file (0 bytes)"``.
        name: the input's file name or path as the message names it; its ``"<name>: "`` prefix is
            dropped and any other occurrence becomes ``<input>``, so no file name is stored (a
            file name often holds a patient's name). Credentials in a URL (``scheme://user:pw@``)
            are dropped too.

    Returns:
        At most :data:`REASON_MAX` characters, or ``None`` for an empty message.
    """
    if not message:
        return None
    text = " ".join(str(message).split())
    if name:
        name = " ".join(str(name).split())
        for variant in dict.fromkeys((name, name.replace("\\", "/").rsplit("/", 1)[-1])):
            if not variant:
                continue
            if text.startswith(variant + ": "):
                text = text[len(variant) + 2:]
            text = re.sub(r"(?<![\w.-])" + re.escape(variant) + r"(?![\w-])", "<input>", text)
    text = _CREDENTIALS.sub(r"\1", text)
    if len(text) > REASON_MAX:
        text = text[: REASON_MAX - 3].rstrip() + "..."
    return text or None


def dicom_uids(data: bytes | None) -> tuple[str | None, str | None]:
    """``(StudyInstanceUID, SOPInstanceUID)`` of a DICOM file's bytes; ``(None, None)`` if it is not DICOM.

    Only these two attributes are read (never the patient module); a value that is not a valid UID
    (digits and dots, at most 64 characters) reads ``None``. Never raises.
    """
    if not data:
        return None, None
    try:
        from deephealth.readers.formats import detect_format

        if detect_format(data).name != "DICOM":
            return None, None
        import pydicom

        ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True, force=True,
                             specific_tags=["StudyInstanceUID", "SOPInstanceUID"])
        return _raw_uid(ds, "StudyInstanceUID"), _raw_uid(ds, "SOPInstanceUID")
    except Exception:  # a corrupt header, pydicom missing: the record is written without UIDs
        _logger.debug("audit: no DICOM UIDs read", exc_info=True)
        return None, None


def _raw_uid(ds: Any, keyword: str) -> str | None:
    """A dataset's UID attribute read from its raw bytes (no pydicom value conversion, so an invalid
    value is dropped here rather than warned about by pydicom in the writer thread)."""
    elem = ds.get_item(keyword)
    value = None if elem is None else elem.value
    if isinstance(value, (bytes, bytearray)):
        value = bytes(value).decode("ascii", errors="replace")
    return _valid_uid(value)


def _valid_uid(value: Any) -> str | None:
    """``value`` as a UID string if it is one (PS3.5 9.1: digits and dots, at most 64 characters)."""
    if value is None:
        return None
    text = str(value).strip().rstrip("\x00").strip()
    return text if len(text) <= 64 and _UID.fullmatch(text) else None


def database_url() -> str:
    """``DEEPHEALTH_DATABASE_URL``, or ``sqlite:///<state dir>/audit.sqlite3``."""
    env = os.environ.get("DEEPHEALTH_DATABASE_URL")
    if env:
        return env
    return f"sqlite:///{state_dir() / DATABASE_FILE}"


def redact_url(url: str) -> str:
    """The URL without its password, for logs and ``/healthz``."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return "<unparsable database URL>"


def upgrade_database(engine: Any) -> None:
    """Run the Alembic migrations up to ``head`` on ``engine``'s database.

    Raises:
        sqlalchemy.exc.SQLAlchemyError: if the database cannot be reached or migrated.
    """
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(resources.files("deephealth.audit") / "migrations"))
    with engine.begin() as conn:
        cfg.attributes["connection"] = conn
        command.upgrade(cfg, "head")


class AuditLog:
    """Writes audit records in a background thread; reading is synchronous.

    Args:
        url: SQLAlchemy database URL; ``None`` means :func:`database_url`.

    The constructor never raises: if the database cannot be opened or migrated, the error is
    logged, :attr:`error` says why and every record counts as a failure.

    Attributes:
        url: the database URL (with password; use :func:`redact_url` to show it).
        written: rows written so far.
        failures: records that could not be written (database errors, or no database).
        error: why the database is unusable (``None`` while it works).
    """

    def __init__(self, url: str | None = None) -> None:
        self.url = url or database_url()
        self.written = 0
        self.failures = 0
        self.error: str | None = None
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._pending = 0
        self._lock = threading.Lock()
        self._idle = threading.Condition(self._lock)
        self.engine = None
        try:
            from sqlalchemy import create_engine

            if self.url.startswith("sqlite:///"):
                Path(self.url[len("sqlite:///"):]).parent.mkdir(parents=True, exist_ok=True)
            self.engine = create_engine(self.url, pool_pre_ping=True)
            for attempt in range(3):  # several server workers may migrate the same database at once
                try:
                    upgrade_database(self.engine)
                    break
                except Exception:
                    if attempt == 2:
                        raise
                    time.sleep(0.5)
        except Exception as exc:  # ImportError, OSError, SQLAlchemyError...
            self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            _logger.error("audit trail unavailable (%s): %s", redact_url(self.url), self.error)
        self._thread = threading.Thread(target=self._writer, name="deephealth-audit", daemon=True)
        self._thread.start()

    # -- writing -----------------------------------------------------------------------------------

    def record(
        self,
        *,
        input_data: bytes | None = None,
        input_name: str | None = None,
        created_at: _dt.datetime | None = None,
        **fields: Any,
    ) -> None:
        """Queue one record; returns at once and never raises.

        Args:
            input_data: the input file's bytes; only their SHA-256 and size are stored, and for a
                DICOM file its Study and SOP Instance UIDs unless given (:func:`dicom_uids`), all
                computed in the writer thread, off the request's path.
            input_name: the input's file name or path as ``reason`` names it; it is removed from
                the reason (:func:`failure_reason`) and stored nowhere.
            created_at: when the request arrived (default: now, UTC).
            **fields: the columns of :class:`~deephealth.audit.models.AuditRecord` (see :data:`FIELDS`);
                ``reason`` is the user's one-line message, made safe and cut by :func:`failure_reason`.
        """
        try:
            row = {k: fields.get(k) for k in FIELDS}
            row["created_at"] = created_at or _dt.datetime.now(_dt.timezone.utc)
            with self._lock:
                self._pending += 1
            self._queue.put((row, input_data, input_name))
        except Exception:  # pragma: no cover - defensive: the audit must never break a prediction
            _logger.exception("cannot queue an audit record")

    def _writer(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            batch = [item]
            while len(batch) < BATCH_MAX:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            rows = []
            for row, data, name in batch:
                try:
                    if data is not None:
                        row["input_sha256"] = hashlib.sha256(data).hexdigest()
                        row["input_bytes"] = len(data)
                        if row["study_instance_uid"] is None and row["sop_instance_uid"] is None:
                            row["study_instance_uid"], row["sop_instance_uid"] = dicom_uids(data)
                    row["study_instance_uid"] = _valid_uid(row["study_instance_uid"])
                    row["sop_instance_uid"] = _valid_uid(row["sop_instance_uid"])
                    row["reason"] = failure_reason(row["reason"], name)
                except Exception:  # pragma: no cover - defensive: write the record without these
                    _logger.exception("audit: cannot prepare a record's UIDs or reason")
                    row["study_instance_uid"] = row["sop_instance_uid"] = row["reason"] = None
                rows.append(row)
            ok = self._insert(rows)
            with self._lock:
                if ok:
                    self.written += len(rows)
                else:
                    self.failures += len(rows)
                self._pending -= len(rows)
                if self._pending == 0:
                    self._idle.notify_all()

    def _insert(self, rows: list[dict]) -> bool:
        if self.engine is None:
            return False
        from sqlalchemy import insert

        from deephealth.audit.models import AuditRecord

        try:
            with self.engine.begin() as conn:
                conn.execute(insert(AuditRecord), rows)
            if self.error is not None:
                _logger.warning("audit trail writes again (%s)", redact_url(self.url))
                self.error = None
            return True
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
            # The record's content is not logged: only that it was lost.
            _logger.error("audit trail: %d record(s) not written: %s", len(rows), self.error)
            return False

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every queued record is written or failed; ``False`` on timeout."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self._idle.wait(left)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Write what is queued, stop the writer thread and release the database connections."""
        self.flush(timeout)
        self._queue.put(None)
        self._thread.join(timeout)
        if self.engine is not None:
            self.engine.dispose()

    # -- reading -----------------------------------------------------------------------------------

    def query(
        self,
        since: _dt.datetime | None = None,
        limit: int = 100,
        review: bool | None = None,
        *,
        until: _dt.datetime | None = None,
        order: str = "asc",
        study_instance_uid: str | None = None,
    ) -> list[dict]:
        """At most ``limit`` records created from ``since`` (inclusive) to ``until`` (exclusive).

        Args:
            since: earliest ``created_at`` (inclusive); a naive datetime is UTC. ``None``: no bound.
            limit: most records returned.
            review: ``True`` keeps only predictions flagged for review, ``False`` only those not
                flagged (records without a prediction, or written before the column existed, are
                null and match neither); ``None`` keeps all.
            until: ``created_at`` before which to stop (exclusive, so consecutive windows do not
                overlap); a naive datetime is UTC. ``None``: no bound.
            order: ``"asc"`` oldest first (the default: ``since`` and ``limit`` then page forward
                through the trail) or ``"desc"`` newest first (the ``limit`` latest records).
                Records are ordered as written (their ``id``).
            study_instance_uid: keep only records of inputs from this DICOM study (Study Instance
                UID, 0020,000D, exact match); ``None`` keeps all.

        Raises:
            ValueError: if ``order`` is not ``"asc"`` or ``"desc"``.
            RuntimeError: if the database is unavailable (message says why).
            sqlalchemy.exc.SQLAlchemyError: if the query fails.
        """
        if order not in ORDERS:
            raise ValueError(f"order must be one of {', '.join(ORDERS)}, got {order!r}")
        if self.engine is None:
            raise RuntimeError(f"audit trail unavailable: {self.error}")
        from sqlalchemy import select
        from sqlalchemy.orm import Session

        from deephealth.audit.models import AuditRecord

        self.flush(2.0)
        key = AuditRecord.id.desc() if order == "desc" else AuditRecord.id
        stmt = select(AuditRecord).order_by(key).limit(limit)
        if since is not None:
            stmt = stmt.where(AuditRecord.created_at >= _utc(since))
        if until is not None:
            stmt = stmt.where(AuditRecord.created_at < _utc(until))
        if review is not None:
            stmt = stmt.where(AuditRecord.review.is_(review))
        if study_instance_uid is not None:
            stmt = stmt.where(AuditRecord.study_instance_uid == study_instance_uid)
        with Session(self.engine) as session:
            return [r.to_dict() for r in session.scalars(stmt)]

    def status(self) -> dict[str, Any]:
        """``{"enabled": True, "database": redacted URL, "written": n, "failures": n, "error": str|None}``."""
        with self._lock:
            return {"enabled": True, "database": redact_url(self.url), "written": self.written,
                    "failures": self.failures, "error": self.error}


def _utc(t: _dt.datetime) -> _dt.datetime:
    """``t`` in UTC (a naive datetime is taken as UTC): rows are stored in UTC, and SQLite keeps no zone."""
    return t.replace(tzinfo=_dt.timezone.utc) if t.tzinfo is None else t.astimezone(_dt.timezone.utc)


def open_audit_log(url: str | None = None) -> AuditLog | None:
    """An :class:`AuditLog`, or ``None`` (logged) if SQLAlchemy/Alembic are not installed."""
    try:
        import alembic  # noqa: F401
        import sqlalchemy  # noqa: F401
    except ImportError as exc:
        _logger.error("audit trail needs SQLAlchemy and Alembic (pip install 'deephealth[audit]'): %s", exc)
        return None
    return AuditLog(url)
