"""A prediction as DICOM: a Comprehensive SR with the coded finding and a Secondary Capture heatmap.

Built with highdicom (https://highdicom.readthedocs.io), never by hand:

- **Comprehensive SR** (``1.2.840.10008.5.1.4.1.1.88.33``) holding a TID 1500 Measurement Report
  (DICOM PS3.16) with one measurement group (TID 1501):

  - finding type: SNOMED CT 233604007 "Pneumonia";
  - qualitative evaluation "Pneumonia" (SCT 233604007) = "Present" (SCT 52101004) or
    "Absent" (SCT 272519000);
  - qualitative evaluation "Finding" (DCM 121071) = the predicted class: SCT 53084003 "Bacterial
    pneumonia", SCT 75570004 "Viral pneumonia" or, for class 0, which has no SNOMED CT concept of
    its own, the local code ``99DEEPHEALTH normal`` "No pneumonia";
  - three measurements, the calibrated probability of each class, unit UCUM ``1`` (no units),
    named by local codes ``99DEEPHEALTH p-normal`` / ``p-bacterial`` / ``p-viral``;
  - the algorithm (TID 4019): the model's name and version, with its ONNX SHA-256 as the
    parameter ``model_sha256``;
  - the source image (the classified radiograph) as the group's source image;
  - when the service has an input gate, its outcome as a comment ``Input gate: <status>[: reasons]``;
  - when the film lies in the model's review band (``decision.review``), the reason as a comment
    ``Review: borderline: ...`` (the label stands; the film needs a reader).

  The SR's evidence (Current Requested Procedure Evidence Sequence) lists the source study,
  series and SOP instance and the Secondary Capture below.
- **Secondary Capture** (``1.2.840.10008.5.1.4.1.1.7``): the heatmap overlay in RGB with a band
  at the bottom in which the result and the notice :data:`NOTICE` are burned in (Burned In
  Annotation ``YES``), with the line :data:`~deephealth.rendering.REVIEW_LINE` for a borderline
  film; it refers to the source image by Source Image Sequence.

Both copy the patient and study modules from the source and get new Series and SOP Instance UIDs.
Input that is not DICOM (JPEG, PNG...) gets a generated study with an empty patient; its SR then
refers to the Secondary Capture only and carries the comment :data:`NO_SOURCE_NOTE`.
"""

from __future__ import annotations

import copy
import datetime as _dt
import io
import logging
import re
import unicodedata
import warnings
from dataclasses import dataclass
from pathlib import Path

from pydicom.dataset import Dataset

from deephealth import __version__
from deephealth.audit import gate_outcome
from deephealth.inference import Prediction
from deephealth.rendering import NOTICE, SC_MAX_SIDE, annotated_overlay  # noqa: F401  (re-exported)

_logger = logging.getLogger(__name__)

MANUFACTURER = "Deep Health"
"""(0008,0070) Manufacturer of the SR and Secondary Capture."""
NO_SOURCE_NOTE = (
    "No source study: the input was not a DICOM file, so Deep Health generated this study; "
    "it carries no patient data. Attach the result to the patient's record by hand."
)
"""Comment of an SR made from a non-DICOM input."""
SR_SERIES_NUMBER = 9901
"""Series Number of our SR series (high, so viewers list it after the acquired series)."""
SC_SERIES_NUMBER = 9902
"""Series Number of our Secondary Capture series."""
LOCAL_SCHEME = "99DEEPHEALTH"
"""Coding Scheme Designator of our local codes (PS3.16 8.2: private schemes start with 99)."""

SR_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.88.33"
"""Comprehensive SR Storage."""
SC_SOP_CLASS_UID = "1.2.840.10008.5.1.4.1.1.7"
"""Secondary Capture Image Storage."""


def _codes():  # imported lazily: highdicom is the optional [pacs] extra
    import highdicom as hd

    CC = hd.sr.CodedConcept
    pneumonia = CC("233604007", "SCT", "Pneumonia")
    classes = {
        "normal": CC("normal", LOCAL_SCHEME, "No pneumonia"),
        "bacterial": CC("53084003", "SCT", "Bacterial pneumonia"),
        "viral": CC("75570004", "SCT", "Viral pneumonia"),
    }
    probability = {
        "normal": CC("p-normal", LOCAL_SCHEME, "Probability of no pneumonia"),
        "bacterial": CC("p-bacterial", LOCAL_SCHEME, "Probability of bacterial pneumonia"),
        "viral": CC("p-viral", LOCAL_SCHEME, "Probability of viral pneumonia"),
    }
    return pneumonia, classes, probability


GATE_PREFIX = "Input gate: "
"""Start of the SR comment that records the input gate's outcome (``Input gate: accept``...)."""
REVIEW_PREFIX = "Review: "
"""Start of the SR comment that carries ``decision.review_reason`` of a borderline film."""


def finding_code(label: str) -> tuple[str, str, str]:
    """``(code value, coding scheme designator, code meaning)`` of a class's finding.

    Raises:
        KeyError: if ``label`` is not ``normal``, ``bacterial`` or ``viral``.
    """
    c = _codes()[1][label]
    return c.value, c.scheme_designator, c.meaning


OUTPUT_STEM_MAX = 40
"""Most characters of the source's name kept in an output file name (:func:`output_stem`)."""


def output_stem(source: str) -> str:
    """A filesystem-safe form of ``source``'s file stem, for output file names.

    The last path component (``/`` or ``\\`` separated) without its suffix, accents dropped (``Tórax`` -> ``Torax``), every run
    of characters other than ASCII letters, digits, ``-`` and ``.`` replaced by one ``_``, leading
    and trailing ``.``/``_``/``-`` stripped, at most :data:`OUTPUT_STEM_MAX` characters; ``""`` when
    nothing is left (e.g. ``???.png``). ``"/scans/IM-0001-0001.jpeg"`` -> ``"IM-0001-0001"``.
    """
    name = Path(source.replace("\\", "/")).name
    stem = name.rsplit(".", 1)[0] if "." in name.lstrip(".") else name
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode("ascii")
    safe = re.sub(r"[^A-Za-z0-9.-]+", "_", ascii_stem).strip("._-")
    return safe[:OUTPUT_STEM_MAX].rstrip("._-")


@dataclass
class DicomResult:
    """The DICOM objects made for one prediction.

    Attributes:
        sr: the Comprehensive SR (a :class:`highdicom.sr.ComprehensiveSR`, a pydicom Dataset).
        sc: the Secondary Capture (a :class:`highdicom.sc.SCImage`).
        has_source: whether the input was DICOM (else a generated study).
    """

    sr: object
    sc: object
    has_source: bool

    def save(self, directory: str | Path, stem: str = "") -> tuple[Path, Path]:
        """Write both objects as DICOM files into ``directory``: ``SR_<stem>_<SOPInstanceUID>.dcm``
        and ``SC_<stem>_<SOPInstanceUID>.dcm`` (``SR_<SOPInstanceUID>.dcm``... without a stem).

        Args:
            directory: the output folder (created if missing).
            stem: names the source in the file names, e.g. :func:`output_stem` of its path; it is
                passed through :func:`output_stem` again, so any string is safe. The UID keeps the
                names unique.

        Returns:
            ``(sr_path, sc_path)``.

        Raises:
            OSError: if the folder cannot be created or a file cannot be written.
        """
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        stem = output_stem(stem)
        part = f"{stem}_" if stem else ""
        sr_path = d / f"SR_{part}{self.sr.SOPInstanceUID}.dcm"
        sc_path = d / f"SC_{part}{self.sc.SOPInstanceUID}.dcm"
        self.sr.save_as(sr_path, enforce_file_format=True)
        self.sc.save_as(sc_path, enforce_file_format=True)
        return sr_path, sc_path


def series_description(model_name: str, model_version: str, kind: str) -> str:
    """Series Description of our output series, e.g. ``Deep Health deephealth-cxr3 1.0.0 SR``.

    ``deephealth pacs`` recognises its earlier results by it (at most 64 characters, LO).
    """
    return f"Deep Health {model_name} {model_version} {kind}"[:64]


_TYPE2_COPIED = (
    "PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
    "ReferringPhysicianName", "StudyID", "AccessionNumber",
)
"""Type 2 attributes of the Patient and General Study modules (PS3.3 C.7.1.1, C.7.2.1) copied to our objects."""
_AGE_DIGITS = re.compile(r"^\s*(\d{1,3})\s*$")


def _repaired_copy(source: Dataset) -> Dataset:
    """A copy of the source header with values that would make our objects invalid repaired.

    (0010,1010) Patient's Age must be ``nnnD|W|M|Y`` (PS3.5 AS); a bare number such as ``62``
    (as in the RSNA files) is read as years, ``062Y``; anything else unparsable is dropped.
    Type 2 patient and study attributes (:data:`_TYPE2_COPIED`) that the source lacks are added
    empty, as PS3.3 allows, so the copies are complete.
    """
    ds = copy.deepcopy(source)
    for keyword in _TYPE2_COPIED:
        if keyword not in ds:
            setattr(ds, keyword, "")
    age = ds.get("PatientAge")
    if age is not None and not re.fullmatch(r"\d{3}[DWMY]", str(age)):
        m = _AGE_DIGITS.match(str(age))
        if m:
            ds.PatientAge = f"{int(m.group(1)):03d}Y"
        else:
            del ds.PatientAge
    return ds


def _now() -> tuple[str, str]:
    t = _dt.datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def build_dicom_result(
    prediction: Prediction,
    model_name: str,
    model_version: str,
    model_sha256: str,
    source: object | None = None,
    *,
    alpha: float = 0.4,
    institution_name: str | None = None,
) -> DicomResult:
    """Make the Comprehensive SR and the Secondary Capture for one prediction.

    Args:
        prediction: the prediction, made with ``heatmap=True``.
        model_name, model_version, model_sha256: the model that made it (from
            :class:`deephealth.artifact.ModelArtifact`).
        source: the classified image's pydicom Dataset (the pixel data need not be loaded), or
            ``None`` for a non-DICOM input (a new study is generated).
        alpha: heatmap opacity in the Secondary Capture.
        institution_name: optional (0008,0080) Institution Name of both objects.

    Returns:
        The :class:`DicomResult` (not yet written anywhere).

    Raises:
        ImportError: if highdicom is not installed (``pip install deephealth[pacs]``).
        ValueError: if the prediction has no heatmap, or highdicom rejects the source's attributes
            (the message says which).
    """
    with warnings.catch_warnings():
        # highdicom warns about the source's single-component Patient's Name (e.g. anonymised
        # IDs); the name is copied as the PACS holds it.
        warnings.filterwarnings("ignore", message=".*intended person name.*", category=UserWarning)
        return _build(prediction, model_name, model_version, model_sha256, source, alpha, institution_name)


def _build(
    prediction: Prediction,
    model_name: str,
    model_version: str,
    model_sha256: str,
    source: Dataset | None,
    alpha: float,
    institution_name: str | None,
) -> DicomResult:
    import highdicom as hd
    from pydicom.sr.codedict import codes
    from pydicom.uid import generate_uid

    rgb = annotated_overlay(prediction, alpha=alpha)
    has_source = source is not None and "SOPInstanceUID" in source and "StudyInstanceUID" in source
    if has_source:
        source = _repaired_copy(source)
    date, time = _now()
    common = dict(manufacturer=MANUFACTURER)
    if has_source:
        orientation = tuple(getattr(source, "PatientOrientation", None) or ()) or ("L", "F")
        sc = hd.sc.SCImage.from_ref_dataset(
            ref_dataset=source,
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            series_instance_uid=generate_uid(),
            series_number=SC_SERIES_NUMBER,
            sop_instance_uid=generate_uid(),
            instance_number=1,
            patient_orientation=orientation if len(orientation) == 2 else ("L", "F"),
            series_description=series_description(model_name, model_version, "heatmap"),
            **common,
        )
        item = Dataset()
        item.ReferencedSOPClassUID = source.SOPClassUID
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        sc.SourceImageSequence = [item]
        sc.DerivationDescription = f"Class activation heatmap of {model_name} {model_version} over the source image"
    else:
        sc = hd.sc.SCImage(
            pixel_array=rgb,
            photometric_interpretation="RGB",
            bits_allocated=8,
            coordinate_system="PATIENT",
            study_instance_uid=generate_uid(),
            series_instance_uid=generate_uid(),
            sop_instance_uid=generate_uid(),
            series_number=SC_SERIES_NUMBER,
            instance_number=1,
            patient_id="",
            patient_name=None,
            patient_birth_date=None,
            patient_sex=None,
            study_id="",
            accession_number=None,
            study_date=date,
            study_time=time,
            referring_physician_name=None,
            patient_orientation=("L", "F"),
            series_description=series_description(model_name, model_version, "heatmap"),
            **common,
        )
        sc.ImageComments = NO_SOURCE_NOTE
    sc.BurnedInAnnotation = "YES"
    if "Laterality" not in sc:
        sc.Laterality = ""  # Type 2C; the chest is not a paired body part: empty
    sc.ConversionType = "WSD"
    if institution_name:
        sc.InstitutionName = institution_name
    sc.DerivationDescription = getattr(sc, "DerivationDescription", None) or (
        f"Class activation heatmap of {model_name} {model_version}"
    )

    pneumonia, class_codes, prob_codes = _codes()
    algorithm = hd.sr.AlgorithmIdentification(
        name=model_name, version=model_version, parameters=[f"model_sha256={model_sha256}"]
    )
    present = prediction.label != "normal"
    evaluations = [
        hd.sr.QualitativeEvaluation(name=pneumonia, value=codes.SCT.Present if present else codes.SCT.Absent),
        hd.sr.QualitativeEvaluation(name=codes.DCM.Finding, value=class_codes[prediction.label]),
    ]
    measurements = [
        hd.sr.Measurement(
            name=prob_codes[name],
            value=float(prediction.probabilities[name]),
            unit=codes.UCUM.NoUnits,
            algorithm_id=algorithm,
        )
        for name in ("normal", "bacterial", "viral")
    ]
    image_ref = source if has_source else sc
    group = hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="Deep Health classification"),
        finding_type=pneumonia,
        algorithm_id=algorithm,
        qualitative_evaluations=evaluations,
        measurements=measurements,
        source_images=[
            hd.sr.SourceImageForMeasurementGroup(
                referenced_sop_class_uid=image_ref.SOPClassUID,
                referenced_sop_instance_uid=image_ref.SOPInstanceUID,
            )
        ],
    )
    device_uid = generate_uid(entropy_srcs=["deephealth", model_name, model_version, model_sha256])
    observer = hd.sr.ObserverContext(
        observer_type=codes.DCM.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            uid=device_uid, name=f"Deep Health {__version__}", manufacturer_name=MANUFACTURER, model_name=model_name
        ),
    )
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=hd.sr.CodedConcept("399208008", "SCT", "Plain chest X-ray"),
        imaging_measurements=[group],
    )
    comments = [] if has_source else [NO_SOURCE_NOTE]
    gate = gate_outcome(prediction)
    if gate is not None:
        reasons = "; ".join(gate.get("reasons") or [])
        comments.append(f"{GATE_PREFIX}{gate.get('status')}" + (f": {reasons}" if reasons else ""))
    decision = prediction.decision or {}
    if decision.get("review"):
        comments.append(f"{REVIEW_PREFIX}{decision.get('review_reason') or 'borderline: have it reviewed'}")
    for text in comments:
        report[0].ContentSequence.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=text, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS
            )
        )
    evidence = [source, sc] if has_source else [sc]
    sr = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=report[0],
        series_instance_uid=generate_uid(),
        series_number=SR_SERIES_NUMBER,
        sop_instance_uid=generate_uid(),
        instance_number=1,
        is_complete=True,
        series_description=series_description(model_name, model_version, "SR"),
        institution_name=institution_name,
        **common,
    )
    scheme = Dataset()
    scheme.CodingSchemeDesignator = LOCAL_SCHEME
    scheme.CodingSchemeName = "Deep Health local codes"
    scheme.CodingSchemeResponsibleOrganization = MANUFACTURER
    sr.CodingSchemeIdentificationSequence = [scheme]
    return DicomResult(sr=sr, sc=sc, has_source=has_source)


def read_source_header(path: str | Path) -> object | None:
    """The DICOM header (no pixel data) of a file, or ``None`` if it is not a DICOM file.

    Args:
        path: the file the prediction was made from.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        with open(path, "rb") as fh:
            head = fh.read(132)
        if len(head) < 132 or head[128:132] != b"DICM":
            return None
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (OSError, InvalidDicomError) as exc:
        _logger.debug("%s: not read as DICOM (%s)", path, exc)
        return None


def header_from_bytes(data: bytes) -> object | None:
    """Like :func:`read_source_header`, for a file's bytes."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if len(data) < 132 or data[128:132] != b"DICM":
        return None
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    except InvalidDicomError:
        return None


def _walk(items):
    for item in items or ():
        yield item
        yield from _walk(item.get("ContentSequence"))


def read_sr(sr: Dataset) -> dict:
    """What one of our SRs says, read back from its content tree (the inverse of :func:`build_dicom_result`).

    Args:
        sr: a Comprehensive SR dataset (e.g. from ``pydicom.dcmread`` or a WADO-RS retrieve).

    Returns:
        ``{"label": "normal"|"bacterial"|"viral"|None, "pneumonia": "Present"|"Absent"|None,
        "probabilities": {class: float}, "model_name", "model_version", "model_sha256" (str or
        None), "gate": the input gate's comment after ``Input gate: `` or None, "review": the review
        reason after ``Review: `` (a borderline film) or None,
        "source_sop_instance_uids": [UIDs of the evidence], "comments": [other comments]}``.
    """
    _, class_codes, prob_codes = _codes()
    by_code = {c.value: name for name, c in class_codes.items()}
    prob_by_code = {c.value: name for name, c in prob_codes.items()}
    out: dict = {"label": None, "pneumonia": None, "probabilities": {}, "model_name": None,
                 "model_version": None, "model_sha256": None, "gate": None, "review": None, "comments": []}
    for item in _walk(sr.get("ContentSequence")):
        name = item.ConceptNameCodeSequence[0].CodeValue if "ConceptNameCodeSequence" in item else None
        vtype = item.get("ValueType")
        if vtype == "CODE" and name == "121071":  # DCM Finding
            out["label"] = by_code.get(item.ConceptCodeSequence[0].CodeValue)
        elif vtype == "CODE" and name == "233604007":  # SCT Pneumonia
            out["pneumonia"] = item.ConceptCodeSequence[0].CodeMeaning
        elif vtype == "NUM" and name in prob_by_code:
            out["probabilities"][prob_by_code[name]] = float(item.MeasuredValueSequence[0].NumericValue)
        elif vtype == "TEXT" and name == "111001":  # DCM Algorithm Name
            out["model_name"] = str(item.TextValue)
        elif vtype == "TEXT" and name == "111003":  # DCM Algorithm Version
            out["model_version"] = str(item.TextValue)
        elif vtype == "TEXT" and name == "111002":  # DCM Algorithm Parameters
            text = str(item.TextValue)
            if text.startswith("model_sha256="):
                out["model_sha256"] = text.split("=", 1)[1]
        elif vtype == "TEXT" and name == "121106":  # DCM Comment
            text = str(item.TextValue)
            if text.startswith(GATE_PREFIX):
                out["gate"] = text[len(GATE_PREFIX):]
            elif text.startswith(REVIEW_PREFIX):
                out["review"] = text[len(REVIEW_PREFIX):]
            else:
                out["comments"].append(text)
    out["source_sop_instance_uids"] = [
        sop.ReferencedSOPInstanceUID
        for study in sr.get("CurrentRequestedProcedureEvidenceSequence", [])
        for series in study.get("ReferencedSeriesSequence", [])
        for sop in series.get("ReferencedSOPSequence", [])
    ]
    return out
