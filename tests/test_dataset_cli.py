"""``deephealth dataset``: counts, duplicates, and a loud failure on a cross-split image or patient."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from deephealth.cli import main


def _write(root: Path, rel: str, data: bytes) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _tiny_dataset(root: Path, leak: bool) -> Path:
    """3 train patients per class and 1 test image per class; with ``leak`` a test file is a train file."""
    for k in range(3):
        _write(root, f"train/NORMAL/IM-{k:04d}-0001.jpeg", f"normal {k}".encode())
        _write(root, f"train/PNEUMONIA/person{k}_bacteria_{k}.jpeg", f"bacterial {k}".encode())
        _write(root, f"train/PNEUMONIA/person{k + 10}_virus_{k}.jpeg", f"viral {k}".encode())
    _write(root, "train/PNEUMONIA/person0_bacteria_99.jpeg", b"bacterial 0")  # same child, same bytes
    _write(root, "test/NORMAL/IM-0001-0001.jpeg", b"test normal")  # id reused: another child
    _write(root, "test/PNEUMONIA/person1_bacteria_1.jpeg", b"test bacterial")
    _write(root, "test/PNEUMONIA/person5_virus_7.jpeg", b"viral 2" if leak else b"test viral")
    return root


def test_clean_dataset_reports_duplicates_and_exits_0(tmp_path: Path, capsys) -> None:
    root = _tiny_dataset(tmp_path / "ds", leak=False)
    rc = main(["dataset", "--data", str(root), "--val-fraction", "0.34"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "within train: 1 group(s), 2 files (1 redundant); 0 group(s) span more than one patient id" in out
    assert "train/PNEUMONIA/person0_bacteria_0.jpeg = train/PNEUMONIA/person0_bacteria_99.jpeg" in out
    assert "across splits: 0 group(s)" in out
    assert "2 id(s) occur in more than one split as different children" in out  # IM-0001, person1
    assert "leak" not in err


def test_planted_cross_split_duplicate_fails_naming_it(tmp_path: Path, capsys) -> None:
    root = _tiny_dataset(tmp_path / "ds", leak=True)
    rc = main(["dataset", "--data", str(root)])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "error: data leak: 2 image(s) or patient(s) in more than one split:" in err
    assert "identical image in test, train: test/person5_virus_7.jpeg = train/person12_virus_2.jpeg" in err
    assert "patient in more than one split: test/person5 = train/person12" in err
    assert "across splits: 1 group(s)" in out

    rc = main(["dataset", "--data", str(root), "--json"])
    out, err = capsys.readouterr()
    summary = json.loads(out)
    assert rc == 1 and len(summary["leaks"]) == 2
    assert summary["duplicates"]["n_cross_split_groups"] == 1
    assert summary["duplicates"]["cross_split_patients"] == [["test/person5", "train/person12"]]


def test_csv_with_shared_patient_ids(tmp_path: Path, capsys) -> None:
    for name in ("a.png", "b.png", "c.png"):
        _write(tmp_path, f"imgs/{name}", name.encode())
    table = tmp_path / "site.csv"
    with table.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id", "split"])
        w.writerows([["imgs/a.png", "normal", "MRN1", "train"], ["imgs/b.png", "viral", "MRN2", "train"],
                     ["imgs/c.png", "normal", "MRN1", "test"]])
    rc = main(["dataset", "--data", str(table)])
    out, err = capsys.readouterr()
    assert rc == 0 and "1 id(s) occur in more than one split as different children" in out
    rc = main(["dataset", "--data", str(table), "--shared-patient-ids"])
    out, err = capsys.readouterr()
    assert rc == 1 and "patient in more than one split: MRN1" in err


def test_bad_data_exits_2(tmp_path: Path, capsys) -> None:
    rc = main(["dataset", "--data", str(tmp_path / "nope")])
    _, err = capsys.readouterr()
    assert rc == 2 and "dataset folder not found" in err


@pytest.mark.needs_data
def test_real_dataset_has_within_split_duplicates_only(data_root: Path, capsys) -> None:
    rc = main(["dataset", "--data", str(data_root / "chest_xray_224.csv"), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    s = json.loads(out)
    assert s["counts"]["test"]["total"] == 624 and s["problems"] == [] and s["leaks"] == []
    assert s["duplicates"]["within_split"]["test"]["groups"] == 6
    assert s["duplicates"]["within_split"]["train"]["groups"] == 24
    files = {tuple(g["files"]) for g in s["duplicates"]["groups"]}
    assert ("chest_xray_224/test/NORMAL/NORMAL2-IM-0095-0001.jpeg",
            "chest_xray_224/test/NORMAL/NORMAL2-IM-0096-0001.jpeg") in files


def test_identical_images_of_two_train_patients_split_into_fit_and_validation_fail(tmp_path: Path, capsys) -> None:
    root = tmp_path / "ds"
    _write(root, "train/NORMAL/IM-0001-0001.jpeg", b"same film")
    _write(root, "train/NORMAL/IM-0002-0001.jpeg", b"same film")  # 2 normal patients: one goes to validation
    _write(root, "train/PNEUMONIA/person1_bacteria_1.jpeg", b"b")
    rc = main(["dataset", "--data", str(root), "--val-fraction", "0.5"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert "within train: 1 group(s), 2 files (1 redundant); 1 group(s) span more than one patient id" in out
    assert "identical image in train (fit), validation: " in err and "(grouped split, seed 0)" in err
    assert "IM-0001-0001.jpeg" in err and "IM-0002-0001.jpeg" in err
