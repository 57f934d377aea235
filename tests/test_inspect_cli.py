"""`deephealth inspect`: per-file report, JSON, PNG output, exit status, no tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from deephealth.cli import main


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    """A good PNG with known pixels, a truncated JPEG, a text file and a nested good JPEG."""
    good = np.zeros((64, 100), dtype=np.uint8)
    good[:, 50:] = 255  # half black, half white: min 0, max 1, mean 0.5
    paths = {"good": tmp_path / "in" / "good.png", "nested": tmp_path / "in" / "sub" / "good.jpg"}
    paths["good"].parent.mkdir(parents=True)
    paths["nested"].parent.mkdir(parents=True)
    Image.fromarray(good).save(paths["good"])
    # grey 120, not 128: a JPEG whose bottom rows are exactly 128 looks cut short (readers.image.missing_jpeg_rows)
    nested = np.full((80, 80), 120, dtype=np.uint8)
    nested[:8, :8] = 0  # a dark corner: not blank (a flat image is refused as having no contrast)
    Image.fromarray(nested).save(paths["nested"], quality=95)
    rng = np.random.default_rng(1)
    big = tmp_path / "src.jpg"
    Image.fromarray((rng.random((200, 200)) * 255).astype(np.uint8)).save(big)
    paths["truncated"] = tmp_path / "in" / "cut.jpg"
    paths["truncated"].write_bytes(big.read_bytes()[:3000])
    paths["text"] = tmp_path / "notes.txt"
    paths["text"].write_text("not an image\n" * 30)
    (tmp_path / "in" / ".hidden.png").write_bytes(b"junk")  # skipped when scanning the folder
    return paths


def run_json(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, list[dict]]:
    rc = main(["inspect", "--json", *args])
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_json_report_for_a_good_file(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, rows = run_json(capsys, str(files["good"]))
    assert rc == 0
    (row,) = rows
    assert row["path"] == str(files["good"])
    assert row["ok"] is True and row["error"] is None
    assert (row["format"], row["width"], row["height"], row["bit_depth"]) == ("PNG", 100, 64, 8)
    assert (row["min"], row["max"], row["mean"]) == (0.0, 1.0, 0.5)
    assert row["warnings"] == []


def test_batch_with_bad_files_reports_each_and_exits_1(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, rows = run_json(capsys, str(files["truncated"]), str(files["good"]), str(files["text"]), "/no/such/file.png")
    assert rc == 1
    assert [r["ok"] for r in rows] == [False, True, False, False]
    assert rows[0]["error"].startswith(f"{files['truncated']}: truncated or corrupt JPEG file")
    assert rows[2]["error"] == f"{files['text']}: not an image (unrecognised content; expected JPEG, PNG, TIFF, DICOM, BMP, GIF or WebP)"
    assert rows[3]["error"] == "/no/such/file.png: file not found"
    for bad in (rows[0], rows[2], rows[3]):
        assert {"path", "ok", "format", "width", "height", "min", "max", "mean", "warnings", "error"} <= set(bad)
        assert bad["min"] is None and "\n" not in bad["error"]


def test_folder_is_searched_recursively_skipping_hidden(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc, rows = run_json(capsys, str(files["good"].parent))
    assert rc == 1  # cut.jpg is in the folder
    assert [Path(r["path"]).name for r in rows] == ["cut.jpg", "good.png", "good.jpg"]
    assert rows[2]["mean"] == pytest.approx((120 * 6336 + 0 * 64) / 6400 / 255, abs=2 / 255)


def test_folder_skips_non_image_suffixes_like_predict(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """A notes.txt inside a folder is skipped and said so (as predict does); named directly it is read."""
    folder = files["good"].parent
    (folder / "sub" / "notes.txt").write_text("reading list\n")
    rc = main(["inspect", "--json", str(files["good"]), str(folder / "sub")])
    out, err = capsys.readouterr()
    assert rc == 0 and [Path(r["path"]).name for r in json.loads(out)] == ["good.png", "good.jpg"]
    assert f"skipped 1 file(s) in folders, not image suffixes (.txt 1): {folder / 'sub' / 'notes.txt'}" in err
    rc, rows = run_json(capsys, str(folder / "sub" / "notes.txt"))
    assert rc == 1 and rows[0]["error"].startswith(f"{folder / 'sub' / 'notes.txt'}: not an image")


def test_out_writes_the_decoded_image_as_8bit_png(files: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "seen"
    other = tmp_path / "other" / "good.png"  # same stem as files["good"]: must not overwrite it
    other.parent.mkdir()
    other_px = np.full((64, 64), 7, dtype=np.uint8)
    other_px[0, 0] = 0  # not blank
    Image.fromarray(other_px).save(other)
    rc, rows = run_json(capsys, str(files["good"]), str(other), "--out", str(out))
    assert rc == 0
    assert [r["out"] for r in rows] == [str(out / "good.png"), str(out / "good-2.png")]
    with Image.open(out / "good.png") as im:
        assert im.mode == "L" and im.size == (100, 64)
        arr = np.asarray(im)
    assert arr[0, 0] == 0 and arr[0, 99] == 255
    with Image.open(out / "good-2.png") as im:
        assert np.asarray(im).max() == 7


def test_out_for_dicom_monochrome1_is_inverted(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    arr = np.full((64, 64), 4000, dtype=np.uint16)  # MONOCHROME1: high = dark (air)
    arr[:, :16] = 0  # low = bright (dense)
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID = "1.2.840.10008.5.1.4.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID = generate_uid()
    ds.Modality = "CR"
    ds.set_pixel_data(arr, "MONOCHROME1", 12)
    src = tmp_path / "IMG0001"  # no extension, as PACS exports often are
    ds.save_as(src, enforce_file_format=True)
    rc, rows = run_json(capsys, str(src), "--out", str(tmp_path / "out"))
    assert rc == 0
    assert rows[0]["photometric_interpretation"] == "MONOCHROME1"
    assert any("inverted" in w for w in rows[0]["warnings"])
    with Image.open(tmp_path / "out" / "IMG0001.png") as im:
        png = np.asarray(im)
    assert png[10, 0] == 255 and png[10, 63] == 0


def test_table_output(files: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    rc = main(["inspect", str(files["good"]), str(files["truncated"])])
    out = capsys.readouterr().out
    assert rc == 1
    lines = out.splitlines()
    assert lines[0].split()[:3] == ["status", "format", "size"]
    assert lines[1].split()[:6] == ["ok", "PNG", "100x64", "8", "-", "-"]
    assert lines[1].split()[6:9] == ["0.000", "1.000", "0.500"]
    assert lines[2].startswith(f"FAILED  {files['truncated']}: truncated or corrupt JPEG file")
    assert lines[-1] == "1 of 2 file(s) read, 1 failed"


def test_real_dicom_files(dicom_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rc, rows = run_json(capsys, str(dicom_dir))
    assert rc == 1
    by_name = {Path(r["path"]).name: r for r in rows}
    cr, ct = by_name["cr_chest_pa_rsna.dcm"], by_name["ct_small.dcm"]
    assert cr["ok"] and (cr["format"], cr["modality"], cr["view_position"]) == ("DICOM", "CR", "PA")
    assert (cr["width"], cr["height"]) == (1024, 1024)
    assert cr["mean"] == pytest.approx(0.629, abs=0.004)
    # header facts for the input gate (the adult warning is the gate's, not the reader's)
    assert cr["warnings"] == [] and (cr["patient_age"], cr["patient_age_years"], cr["body_part"]) == ("62", 62.0, "CHEST")
    assert cr["sop_class_name"] == "Secondary Capture Image Storage"
    assert not ct["ok"] and "DICOM modality CT" in ct["error"]


def test_no_traceback_from_the_console_script(files: dict[str, Path]) -> None:
    exe = Path(sys.executable).with_name("deephealth")
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "deephealth.cli"]
    proc = subprocess.run(
        [*cmd, "inspect", str(files["truncated"]), str(files["text"]), str(files["good"])],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 1
    assert "Traceback" not in proc.stdout + proc.stderr
    assert proc.stdout.count("FAILED") == 2 and "1 of 3 file(s) read" in proc.stdout


def test_empty_folder(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["inspect", str(tmp_path)]) == 1
    assert "no files found" in capsys.readouterr().err


def test_unexpected_error_becomes_a_row(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    import deephealth.readers

    def boom(*args, **kwargs):
        raise RuntimeError("codec exploded")

    monkeypatch.setattr(deephealth.readers, "read_image", boom)
    rc, rows = run_json(capsys, str(files["good"]))
    assert rc == 1
    assert rows[0]["error"] == f"{files['good']}: unexpected error (RuntimeError: codec exploded)"
