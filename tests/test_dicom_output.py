"""DICOM output (`predict --dicom-out`): the SR and Secondary Capture read back with pydicom and dciodvfy."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest

pytest.importorskip("highdicom", reason="DICOM output needs the [pacs] extra (highdicom)")

from deephealth.cli import main  # noqa: E402
from deephealth.dicom_output import NO_SOURCE_NOTE, NOTICE, annotated_overlay, read_sr  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402

pytestmark = pytest.mark.needs_data

SNOMED = {"bacterial": ("53084003", "SCT"), "viral": ("75570004", "SCT"), "normal": ("normal", "99DEEPHEALTH")}
"""The finding's code per class (SNOMED CT where a concept exists; the local code for no pneumonia)."""


@pytest.fixture(scope="module")
def rsna_expected(dicom_dir: Path):
    """What the bundled model says about the RSNA CR (adult, PA), straight from the Predictor.

    The SR must carry exactly this; the released model's own golden values are checked in
    test_inference.py, so these tests follow a new model release without edits.
    """
    return Predictor().predict(dicom_dir / "cr_chest_pa_rsna.dcm")


def _walk(items):
    for item in items or ():
        yield item
        yield from _walk(item.get("ContentSequence"))


def _code_items(sr: pydicom.Dataset) -> dict[str, tuple[str, str]]:
    """{concept name code value: (concept code value, scheme)} of every CODE item."""
    return {
        i.ConceptNameCodeSequence[0].CodeValue: (i.ConceptCodeSequence[0].CodeValue,
                                                 i.ConceptCodeSequence[0].CodingSchemeDesignator)
        for i in _walk(sr.ContentSequence) if i.ValueType == "CODE"
    }


def _dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run(["dciodvfy", str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def outputs(tmp_path_factory, dicom_dir: Path, dataset_root: Path) -> Path:
    """Folder with the SR and SC of the RSNA CR and of a JPEG, written by `predict --dicom-out`."""
    out = tmp_path_factory.mktemp("dicom_out")
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    rc = main(["predict", str(dicom_dir / "cr_chest_pa_rsna.dcm"), str(jpeg), "--dicom-out", str(out),
               "--format", "json"])
    assert rc == 0
    return out


def _run_json(capsys, args: list[str]) -> list[dict]:
    rc = main(args)
    out, _ = capsys.readouterr()
    assert rc == 0
    return json.loads(out)


@pytest.fixture(scope="module")
def rows(outputs) -> dict[str, dict]:
    out = outputs
    result: dict[str, dict] = {}
    for sr_path in out.glob("SR_*.dcm"):
        sr = pydicom.dcmread(sr_path)
        result[sr_path.name] = {"sr": sr, "path": sr_path}
    return result


def test_sr_of_a_dicom_input_codes_the_finding_and_references_the_source(rows, dicom_dir: Path, rsna_expected):
    src = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm", stop_before_pixels=True)
    (entry,) = [e for e in rows.values() if e["sr"].StudyInstanceUID == src.StudyInstanceUID]
    sr = entry["sr"]
    assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
    assert sr.Modality == "SR" and sr.CompletionFlag == "COMPLETE"
    # patient module copied, new series and instance
    assert sr.PatientID == src.PatientID and sr.PatientSex == src.PatientSex
    assert sr.SeriesInstanceUID != src.SeriesInstanceUID and sr.SOPInstanceUID != src.SOPInstanceUID
    # coded finding: pneumonia (SCT 233604007) present (SCT 52101004) / absent (SCT 272519000), and the class
    codes = _code_items(sr)
    label = rsna_expected.label
    assert codes["233604007"] == (("272519000" if label == "normal" else "52101004"), "SCT")
    assert codes["121071"] == SNOMED[label]
    summary = read_sr(sr)
    assert summary["label"] == label
    assert summary["probabilities"] == pytest.approx(rsna_expected.probabilities, abs=1e-9)
    assert sum(summary["probabilities"].values()) == pytest.approx(1.0, abs=1e-6)
    p = Predictor()
    assert summary["model_name"] == p.artifact.name and summary["model_version"] == p.artifact.version
    assert summary["model_sha256"] == p.artifact.sha256
    # evidence: the source study / series / SOP instance
    ev = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert ev.StudyInstanceUID == src.StudyInstanceUID
    series = {s.SeriesInstanceUID: [i.ReferencedSOPInstanceUID for i in s.ReferencedSOPSequence]
              for s in ev.ReferencedSeriesSequence}
    assert series[src.SeriesInstanceUID] == [src.SOPInstanceUID]
    assert summary["comments"] == []


def test_secondary_capture_has_the_notice_band_and_references_the_source(outputs, dicom_dir: Path):
    out = outputs
    src = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm", stop_before_pixels=True)
    scs = [pydicom.dcmread(f) for f in out.glob("SC_*.dcm")]
    (sc,) = [d for d in scs if d.StudyInstanceUID == src.StudyInstanceUID]
    assert sc.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and sc.BurnedInAnnotation == "YES"
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == src.SOPInstanceUID
    assert sc.PatientID == src.PatientID and sc.SeriesInstanceUID != src.SeriesInstanceUID
    px = sc.pixel_array
    assert px.dtype == np.uint8 and px.shape[2] == 3 and px.shape[1] == 1024  # source is 1024 x 1024
    band = px[1024:]
    assert band.shape[0] > 20  # the text band below the image
    # white text on black: some pure-white pixels, mostly black
    assert (band == 255).all(axis=2).sum() > 200 and (band == 0).all(axis=2).mean() > 0.7


def test_non_dicom_input_gets_a_generated_study_with_a_note(rows, dataset_root: Path):
    (entry,) = [e for e in rows.values() if read_sr(e["sr"])["comments"]]
    sr = entry["sr"]
    summary = read_sr(sr)
    assert summary["comments"] == [NO_SOURCE_NOTE]
    assert summary["label"] in {"normal", "bacterial", "viral"}
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    expected = Predictor().predict(jpeg).probabilities
    assert summary["probabilities"] == pytest.approx(expected, abs=1e-6)
    assert sr.PatientID == ""
    # the SR refers to the generated Secondary Capture
    (sc_uid,) = summary["source_sop_instance_uids"]
    assert (entry["path"].parent / f"SC_{jpeg.stem}_{sc_uid}.dcm").is_file()


def test_annotated_overlay_band_height_and_image_part(dicom_dir: Path):
    r = Predictor().predict(dicom_dir / "cr_chest_pa_rsna.dcm", heatmap=True)
    small = annotated_overlay(r, max_side=256)
    assert small.shape[1] == 256 and small.shape[0] > 256
    with pytest.raises(ValueError, match="no heatmap"):
        annotated_overlay(Predictor().predict(dicom_dir / "cr_chest_pa_rsna.dcm"))
    assert "not a diagnosis" in NOTICE and "not a medical device" in NOTICE


@pytest.mark.skipif(shutil.which("dciodvfy") is None, reason="dciodvfy not installed (Debian dicom3tools; make install-dev)")
def test_dciodvfy_finds_no_errors(outputs):
    out = outputs
    files = sorted(out.glob("*.dcm"))
    assert len(files) == 4
    for f in files:
        assert _dciodvfy_errors(f) == [], f.name


def test_dicom_out_json_lists_the_files_and_the_no_source_warning(tmp_path: Path, dataset_root: Path, capsys):
    jpeg = sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    (row,) = _run_json(capsys, ["predict", str(jpeg), "--dicom-out", str(tmp_path), "--format", "json"])
    assert row["ok"] and len(row["dicom_files"]) == 2
    assert all(Path(f).is_file() for f in row["dicom_files"])
    assert any("no source study" in w for w in row["warnings"])


def test_dicom_out_file_names_carry_the_source_stem_and_the_uid(outputs, dicom_dir: Path, dataset_root: Path):
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    by_stem: dict[str, list[str]] = {}
    for f in sorted(outputs.glob("*.dcm")):
        ds = pydicom.dcmread(f, stop_before_pixels=True)
        kind = "SR" if ds.Modality == "SR" else "SC"
        for stem in ("cr_chest_pa_rsna", jpeg.stem):
            if f.name.startswith(f"{kind}_{stem}_"):
                assert f.name == f"{kind}_{stem}_{ds.SOPInstanceUID}.dcm"
                by_stem.setdefault(stem, []).append(kind)
    assert by_stem == {"cr_chest_pa_rsna": ["SC", "SR"], jpeg.stem: ["SC", "SR"]}


@pytest.mark.parametrize(("source", "stem"), [
    ("/scans/IM-0001-0001.jpeg", "IM-0001-0001"),
    ("C:/PACS export/Tórax PA (2).dcm", "Torax_PA_2"),
    ("../../etc/passwd", "passwd"),
    ("/scans/.hidden.png", "hidden"),
    ("/scans/???.png", ""),
    ("upload", "upload"),
    ("/scans/" + "a" * 100 + ".png", "a" * 40),
])
def test_output_stem_is_filesystem_safe_and_bounded(source: str, stem: str):
    from deephealth.dicom_output import output_stem

    assert output_stem(source) == stem


def test_a_minimal_source_missing_type2_attributes_still_gives_valid_objects(dicom_dir: Path, tmp_path: Path):
    """A source without Patient's Birth Date, Sex, Study ID... (Type 2): our copies carry them empty."""
    from deephealth.dicom_output import build_dicom_result, header_from_bytes

    src = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm")
    for kw in ("PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber", "ReferringPhysicianName", "PatientAge"):
        delattr(src, kw)
    path = tmp_path / "minimal.dcm"
    src.save_as(path)
    p = Predictor()
    pred = p.predict(path, heatmap=True)
    a = p.artifact
    result = build_dicom_result(pred, a.name, a.version, a.sha256, header_from_bytes(path.read_bytes()))
    sr_path, sc_path = result.save(tmp_path / "out")
    sr = pydicom.dcmread(sr_path)
    assert sr.PatientBirthDate == "" and sr.PatientSex == "" and sr.PatientID == src.PatientID
    assert read_sr(sr)["label"] == pred.label
    if shutil.which("dciodvfy"):
        assert _dciodvfy_errors(sr_path) == [] and _dciodvfy_errors(sc_path) == []


def test_the_input_gate_outcome_is_recorded_in_the_sr(dicom_dir: Path):
    """When the service has an input gate (issue 10), its outcome goes into the SR as a comment."""
    from deephealth.dicom_output import build_dicom_result, read_source_header

    p = Predictor()
    path = dicom_dir / "cr_chest_pa_rsna.dcm"
    pred = p.predict(path, heatmap=True)
    pred.suitability = {"status": "warn", "reasons": ["adult patient", "unusual exposure"]}
    a = p.artifact
    sr = build_dicom_result(pred, a.name, a.version, a.sha256, read_source_header(path)).sr
    summary = read_sr(sr)
    assert summary["gate"] == "warn: adult patient; unusual exposure" and summary["comments"] == []
    pred.suitability = None
    assert read_sr(build_dicom_result(pred, a.name, a.version, a.sha256, read_source_header(path)).sr)["gate"] is None


def test_a_borderline_film_has_the_review_reason_in_the_sr_and_a_line_in_the_capture(dataset_root: Path):
    """A film in the released model's review band: the SR carries its reason, the Secondary Capture a fourth line."""
    from deephealth.dicom_output import build_dicom_result
    from deephealth.rendering import REVIEW_LINE

    p = Predictor()
    a = p.artifact
    film = dataset_root / "test" / "PNEUMONIA" / "person134_bacteria_641.jpeg"  # bacterial 0.494 vs viral 0.485
    pred = p.predict(film, heatmap=True)
    if not pred.decision.get("review"):
        pytest.skip("the bundled model has no review band")
    reason = ("borderline: bacterial vs viral is uncertain (bacterial share 0.505 of P(pneumonia), review band "
              "0.423-0.577); the kind of pneumonia can change with a benign change of the film: have it reviewed")
    assert pred.decision["review_reason"] == reason
    result = build_dicom_result(pred, a.name, a.version, a.sha256, None)
    summary = read_sr(result.sr)
    assert summary["review"] == reason and summary["comments"] == [NO_SOURCE_NOTE]
    assert summary["label"] == pred.label == "bacterial"  # the label stands
    # the capture's band has the review line more than the same film's without the flag
    from deephealth.rendering import caption_layout, caption_lines

    flagged = annotated_overlay(pred)
    rows = [t for t, _ in caption_layout(caption_lines(pred), 224)[0]]
    pred.decision = {**pred.decision, "review": False, "review_reason": None}
    plain = annotated_overlay(pred)
    assert REVIEW_LINE not in " ".join(t for t, _ in caption_layout(caption_lines(pred), 224)[0])
    size = 10  # the band's font size for a 224 px wide film: max(10, 224 // 48)
    assert rows[4:6] == ["Borderline result: have it reviewed (the", "reason is in the SR)."]  # wrapped in two rows
    assert flagged.shape[0] - plain.shape[0] == 2 * (size + size // 2) and plain.shape[1] == flagged.shape[1] == 224
    np.testing.assert_array_equal(flagged[:224], plain[:224])  # the image part is the same
    assert read_sr(build_dicom_result(pred, a.name, a.version, a.sha256, None).sr)["review"] is None
    assert "have it reviewed" in REVIEW_LINE



def test_caption_is_wrapped_inside_the_image_at_224_px_and_at_2048_px(dataset_root: Path):
    """The whole notice is drawn on a 224 px film (it was clipped at the right edge) and on a large one;
    every row's text bounding box (ImageDraw.textbbox) lies inside the image; the result line says which
    probability it shows."""
    import dataclasses

    from PIL import Image, ImageDraw

    film = dataset_root / "test" / "PNEUMONIA" / "person134_bacteria_641.jpeg"
    pred = Predictor().predict(film, heatmap=True)
    assert pred.image.shape[1] == 224
    big = dataclasses.replace(pred, image=np.kron(pred.image, np.ones((10, 10), np.float32)),
                              heatmap=np.kron(pred.heatmap, np.ones((10, 10), np.float32)))
    for p, width in ((pred, 224), (big, 2048)):
        arr = annotated_overlay(p)
        img_h = round(p.image.shape[0] * width / p.image.shape[1])
        assert arr.shape[1] == width and arr.shape[0] > img_h
        band = arr[img_h:].max(axis=2)  # white text on black
        assert band.any() and not band[:, -2:].any(), f"{width} px: text touches the right edge (clipped)"
        assert not band[-2:].any(), f"{width} px: text touches the bottom edge"

        from deephealth.rendering import _font, caption_layout, caption_lines

        rows, size, band_h = caption_layout(caption_lines(p), width)
        assert arr.shape[0] == img_h + band_h
        draw = ImageDraw.Draw(Image.fromarray(arr))
        for text, (x, y) in rows:
            left, top, right, bottom = draw.textbbox((x, img_h + y), text, font=_font(size))
            assert 0 <= left and right <= width and img_h <= top and bottom <= arr.shape[0], (width, text)
        laid_out = " ".join(text for text, _ in rows)
        assert NOTICE in laid_out  # every word of the notice, in order
        # the result line names the probability it shows: the predicted class's (bacterial here)
        assert p.label == "bacterial"
        assert f"P(bacterial pneumonia) {p.probabilities['bacterial']:.2f}" in laid_out
        assert "(P = " not in laid_out
    assert len(caption_layout(caption_lines(pred), 224)[0]) > len(caption_layout(caption_lines(big), 2048)[0])


def test_a_narrow_film_gets_a_canvas_wide_enough_for_the_caption(dataset_root: Path):
    """A 64 px wide film (the readers' smallest side) is centred on a 128 px canvas; the caption fits it."""
    import dataclasses

    from deephealth.rendering import CAPTION_MIN_WIDTH, caption_layout, caption_lines

    pred = Predictor().predict(dataset_root / "test" / "PNEUMONIA" / "person134_bacteria_641.jpeg", heatmap=True)
    narrow = dataclasses.replace(pred, image=pred.image[:, 80:144], heatmap=pred.heatmap[:, 80:144])
    arr = annotated_overlay(narrow)
    h = narrow.image.shape[0]
    assert arr.shape[1] == CAPTION_MIN_WIDTH == 128
    assert not arr[:h, :32].any() and not arr[:h, 96:].any() and arr[:h, 32:96].any()  # centred, black beside
    band = arr[h:].max(axis=2)
    assert band.any() and not band[:, -2:].any()
    assert NOTICE in " ".join(t for t, _ in caption_layout(caption_lines(narrow), 128)[0])
    with pytest.raises(ValueError, match="40 px wide cannot hold a word of the caption"):
        caption_layout(caption_lines(narrow), 40)
