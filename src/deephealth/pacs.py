"""Classify the chest radiographs in a PACS and store the results back, over DICOMweb.

One run (``deephealth pacs``):

1. **QIDO-RS** (DICOM PS3.18 10.6): find the CR and DX series, of one study (``study``), of the
   studies from a date on (``since``, matched on Study Date), or of every study, and their
   instances;
2. skip each instance that already has our SR for the same model name and version (an SR series
   whose Series Description is :func:`deephealth.dicom_output.series_description` and whose
   evidence names the instance), so running again changes nothing;
3. **WADO-RS** (PS3.18 10.4): retrieve the instance; classify it with the
   :class:`~deephealth.inference.Predictor` (with the heatmap);
4. **STOW-RS** (PS3.18 10.5): store the Comprehensive SR and the Secondary Capture made by
   :func:`deephealth.dicom_output.build_dicom_result` into the source study.

An instance the input gate refuses (a lateral view, not a radiograph, another body part... see
:mod:`deephealth.gate`) gets **nothing** stored back: no SR finding, no Secondary Capture. It is
counted ``refused``, its reason is in its :class:`InstanceOutcome` and in the audit trail (status
422 with the gate's outcome), and a later run looks at it again (it has no SR to skip it by), with
the same verdict. A failure on one instance (unreadable image, a refused store...) is reported in
its :class:`InstanceOutcome` and the others go on. The DICOMweb client is dicomweb-client
(https://github.com/ImagingDataCommons/dicomweb-client).
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

from deephealth.audit import gate_outcome
from deephealth.dicom_output import build_dicom_result, read_sr, series_description

_logger = logging.getLogger(__name__)

RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX")
"""Series modalities that are classified (Computed and Digital Radiography)."""

# DICOM JSON tags (PS3.18 F.2)
_STUDY_UID, _SERIES_UID, _SOP_UID = "0020000D", "0020000E", "00080018"
_SERIES_DESCRIPTION, _MODALITY = "0008103E", "00080060"


@dataclass
class InstanceOutcome:
    """What happened to one instance.

    Attributes:
        study_uid, series_uid, sop_uid: the instance's UIDs.
        status: ``stored`` (classified, SR and Secondary Capture stored), ``skipped`` (our SR for
            this model version exists already), ``refused`` (the input gate refused the image:
            not analysed, nothing stored) or ``failed``.
        label: predicted class (``normal``, ``bacterial``, ``viral``) when classified.
        probabilities: calibrated probabilities when classified.
        sr_uid, sc_uid: SOP Instance UIDs of the stored SR and Secondary Capture.
        error: one line naming the instance and the problem, when ``failed``.
        reason: one line naming the instance and why the input gate refused it, when ``refused``
            (the gate's reasons, e.g. "DICOM View Position (0018,5101) is LL: a lateral view...").
        warnings: the reader's warnings about the image.
        gate: the input gate's outcome (:func:`deephealth.audit.gate_outcome`), when the
            service has a gate.
        review, review_reason: the film lies in the model's review band (``decision.review``:
            borderline, have it reviewed) and why; the stored SR carries the reason too. ``None``
            for an instance that was not classified (failed, refused, skipped): nothing was decided.
    """

    study_uid: str
    series_uid: str
    sop_uid: str
    status: str
    label: str | None = None
    probabilities: dict[str, float] | None = None
    sr_uid: str | None = None
    sc_uid: str | None = None
    error: str | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    gate: dict | None = None
    review: bool | None = None
    review_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-able dict of every attribute."""
        return dict(vars(self))


def parse_since(text: str) -> str:
    """A ``--since`` date (``YYYY-MM-DD`` or ``YYYYMMDD``) as a DICOM DA, ``YYYYMMDD``.

    Raises:
        ValueError: if the text is not a valid calendar date.
    """
    digits = text.strip().replace("-", "")
    if not re.fullmatch(r"\d{8}", digits):
        raise ValueError(f"--since must be a date YYYY-MM-DD, got {text!r}")
    try:
        _dt.datetime.strptime(digits, "%Y%m%d")
    except ValueError:
        raise ValueError(f"--since must be a valid date YYYY-MM-DD, got {text!r}") from None
    return digits


def _value(item: dict, tag: str) -> str | None:
    values = item.get(tag, {}).get("Value")
    return str(values[0]) if values else None


class PacsWorker:
    """Classifies a PACS's radiographs and stores the results back (see the module docstring).

    Args:
        client: a :class:`dicomweb_client.DICOMwebClient` for the PACS's DICOMweb root
            (e.g. Orthanc's ``http://127.0.0.1:8042/dicom-web``).
        predictor: the loaded :class:`~deephealth.inference.Predictor`.
        alpha: heatmap opacity in the Secondary Capture, in [0, 1].
        audit: optional callable called once per classified or failed instance with keyword
            fields for the audit trail (see :meth:`deephealth.audit.AuditLog.record`).
        client_address: recorded as the audit's client (default: the DICOMweb URL).
    """

    def __init__(
        self,
        client: Any,
        predictor: Any,
        *,
        alpha: float = 0.4,
        audit: Callable[..., None] | None = None,
        client_address: str | None = None,
    ) -> None:
        self.client = client
        self.predictor = predictor
        self.alpha = alpha
        self.audit = audit
        self.client_address = client_address or getattr(client, "base_url", None) or "pacs"
        art = predictor.artifact
        self.sr_description = series_description(art.name, art.version, "SR")

    # -- QIDO-RS -----------------------------------------------------------------------------------

    def find_studies(self, study: str | None = None, since: str | None = None) -> list[str]:
        """Study Instance UIDs to look at: ``[study]``, the studies dated ``since`` (DA) or later, or all."""
        if study:
            return [study]
        filters = {"StudyDate": f"{since}-"} if since else None
        found = self.client.search_for_studies(search_filters=filters, get_remaining=True)
        return [uid for uid in (_value(s, _STUDY_UID) for s in found) if uid]

    def find_radiographs(self, study_uid: str) -> list[tuple[str, str]]:
        """``(series UID, SOP instance UID)`` of the CR and DX instances of one study."""
        out: list[tuple[str, str]] = []
        for modality in RADIOGRAPH_MODALITIES:
            series = self.client.search_for_series(
                study_instance_uid=study_uid, search_filters={"Modality": modality}, get_remaining=True
            )
            for s in series:
                series_uid = _value(s, _SERIES_UID)
                if not series_uid:
                    continue
                for inst in self.client.search_for_instances(
                    study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True
                ):
                    sop = _value(inst, _SOP_UID)
                    if sop:
                        out.append((series_uid, sop))
        return out

    def already_done(self, study_uid: str) -> set[str]:
        """SOP Instance UIDs of the study's instances that have our SR for this model version."""
        art = self.predictor.artifact
        done: set[str] = set()
        srs = self.client.search_for_series(
            study_instance_uid=study_uid, search_filters={"Modality": "SR"},
            fields=["SeriesDescription"], get_remaining=True,
        )
        for s in srs:
            series_uid = _value(s, _SERIES_UID)
            if not series_uid or _value(s, _SERIES_DESCRIPTION) != self.sr_description:
                continue
            for inst in self.client.search_for_instances(
                study_instance_uid=study_uid, series_instance_uid=series_uid, get_remaining=True
            ):
                sop = _value(inst, _SOP_UID)
                if not sop:
                    continue
                summary = read_sr(self.client.retrieve_instance(study_uid, series_uid, sop))
                if summary["model_name"] == art.name and summary["model_version"] == art.version:
                    done.update(summary["source_sop_instance_uids"])
        return done

    # -- one instance ------------------------------------------------------------------------------

    def process_instance(self, study_uid: str, series_uid: str, sop_uid: str) -> InstanceOutcome:
        """Retrieve, classify and store the results of one instance; never raises."""
        from deephealth.readers import ImageReadError

        outcome = InstanceOutcome(study_uid, series_uid, sop_uid, status="failed")
        start = time.perf_counter()
        data = b""
        status_code = 500
        pred = None
        try:
            ds = self.client.retrieve_instance(study_uid, series_uid, sop_uid)
            buf = io.BytesIO()
            ds.save_as(buf, enforce_file_format=True)
            data = buf.getvalue()
            pred = self.predictor.predict(data, name=f"instance {sop_uid}", heatmap=True)
            outcome.label, outcome.probabilities = pred.label, dict(pred.probabilities)
            outcome.warnings, outcome.gate = list(pred.warnings), gate_outcome(pred)
            decision = pred.decision or {}
            outcome.review, outcome.review_reason = bool(decision.get("review")), decision.get("review_reason")
            art = self.predictor.artifact
            result = build_dicom_result(pred, art.name, art.version, art.sha256, ds, alpha=self.alpha)
            self.client.store_instances([result.sr, result.sc], study_instance_uid=study_uid)
            outcome.sr_uid, outcome.sc_uid = str(result.sr.SOPInstanceUID), str(result.sc.SOPInstanceUID)
            outcome.status = "stored"
            status_code = 200
        except ImageReadError as exc:
            outcome.error = " ".join(str(exc).split())
            status_code = 422
        except ValueError as exc:
            if getattr(exc, "suitability", None) is None:  # not the input gate's refusal: a bug or bad object
                _logger.debug("instance %s failed", sop_uid, exc_info=True)
                outcome.error = f"instance {sop_uid}: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}"
                status_code = 500
            else:  # refused by the input gate: not analysed, nothing stored back (issue 15)
                outcome.status = "refused"
                outcome.reason = " ".join(str(exc).split())
                outcome.gate = gate_outcome(exc)
                status_code = 422
        except Exception as exc:  # network, PACS refusal, a broken object: report it, go on
            _logger.debug("instance %s failed", sop_uid, exc_info=True)
            msg = " ".join(str(exc).split())[:300] or type(exc).__name__
            outcome.error = f"instance {sop_uid}: {type(exc).__name__}: {msg}"
            status_code = 502
        if self.audit is not None:
            art = self.predictor.artifact
            self.audit(
                interface="pacs",
                client=self.client_address,
                input_sha256=hashlib.sha256(data).hexdigest() if data else None,
                input_format="DICOM" if data else None,
                model_name=art.name,
                model_version=art.version,
                model_sha256=art.sha256,
                label=outcome.label,
                probabilities=outcome.probabilities,
                gate=outcome.gate,
                review=outcome.review if outcome.label is not None else None,
                review_reason=outcome.review_reason if outcome.label is not None else None,
                latency_ms=(time.perf_counter() - start) * 1000.0,
                status_code=status_code,
                study_instance_uid=study_uid,
                sop_instance_uid=sop_uid,
                reason=outcome.reason or outcome.error,
            )
        return outcome

    # -- a run -------------------------------------------------------------------------------------

    def run(
        self,
        study: str | None = None,
        since: str | None = None,
        on_outcome: Callable[[InstanceOutcome], None] | None = None,
    ) -> list[InstanceOutcome]:
        """Process the radiographs of the chosen studies.

        Args:
            study: one Study Instance UID, or ``None``.
            since: Study Date from which to look (DA ``YYYYMMDD``, see :func:`parse_since`), or ``None``.
            on_outcome: called with each outcome as soon as it is known (progress output).

        Returns:
            One :class:`InstanceOutcome` per CR/DX instance found, in PACS order.

        Raises:
            requests.RequestException: if the PACS cannot be queried at all (the QIDO-RS search of
                studies); errors on single instances are reported in their outcomes instead.
        """
        outcomes: list[InstanceOutcome] = []
        for study_uid in self.find_studies(study, since):
            try:
                instances = self.find_radiographs(study_uid)
                done = self.already_done(study_uid) if instances else set()
            except Exception as exc:
                _logger.debug("study %s query failed", study_uid, exc_info=True)
                o = InstanceOutcome(study_uid, "", "", status="failed",
                                    error=f"study {study_uid}: cannot query the PACS ({type(exc).__name__}: {exc})")
                outcomes.append(o)
                if on_outcome:
                    on_outcome(o)
                continue
            for series_uid, sop_uid in instances:
                if sop_uid in done:
                    o = InstanceOutcome(study_uid, series_uid, sop_uid, status="skipped")
                else:
                    o = self.process_instance(study_uid, series_uid, sop_uid)
                outcomes.append(o)
                if on_outcome:
                    on_outcome(o)
        return outcomes


def split_credentials(url: str) -> tuple[str, str | None, str | None]:
    """Split the user information out of a URL.

    Args:
        url: e.g. ``http://dha:secret@pacs:8042/dicom-web``; percent-escapes in the user and the
            password (``p%C3%A4ss``) are decoded as UTF-8.

    Returns:
        ``(url without "user:password@", user or None, password or None)``; a URL without user
        information comes back unchanged with ``(None, None)``.
    """
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at:
        return url, None, None
    user, colon, password = userinfo.partition(":")
    clean = urlunsplit((parts.scheme, hostport, parts.path, parts.query, parts.fragment))
    return clean, unquote(user), (unquote(password) if colon else None)


def redact_url(url: str) -> str:
    """The URL as it may be shown, logged or stored: a password in it becomes ``***``.

    ``http://dha:secret@pacs:8042/dicom-web`` gives ``http://dha:***@pacs:8042/dicom-web`` (the
    user is kept: it says which account was used); a URL without a password is returned unchanged.
    """
    parts = urlsplit(url)
    userinfo, at, hostport = parts.netloc.rpartition("@")
    if not at or ":" not in userinfo:
        return url
    user = userinfo.partition(":")[0]
    return urlunsplit((parts.scheme, f"{user}:***@{hostport}", parts.path, parts.query, parts.fragment))


def basic_auth(username: str, password: str) -> Any:
    """HTTP basic authentication with the user and password encoded as UTF-8 (RFC 7617 section 2.1).

    requests encodes a ``str`` user or password as Latin-1, so a password such as ``pässwörd`` is
    sent as other bytes than curl and browsers send, and a server that expects UTF-8 (Orthanc)
    answers 401; bytes are sent as they are.

    Args:
        username, password: the credentials, as text.

    Returns:
        A :class:`requests.auth.HTTPBasicAuth` for a session or a request.
    """
    from requests.auth import HTTPBasicAuth

    return HTTPBasicAuth(username.encode("utf-8"), password.encode("utf-8"))


def make_client(
    url: str,
    username: str | None = None,
    password: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
) -> Any:
    """A :class:`dicomweb_client.DICOMwebClient` for a DICOMweb root URL.

    Credentials in the URL (``http://user:password@host/dicom-web``) are taken out of it and sent as
    HTTP basic authentication instead, so the client's ``base_url`` (and the request URLs in its
    logs and errors) never holds the password; ``username``/``password`` win over the URL's.

    Args:
        url: DICOMweb root, e.g. ``http://127.0.0.1:8042/dicom-web``.
        username, password: HTTP basic authentication, if the PACS asks for it; sent UTF-8 encoded
            (:func:`basic_auth`).
        timeout: HTTP timeout per request, in seconds.
        attempts: tries per request (exponential back-off from 0.5 s) on a failed connection or
            HTTP 408/429/503/504; 1 means no retry.

    Raises:
        ValueError: the URL is not an http(s) URL dicomweb-client accepts.
    """
    import requests
    from dicomweb_client import DICOMwebClient

    base, url_user, url_password = split_credentials(url)
    if not username:
        username, password = url_user, (password if password is not None else url_password)
    session = None
    if username:
        session = requests.Session()
        session.auth = basic_auth(username, password or "")
    client = DICOMwebClient(url=base, session=session, timeout=timeout)
    if attempts > 1:
        client.set_http_retry_params(retry=True, max_attempts=attempts, wait_exponential_multiplier=500)
    else:
        client.set_http_retry_params(retry=False)
    return client


def summarize(outcomes: Iterable[InstanceOutcome]) -> dict[str, int]:
    """Count of outcomes per status: ``{"stored": n, "skipped": n, "refused": n, "failed": n}``."""
    counts = {"stored": 0, "skipped": 0, "refused": 0, "failed": 0}
    for o in outcomes:
        counts[o.status] = counts.get(o.status, 0) + 1
    return counts
