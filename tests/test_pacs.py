"""`deephealth pacs` end to end against a real Orthanc (Debian orthanc + orthanc-dicomweb) on loopback."""

from __future__ import annotations

import io
import json
import sqlite3
import urllib.request
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

pytest.importorskip("highdicom", reason="deephealth pacs needs the [pacs] extra")
pytest.importorskip("dicomweb_client", reason="deephealth pacs needs the [pacs] extra")

from _orthanc import orthanc_missing, orthanc_server  # noqa: E402

from deephealth.cli import main  # noqa: E402
from deephealth.dicom_output import read_sr  # noqa: E402
from deephealth.inference import Predictor  # noqa: E402
from deephealth.pacs import make_client, parse_since  # noqa: E402

pytestmark = pytest.mark.needs_data



@pytest.fixture(scope="module")
def orthanc(tmp_path_factory) -> str:
    """Base URL of a fresh Orthanc with an empty temporary storage (stopped after the module)."""
    reason = orthanc_missing()
    if reason:
        pytest.skip(reason)
    with orthanc_server(tmp_path_factory.mktemp("orthanc")) as base:
        yield base


def _upload(base: str, data: bytes) -> None:
    req = urllib.request.Request(f"{base}/instances", data=data, method="POST",
                                 headers={"Content-Type": "application/dicom"})
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200, r.read()


def _tiny_cr(tmp_path: Path) -> tuple[bytes, str, str]:
    """A valid DICOM CR of 8 x 8 pixels (too small to classify); returns (bytes, study UID, SOP UID)."""
    ds = pydicom.Dataset()
    ds.file_meta = pydicom.dataset.FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"  # CR Image Storage
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.PatientID, ds.PatientName, ds.Modality, ds.StudyDate = "TINY1", "Tiny^Test", "CR", "20240101"
    ds.Rows = ds.Columns = 8
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    ds.PixelData = np.arange(64, dtype=np.uint8).tobytes()
    path = tmp_path / "tiny.dcm"
    ds.save_as(path, enforce_file_format=True)
    return path.read_bytes(), ds.StudyInstanceUID, ds.SOPInstanceUID


def _pacs(capsys, url: str, *extra: str) -> tuple[int, dict]:
    rc = main(["pacs", "--url", url, "--format", "json", *extra])
    out, err = capsys.readouterr()
    assert "Traceback" not in err
    return rc, json.loads(out)


def test_pacs_classifies_stores_the_sr_and_is_idempotent(orthanc: str, dicom_dir: Path, tmp_path: Path, capsys,
                                                        monkeypatch):
    src = pydicom.dcmread(dicom_dir / "cr_chest_pa_rsna.dcm", stop_before_pixels=True)
    expected = Predictor().predict(dicom_dir / "cr_chest_pa_rsna.dcm")  # the finding the SR must carry
    _upload(orthanc, (dicom_dir / "cr_chest_pa_rsna.dcm").read_bytes())
    tiny, tiny_study, tiny_sop = _tiny_cr(tmp_path)
    _upload(orthanc, tiny)
    url = f"{orthanc}/dicom-web"

    db = tmp_path / "audit.sqlite3"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", f"sqlite:///{db}")
    rc, report = _pacs(capsys, url, "--audit")
    assert rc == 1  # the tiny image failed ...
    by_sop = {o["sop_uid"]: o for o in report["outcomes"]}
    assert by_sop[tiny_sop]["status"] == "failed" and tiny_sop in by_sop[tiny_sop]["error"]
    assert by_sop[tiny_sop]["review"] is None  # not classified: nothing decided, not "not flagged"
    ok = by_sop[src.SOPInstanceUID]  # ... and the real one was still classified and stored
    assert ok["status"] == "stored" and ok["label"] == expected.label
    assert ok["probabilities"] == pytest.approx(expected.probabilities, abs=1e-9)
    assert (ok["review"], ok["review_reason"]) == (expected.decision["review"], expected.decision["review_reason"])
    assert report["counts"] == {"stored": 1, "skipped": 0, "refused": 0, "failed": 1}
    con = sqlite3.connect(db)
    audit = sorted(con.execute("SELECT interface, client, label, status_code, input_format, review, review_reason "
                               "FROM audit_log"), key=lambda r: r[3])
    con.close()
    review = (int(expected.decision["review"]), expected.decision["review_reason"])
    assert audit == [("pacs", url, expected.label, 200, "DICOM", *review), ("pacs", url, None, 422, "DICOM", None, None)]

    # Query Orthanc (QIDO-RS) for our SR in the source study and read its finding back.
    client = make_client(url)
    srs = client.search_for_series(study_instance_uid=src.StudyInstanceUID, search_filters={"Modality": "SR"})
    assert len(srs) == 1
    sr_series = srs[0]["0020000E"]["Value"][0]
    (inst,) = client.search_for_instances(study_instance_uid=src.StudyInstanceUID, series_instance_uid=sr_series)
    sr = client.retrieve_instance(src.StudyInstanceUID, sr_series, inst["00080018"]["Value"][0])
    assert sr.SOPInstanceUID == ok["sr_uid"] and sr.PatientID == src.PatientID
    finding = read_sr(sr)
    assert finding["label"] == expected.label
    assert finding["pneumonia"] == ("Absent" if expected.label == "normal" else "Present")
    assert finding["probabilities"] == pytest.approx(expected.probabilities, abs=1e-9)
    assert src.SOPInstanceUID in finding["source_sop_instance_uids"]
    assert finding["model_version"] == Predictor().artifact.version
    assert finding["review"] == expected.decision["review_reason"]  # None unless the film is borderline
    scs = client.search_for_series(study_instance_uid=src.StudyInstanceUID, search_filters={"Modality": "OT"})
    assert len(scs) == 1  # the Secondary Capture (highdicom writes Modality OT)

    # Second run: the classified instance is skipped (no second SR), the tiny one fails again.
    rc, again = _pacs(capsys, url, "--since", "1901-01-01")
    assert rc == 1
    assert again["counts"] == {"stored": 0, "skipped": 1, "refused": 0, "failed": 1}
    srs = client.search_for_series(study_instance_uid=src.StudyInstanceUID, search_filters={"Modality": "SR"})
    assert len(srs) == 1

    # --study restricts the run to one study; --since after every study date finds nothing.
    rc, one = _pacs(capsys, url, "--study", tiny_study)
    assert [o["sop_uid"] for o in one["outcomes"]] == [tiny_sop]
    rc, none = _pacs(capsys, url, "--since", "2100-01-01")
    assert rc == 0 and none["outcomes"] == []


def _cr_from_jpeg(jpeg: Path, tmp_path: Path) -> tuple[bytes, str, str]:
    """A DICOM CR (MONOCHROME2, 8 bits) holding a dataset JPEG's pixels; returns (bytes, study UID, SOP UID)."""
    from PIL import Image

    pixels = np.asarray(Image.open(jpeg).convert("L"), dtype=np.uint8)
    data, _, _ = _tiny_cr(tmp_path)
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.PatientID, ds.PatientAge = "CHILD1", "003Y"
    ds.Rows, ds.Columns = pixels.shape
    ds.PixelData = pixels.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), ds.StudyInstanceUID, ds.SOPInstanceUID


def test_a_new_model_version_adds_its_own_sr(orthanc: str, tiny_model_dir: Path, dataset_root: Path,
                                             tmp_path: Path, capsys):
    jpeg = sorted((dataset_root / "test" / "PNEUMONIA").glob("*_virus_*.jpeg"))[0]
    data, study, sop = _cr_from_jpeg(jpeg, tmp_path)
    _upload(orthanc, data)
    url = f"{orthanc}/dicom-web"
    expected = Predictor().predict(jpeg)
    rc, first = _pacs(capsys, url, "--study", study)
    assert rc == 0 and [(o["sop_uid"], o["status"], o["label"]) for o in first["outcomes"]] == [
        (sop, "stored", expected.label)]
    assert first["outcomes"][0]["probabilities"] == pytest.approx(expected.probabilities, abs=1e-6)
    rc, tiny = _pacs(capsys, url, "--study", study, "--model", str(tiny_model_dir))
    assert rc == 0 and tiny["counts"] == {"stored": 1, "skipped": 0, "refused": 0, "failed": 0}  # another model version
    rc, again = _pacs(capsys, url, "--study", study, "--model", str(tiny_model_dir))
    assert again["counts"] == {"stored": 0, "skipped": 1, "refused": 0, "failed": 0}
    client = make_client(url)
    srs = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SR"},
                                   fields=["SeriesDescription"])
    descriptions = sorted(s["0008103E"]["Value"][0] for s in srs)
    bundled = Predictor().artifact
    assert descriptions == sorted([f"Deep Health {bundled.name} {bundled.version} SR",
                                   "Deep Health tiny-test-model 0.0.0-test SR"])


def test_unreachable_pacs_exits_2_with_a_message(capsys):
    rc = main(["pacs", "--url", "http://127.0.0.1:9/dicom-web", "--timeout", "2", "--attempts", "1"])
    out, err = capsys.readouterr()
    assert rc == 2
    assert "cannot query the PACS at http://127.0.0.1:9/dicom-web" in err and "Traceback" not in err


def test_a_borderline_instance_is_marked_in_the_table_line():
    from deephealth.cli.pacs import _line
    from deephealth.pacs import InstanceOutcome

    o = InstanceOutcome("1.2", "1.2.3", "1.2.3.4", "stored", label="viral", sr_uid="9.9",
                        probabilities={"normal": 0.09, "bacterial": 0.02, "viral": 0.89})
    assert _line(o) == "stored   1.2.3.4  viral  P=0.890  SR 9.9"
    o.review, o.review_reason = True, "borderline: P(pneumonia) 0.91 is within the review band ..."
    assert _line(o) == "stored   1.2.3.4  viral  P=0.890  SR 9.9  REVIEW: borderline, have it reviewed (reason in the SR)"
    assert o.to_dict()["review_reason"].startswith("borderline: ")
    o.review, o.gate = False, {"status": "warn", "reasons": ["adult patient (age 45 years): the model was trained on children"]}
    assert _line(o) == ("stored   1.2.3.4  viral  P=0.890  SR 9.9  INPUT GATE WARNS: adult patient (age 45 years): "
                        "the model was trained on children")
    o.gate = {"status": "accept", "reasons": []}
    assert _line(o) == "stored   1.2.3.4  viral  P=0.890  SR 9.9"


def test_parse_since():
    assert parse_since("2024-03-05") == "20240305" == parse_since("20240305")
    for bad in ("2024-13-01", "yesterday", "2024-3-5"):
        with pytest.raises(ValueError, match="--since"):
            parse_since(bad)


def test_a_lateral_instance_beside_a_frontal_one_gets_no_finding(orthanc: str, dataset_root: Path, tmp_path: Path,
                                                                  capsys, monkeypatch):
    """Issue 15: one study, a PA film and a lateral (View Position LL) one: the PA film gets its SR
    finding; the lateral is refused (counted, audited with the reason) and nothing is stored for it."""
    jpeg = sorted((dataset_root / "test" / "NORMAL").glob("*.jpeg"))[0]
    frontal, study, frontal_sop = _cr_from_jpeg(jpeg, tmp_path)
    ds = pydicom.dcmread(io.BytesIO(frontal))
    ds.ViewPosition, ds.BodyPartExamined = "PA", "CHEST"
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    _upload(orthanc, buf.getvalue())
    ds.ViewPosition = "LL"  # the lateral of the same study, in its own series
    ds.SeriesInstanceUID, ds.SOPInstanceUID = generate_uid(), generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    lateral_sop = ds.SOPInstanceUID
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    _upload(orthanc, buf.getvalue())
    url = f"{orthanc}/dicom-web"
    db = tmp_path / "audit-lateral.sqlite3"
    monkeypatch.setenv("DEEPHEALTH_DATABASE_URL", f"sqlite:///{db}")

    rc, report = _pacs(capsys, url, "--study", study, "--audit")
    assert rc == 0  # a refusal is the right answer, not a failure
    assert report["counts"] == {"stored": 1, "skipped": 0, "refused": 1, "failed": 0}
    by_sop = {o["sop_uid"]: o for o in report["outcomes"]}
    assert by_sop[frontal_sop]["status"] == "stored" and by_sop[frontal_sop]["label"] in ("normal", "bacterial", "viral")
    lat = by_sop[lateral_sop]
    assert lat["status"] == "refused" and lat["label"] is None and lat["probabilities"] is None
    assert lat["sr_uid"] is None and lat["sc_uid"] is None
    assert "DICOM View Position (0018,5101) is LL: a lateral view" in lat["reason"]
    assert lat["gate"]["status"] == "refuse"

    client = make_client(url)
    srs = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "SR"})
    assert len(srs) == 1  # one SR: the frontal film's
    sr_series = srs[0]["0020000E"]["Value"][0]
    (inst,) = client.search_for_instances(study_instance_uid=study, series_instance_uid=sr_series)
    finding = read_sr(client.retrieve_instance(study, sr_series, inst["00080018"]["Value"][0]))
    assert frontal_sop in finding["source_sop_instance_uids"] and lateral_sop not in finding["source_sop_instance_uids"]
    scs = client.search_for_series(study_instance_uid=study, search_filters={"Modality": "OT"})
    assert len(scs) == 1  # one heatmap Secondary Capture: the frontal film's

    con = sqlite3.connect(db)
    rows = sorted(con.execute("SELECT label, status_code, gate FROM audit_log"), key=lambda r: r[1])
    con.close()
    assert [(r[0], r[1]) for r in rows] == [(by_sop[frontal_sop]["label"], 200), (None, 422)]
    assert "View Position (0018,5101) is LL" in rows[1][2]
    con = sqlite3.connect(db)  # the refusal's record names its study and instance, and says why
    (refusal,) = con.execute("SELECT study_instance_uid, sop_instance_uid, reason FROM audit_log WHERE status_code = 422")
    con.close()
    assert refusal == (study, lateral_sop, lat["reason"])

    # the table format says it in words
    rc = main(["pacs", "--url", url, "--study", study])
    out, _ = capsys.readouterr()
    assert rc == 0 and "REFUSED  instance " + lateral_sop in out and "not analysed; nothing stored" in out
    assert "1 refused" in out
