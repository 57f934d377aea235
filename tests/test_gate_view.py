"""Issue 15: nothing that is not a frontal chest film gets a diagnosis.

The header rules (:func:`deephealth.gate.header_checks`: View Position, SOP Class UID, Body Part
Examined, adult Patient Age), the pixel view check (:func:`deephealth.gate.lung_layout`) and one
verdict for the same file through the Predictor, the API (English and Spanish) and the CLI's
table, CSV and JSON. DICOM files are made here from a validation film of the dataset; the lateral
stand-ins are drawn by the gate's own fitting code. Issue 18's gate items (adult verdict, rotation
direction) are here too.
"""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from deephealth.gate import (
    LAYOUT_REFUSE,
    LAYOUT_WARN,
    ROTATION_SURE,
    Gate,
    UnsuitableImageError,
    header_checks,
    lung_layout,
)
from deephealth.inference import Predictor
from deephealth.preprocessing import PreprocessConfig, resize_to_input
from deephealth.readers import read_image

DX = "1.2.840.10008.5.1.4.1.1.1.1"
CR = "1.2.840.10008.5.1.4.1.1.1"
SC = "1.2.840.10008.5.1.4.1.1.7"
WSI = "1.2.840.10008.5.1.4.1.1.77.1.6"  # VL Whole Slide Microscopy Image Storage


def _film_path(dataset_root: Path, i: int = 0) -> Path:
    return sorted((dataset_root / "val" / "NORMAL").glob("*.jpeg"))[i]


def _dicom(dataset_root: Path, *, sop_class: str = DX, modality: str | None = "DX", **elements: str) -> bytes:
    """A DICOM file holding a validation film's pixels (8-bit MONOCHROME2) with the given header elements."""
    from PIL import Image

    pixels = np.asarray(Image.open(_film_path(dataset_root)).convert("L"), dtype=np.uint8)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    if modality is not None:
        ds.Modality = modality
    ds.set_pixel_data(pixels, "MONOCHROME2", 8)
    for key, value in elements.items():
        setattr(ds, key, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def _info(**facts) -> SimpleNamespace:
    base = dict(view_position=None, sop_class_uid=None, sop_class_name=None, body_part=None, patient_age=None,
                patient_age_years=None)
    return SimpleNamespace(**{**base, **facts})


# ------------------------------------------------------------------------------------ header rules


@pytest.mark.parametrize("view", ["LL", "RL", "LATERAL", "LLD", "RLD", "LAT", "XTABLE LATERAL"])
def test_a_lateral_view_position_is_refused(view: str):
    refuse, warn = header_checks(_info(view_position=view, sop_class_uid=DX, body_part="CHEST"))
    assert refuse == [f"DICOM View Position (0018,5101) is {view}: a lateral view; the model reads only frontal "
                      "(AP or PA) chest films"] and warn == []


@pytest.mark.parametrize("view", ["LAO", "RPO", "OBLIQUE"])
def test_an_oblique_view_position_is_refused(view: str):
    refuse, _ = header_checks(_info(view_position=view))
    assert refuse == [f"DICOM View Position (0018,5101) is {view}: an oblique view; the model reads only frontal "
                      "(AP or PA) chest films"]


@pytest.mark.parametrize("view", ["PA", "AP", "", None])
def test_a_frontal_or_missing_view_position_is_no_reason(view):
    assert header_checks(_info(view_position=view, sop_class_uid=CR, body_part="CHEST")) == ([], [])


def test_a_sop_class_that_is_not_a_radiograph_is_refused():
    refuse, _ = header_checks(_info(sop_class_uid=WSI, sop_class_name="VL Whole Slide Microscopy Image Storage"))
    assert refuse == [f"DICOM SOP Class UID (0008,0016) is {WSI} (VL Whole Slide Microscopy Image Storage): not a "
                      "radiograph (expected CR or DX image storage)"]
    for ok in (CR, DX, "1.2.840.10008.5.1.4.1.1.1.1.1"):
        assert header_checks(_info(sop_class_uid=ok)) == ([], [])


def test_a_secondary_capture_needs_a_frontal_chest_header():
    refuse, _ = header_checks(_info(sop_class_uid=SC, sop_class_name="Secondary Capture Image Storage"))
    assert refuse == [f"DICOM SOP Class UID (0008,0016) is {SC} (Secondary Capture Image Storage) without a frontal "
                      "chest header (Body Part Examined CHEST and View Position AP or PA)"]
    assert header_checks(_info(sop_class_uid=SC, body_part="CHEST", view_position="PA")) == ([], [])
    assert header_checks(_info(sop_class_uid=SC, body_part="CHEST"))[0]  # no view: not enough


@pytest.mark.parametrize("part,refused", [("KNEE", True), ("ABDOMEN", True), ("SKULL", True), ("HAND", True),
                                          ("CHEST", False), ("THORAX", False), ("PORTABLE CHEST", False),
                                          ("TORAX", False), ("PECHO", False), ("", False), (None, False),
                                          ("UNKNOWN", False), ("TSPINE", True), ("THORACIC SPINE", True)])
def test_a_body_part_that_is_not_the_chest_is_refused(part, refused: bool):
    refuse, _ = header_checks(_info(body_part=part))
    assert refuse == ([f"DICOM Body Part Examined (0018,0015) is {part}: not the chest"] if refused else [])


def test_an_adult_is_warned_by_the_gate():
    assert header_checks(_info(patient_age="062Y", patient_age_years=62.0)) == (
        [], ["adult patient (age 62 years): the model was trained on children aged 1-5 years"])
    assert header_checks(_info(patient_age="016Y", patient_age_years=16.0)) == ([], [])


@pytest.mark.parametrize(("age", "years", "shown"), [
    ("045Y", 45.0, "45 years"), ("240M", 20.0, "240 months"), ("1200W", 1200 * 7 / 365.25, "1200 weeks"),
    ("9000D", 9000 / 365.25, "9000 days"), ("62", 62.0, "62 years"), ("045y", 45.0, "45 years"),
    (None, 30.0, "30 years"),  # no text kept: the age in years
])
def test_the_adult_age_is_written_out_not_as_the_raw_age_string(age, years, shown):
    # Before: "adult patient (age 045Y)"; PS3.5 Age String nnnD/W/M/Y is shown as a person reads it.
    assert header_checks(_info(patient_age=age, patient_age_years=years)) == (
        [], [f"adult patient (age {shown}): the model was trained on children aged 1-5 years"])


def test_the_reader_records_header_facts_and_decides_nothing(dataset_root: Path):
    r = read_image(_dicom(dataset_root, ViewPosition="LL", BodyPartExamined="CHEST ", PatientAge="030Y"), name="x.dcm")
    info = r.info
    assert (info.view_position, info.body_part, info.patient_age, info.patient_age_years) == ("LL", "CHEST", "030Y", 30.0)
    assert (info.sop_class_uid, info.sop_class_name) == (DX, "Digital X-Ray Image Storage - For Presentation")
    assert not any("lateral" in w or "adult" in w for w in info.warnings)  # the gate says it, once


# --------------------------------------------------------------- the header through the Predictor


def test_a_lateral_dicom_is_refused_and_the_override_keeps_the_refusal(dataset_root: Path):
    p = Predictor()
    data = _dicom(dataset_root, ViewPosition="LL", BodyPartExamined="CHEST")
    with pytest.raises(UnsuitableImageError) as ei:
        p.predict(data, name="lat.dcm")
    assert ei.value.suitability.status == "refuse"
    assert ei.value.suitability.reasons[0].startswith("DICOM View Position (0018,5101) is LL: a lateral view")
    r = p.predict(data, name="lat.dcm", allow_unsuitable=True)
    assert r.suitability.status == "refuse" and r.suitability.reasons == ei.value.suitability.reasons
    assert sum(r.probabilities.values()) == pytest.approx(1.0)
    # the same pixels with a PA header are classified
    ok = p.predict(_dicom(dataset_root, ViewPosition="PA", BodyPartExamined="CHEST"), name="pa.dcm")
    assert ok.suitability.status in ("accept", "warn") and not ok.suitability.refused


def test_a_slide_microscopy_dicom_without_modality_is_refused(dataset_root: Path):
    data = _dicom(dataset_root, sop_class=WSI, modality=None)
    with pytest.raises(UnsuitableImageError) as ei:
        Predictor().predict(data, name="wsi.dcm")
    assert ei.value.suitability.reasons[0] == (
        f"DICOM SOP Class UID (0008,0016) is {WSI} (VL Whole Slide Microscopy Image Storage): not a radiograph "
        "(expected CR or DX image storage)")


def test_an_adult_film_gets_status_warn(dataset_root: Path):
    r = Predictor().predict(_dicom(dataset_root, ViewPosition="PA", PatientAge="062Y"), name="adult.dcm")
    assert r.suitability.status == "warn"
    assert "adult patient (age 62 years): the model was trained on children aged 1-5 years" in r.suitability.reasons
    assert not any(w.startswith("adult") for w in r.warnings)  # one message, in the gate's reasons


# ------------------------------------------------------------------------------ pixel view check


def _q(a: np.ndarray) -> np.ndarray:
    return resize_to_input(a, PreprocessConfig(input_size=192))


def test_lung_layout_of_validation_films_and_drawn_laterals(dataset_root: Path):
    from deephealth.training.gate_fit import _lateral_phantom

    films = [read_image(f).image for f in sorted((dataset_root / "val" / "NORMAL").glob("*.jpeg"))[:40]]
    frontal = np.array([lung_layout(_q(f)) for f in films])
    assert (frontal >= LAYOUT_WARN).mean() >= 0.95 and frontal.min() >= LAYOUT_REFUSE
    rng = np.random.default_rng(123)  # a seed the gate's fitting does not use
    lateral = np.array([lung_layout(_q(_lateral_phantom(rng))) for _ in range(60)])
    assert (lateral < LAYOUT_REFUSE).mean() >= 0.5 and (lateral < LAYOUT_WARN).mean() >= 0.7
    assert np.median(frontal) - np.median(lateral) > 0.25


def test_lung_layout_on_a_drawn_profile():
    # two dark lungs either side of a bright middle: score (200 - 50) / range; one dark field: about 0
    q = np.full((192, 192), 200, np.uint8)
    q[:, 20:80] = 50
    q[:, 112:172] = 50
    assert lung_layout(q) == pytest.approx(150 / 150, abs=0.02)
    lat = np.full((192, 192), 200, np.uint8)
    lat[:, 20:150] = 50  # one field across the middle, bright spine band at the right edge
    assert lung_layout(lat) < 0.05


def test_the_view_check_refuses_a_lateral_stand_in_without_a_header():
    from deephealth.training.gate_fit import _lateral_phantom

    rng = np.random.default_rng(7)
    g = Gate(None)  # image checks only: the layout alone decides
    for _ in range(20):
        a = _lateral_phantom(rng)
        q = _q(a)
        if lung_layout(q) < LAYOUT_REFUSE:
            info = read_image(_png_bytes(a), name="lat.png").info
            s = g.assess(info, q, None, np.zeros(3))
            assert s.status == "refuse"
            assert s.reasons[0].startswith("not a frontal chest film: no two lung fields either side of the mediastinum")
            return
    pytest.fail("no drawn lateral scored below the refusal limit")


def _png_bytes(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.uint8(np.clip(a, 0, 1) * 255)).save(buf, format="PNG")
    return buf.getvalue()


def test_rotation_direction_is_named_only_when_sure(dataset_root: Path):
    """Issue 18: validation films rotated 90 degrees either way never get the wrong direction named."""
    p = Predictor()
    if not p.gate.available:
        pytest.skip("the bundled model has no fitted gate")
    films = [read_image(f).image for f in sorted((dataset_root / "val" / "PNEUMONIA").glob("*.jpeg"))[:8]]
    wrong, named = 0, 0
    for f in films:
        for k, right, other in ((-1, "90 degrees clockwise", "counter-clockwise"), (1, "counter-clockwise", "degrees clockwise")):
            s = p.predict(np.ascontiguousarray(np.rot90(f, k)), allow_unsuitable=True).suitability
            assert s.flagged
            msg = s.message()
            named += right in msg
            wrong += other in msg
    assert wrong == 0, f"{wrong} of {2 * len(films)} rotated films named the wrong direction"
    assert 0.5 < ROTATION_SURE < 1 and named >= 0


# ------------------------------------------------------------------------------ one verdict everywhere


def test_one_verdict_through_the_api_and_every_cli_format(dataset_root: Path, tmp_path: Path, capsys):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from deephealth.cli import main
    from deephealth.web.app import create_app
    from deephealth.web.settings import Settings

    data = _dicom(dataset_root, ViewPosition="RL", BodyPartExamined="CHEST")
    path = tmp_path / "lateral.dcm"
    path.write_bytes(data)
    with pytest.raises(UnsuitableImageError) as ei:
        Predictor().predict(path)
    reasons = ei.value.suitability.reasons
    assert reasons[0].startswith("DICOM View Position (0018,5101) is RL")

    with TestClient(create_app(Settings())) as c:
        r = c.post("/api/v1/predictions", files={"file": ("lateral.dcm", data, "application/dicom")})
        assert r.status_code == 422 and "probabilities" not in r.json()
        assert r.json()["suitability"]["status"] == "refuse" and r.json()["suitability"]["reasons"] == reasons
        es = c.post("/api/v1/predictions", files={"file": ("lateral.dcm", data, "application/dicom")},
                    headers={"Accept-Language": "es"})
        assert es.status_code == 422
        assert es.json()["suitability"]["reasons"][0].startswith(
            "la posición de proyección DICOM (0018,5101) es RL: una proyección lateral")
        ov = c.post("/api/v1/predictions?allow_unsuitable=true",
                    files={"file": ("lateral.dcm", data, "application/dicom")})
        assert ov.status_code == 200 and ov.json()["suitability"]["reasons"] == reasons

    rc = main(["predict", str(path), "--format", "json"])
    out, _ = capsys.readouterr()
    (row,) = json.loads(out)
    assert rc == 1 and row["suitability"]["status"] == "refuse" and row["suitability"]["reasons"] == reasons
    rc = main(["predict", str(path), "--format", "csv"])
    out, _ = capsys.readouterr()
    (row,) = list(csv.DictReader(io.StringIO(out)))
    assert rc == 1 and row["gate"] == "refuse" and reasons[0] in row["gate_reasons"]
    rc = main(["predict", str(path)])
    out, err = capsys.readouterr()
    assert rc == 1 and "REFUSED" in out and reasons[0] in err


def test_every_new_reason_has_a_spanish_translation():
    from deephealth.gate import _LR_REASONS
    from deephealth.web.i18n import translate_text

    reasons: list[str] = []
    for facts in (dict(view_position="LL"), dict(view_position="RAO"), dict(body_part="KNEE"),
                  dict(sop_class_uid=SC, sop_class_name="Secondary Capture Image Storage"),
                  dict(sop_class_uid=WSI, sop_class_name="VL Whole Slide Microscopy Image Storage"),
                  dict(patient_age="062Y", patient_age_years=62.0)):
        refuse, warn = header_checks(_info(**facts))
        reasons += refuse + warn
    g = Gate(None)
    flat = np.full((192, 192), 200, np.uint8)
    lateral = flat.copy()
    lateral[:, 20:150] = 60  # one dark field: layout about 0
    faint = flat.copy()
    faint[:, 20:80], faint[:, 112:172] = 170, 170  # two faint lungs: (200 - 170) / range 205, about 0.15
    faint[150:] = 50  # below the lung band: the range
    faint[:20] = 255
    noise = np.random.default_rng(0).integers(-3, 4, flat.shape)
    lateral, faint = (np.clip(a + noise, 0, 255).astype(np.uint8) for a in (lateral, faint))  # detail
    for q in (lateral, faint):
        reasons += g.assess(None, q, None, np.zeros(3)).reasons
    reasons.append(f"{_LR_REASONS['rotated_side']} (P(frontal chest film) = 0.40, two-lung layout 0.15)")
    reasons.append("not a frontal chest film: no two lung fields either side of the mediastinum (two-lung layout "
                   "0.15, below 0.18, and the network's features are unusual too); a lateral view or another "
                   "projection? send the frontal (PA or AP) film")
    reasons.append("colour image (channels differ by 12.5 grey levels on average): it may be a photo rather than a "
                   "radiograph; converted to grayscale")
    assert any("unusual layout" in r for r in reasons) and any(r.startswith("not a frontal") for r in reasons)
    assert len(reasons) >= 11
    for r in reasons:
        es = translate_text(r, "es")
        assert es != r, r
        for english in ("lateral view", "oblique view", "not the chest", "not a radiograph", "the model",
                        "chest film", "layout", "send the", "check that", "adult patient", "without a"):
            assert english not in es, (r, es)


def test_a_red_mark_gets_one_message(dataset_root: Path):
    """Issue 18: a red mark large enough to move the mean colour (spread above the old reader warning)
    but under the colour-picture limit got the reader's "colour image" and the gate's "annotations"
    warnings; now the reader records the facts and the gate gives one message."""
    from PIL import Image, ImageDraw

    from deephealth.readers.image import COLOR_WARN_LEVELS

    im = Image.open(_film_path(dataset_root)).convert("RGB")
    w, h = im.size
    ImageDraw.Draw(im).rectangle([w * 0.05, h * 0.05, w * 0.3, h * 0.3], fill=(255, 0, 0))  # about 6 % of the image
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    r = read_image(buf.getvalue(), name="marked.png")
    assert r.info.color_spread > COLOR_WARN_LEVELS and 0.04 < r.info.color_fraction < 0.10
    assert r.info.warnings == []
    s = Predictor().predict(buf.getvalue(), name="marked.png", allow_unsuitable=True).suitability
    colour = [x for x in s.reasons if "colour" in x or "coloured" in x]
    assert len(colour) == 1 and colour[0].startswith("burnt-in coloured annotations")
