"""Manifest parsing and the patient-grouped split, on synthetic folders and the real dataset."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from deephealth.manifest import grouped_split, parse_name, read_csv, scan


def _touch(root: Path, rel: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\xff\xd8\xff")  # the manifest never decodes images


@pytest.mark.parametrize(
    ("folder", "stem", "label", "patient"),
    [
        ("PNEUMONIA", "person12_bacteria_44", "bacterial", "person12"),
        ("PNEUMONIA", "person12_virus_45", "viral", "person12"),
        ("PNEUMONIA", "person447_virus_921_1", "viral", "person447"),
        ("pneumonia", "Person3_Bacteria_7", "bacterial", "person3"),
        ("NORMAL", "IM-0115-0001", "normal", "IM-0115"),
        ("NORMAL", "IM-0011-0001-0002", "normal", "IM-0011"),
        ("NORMAL", "NORMAL2-IM-1427-0001", "normal", "NORMAL2-IM-1427"),
    ],
)
def test_parse_name(folder: str, stem: str, label: str, patient: str) -> None:
    assert parse_name(folder, stem) == (label, patient)


@pytest.mark.parametrize(
    ("folder", "stem"),
    [("PNEUMONIA", "person12_fungus_3"), ("PNEUMONIA", "scan_001"), ("NORMAL", "person1_bacteria_1"),
     ("COVID", "IM-0001-0001")],
)
def test_parse_name_refuses_what_does_not_fit(folder: str, stem: str) -> None:
    with pytest.raises(ValueError):
        parse_name(folder, stem)


def test_scan_synthetic_folder_reports_problems(tmp_path: Path) -> None:
    for rel in [
        "train/NORMAL/IM-0001-0001.jpeg",
        "train/NORMAL/IM-0001-0002.jpeg",
        "train/PNEUMONIA/person1_bacteria_1.jpeg",
        "train/PNEUMONIA/person2_virus_2.jpeg",
        "test/NORMAL/NORMAL2-IM-0005-0001.jpeg",
        "train/PNEUMONIA/unknown_name.jpeg",
        "train/PNEUMONIA/notes.txt",
        "train/COVID/IM-0002-0001.jpeg",
        "extra/IM-0003-0001.jpeg",
    ]:
        _touch(tmp_path, rel)
    m = scan(tmp_path)
    assert [(r.split, r.label, r.patient_id) for r in m.records] == [
        ("test", "normal", "NORMAL2-IM-0005"),
        ("train", "normal", "IM-0001"),
        ("train", "normal", "IM-0001"),
        ("train", "bacterial", "person1"),
        ("train", "viral", "person2"),
    ]
    assert len(m.problems) == 4
    joined = "\n".join(m.problems)
    for bad in ("unknown_name.jpeg", "notes.txt", "COVID", "extra"):
        assert bad in joined
    assert m.summary()["train"] == {"normal": 2, "bacterial": 1, "viral": 1, "total": 4}


def test_scan_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        scan(tmp_path / "nope")
    with pytest.raises(FileNotFoundError, match="none of the split folders"):
        scan(tmp_path)


def _synthetic_records(tmp_path: Path):
    # 30 patients per class, 1-3 images each: patient k has (k % 3) + 1 images.
    for label, folder, fmt in [("normal", "NORMAL", "IM-{:04d}-{:04d}"),
                               ("bacterial", "PNEUMONIA", "person{}_bacteria_{}"),
                               ("viral", "PNEUMONIA", "person{}_virus_{}")]:
        offset = {"normal": 0, "bacterial": 100, "viral": 200}[label]
        for k in range(30):
            for j in range(k % 3 + 1):
                _touch(tmp_path, f"train/{folder}/{fmt.format(offset + k, j + 1)}.jpeg")
    return scan(tmp_path).split("train")


def test_grouped_split_keeps_patients_whole_and_stratifies(tmp_path: Path) -> None:
    records = _synthetic_records(tmp_path)
    train, val = grouped_split(records, val_fraction=0.2, seed=3)
    assert len(train) + len(val) == len(records) == 3 * 60
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    for label in ("normal", "bacterial", "viral"):
        assert len({r.patient_id for r in val if r.label == label}) == 6  # 20 % of 30 patients
    again = grouped_split(records, val_fraction=0.2, seed=3)
    assert again == (train, val)
    other = grouped_split(records, val_fraction=0.2, seed=4)
    assert {r.patient_id for r in other[1]} != {r.patient_id for r in val}


def test_grouped_split_bad_fraction() -> None:
    with pytest.raises(ValueError):
        grouped_split([], val_fraction=1.0)


def test_real_dataset_manifest_and_split(dataset_root: Path) -> None:
    m = scan(dataset_root)
    assert m.problems == []
    s = m.summary()
    assert s["train"] == {"normal": 1341, "bacterial": 2530, "viral": 1345, "total": 5216}
    assert s["test"] == {"normal": 234, "bacterial": 242, "viral": 148, "total": 624}
    assert s["val"]["total"] == 16
    train, val = grouped_split(m.split("train"), 0.1, 0)
    assert not {r.patient_id for r in train} & {r.patient_id for r in val}
    assert (len(train), len(val)) == (4714, 502)


def test_read_csv(tmp_path: Path) -> None:
    _touch(tmp_path, "a.jpeg")
    _touch(tmp_path, "b.png")
    with open(tmp_path / "list.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "patient_id"])
        w.writerows([["a.jpeg", "viral", "p1"], ["b.png", "0", ""], ["missing.jpeg", "normal", "p2"],
                     ["a.jpeg", "fungal", "p3"]])
    m = read_csv(tmp_path / "list.csv")
    assert [(Path(r.path).name, r.label, r.patient_id) for r in m.records] == [
        ("a.jpeg", "viral", "p1"), ("b.png", "normal", f"image:{tmp_path / 'b.png'}")]
    assert len(m.problems) == 2 and "missing.jpeg" in m.problems[0] and "fungal" in m.problems[1]


def test_read_csv_finds_paths_in_the_folder_named_like_the_csv(tmp_path: Path) -> None:
    _touch(tmp_path, "site/test/NORMAL/a.jpeg")
    _touch(tmp_path, "b.jpeg")
    (tmp_path / "site.csv").write_text("path,label,split\ntest/NORMAL/a.jpeg,normal,test\nb.jpeg,viral,test\n"
                                       "test/NORMAL/zz.jpeg,normal,test\n")
    m = read_csv(tmp_path / "site.csv")
    assert [r.path for r in m.records] == [str(tmp_path / "site/test/NORMAL/a.jpeg"), str(tmp_path / "b.jpeg")]
    assert m.problems == [f"{tmp_path / 'site.csv'}:4: file not found: test/NORMAL/zz.jpeg (looked in "
                          f"{tmp_path / 'test/NORMAL'} and {tmp_path / 'site/test/NORMAL'})"]


@pytest.mark.needs_data
def test_read_shared_csv(data_root: Path) -> None:
    m = read_csv(data_root / "chest_xray_224.csv")
    assert m.problems == [] and len(m.records) == 5856
    test = m.split("test")
    assert len(test) == 624 and len({r.patient_id for r in test}) == 427
    assert all(Path(r.path).is_relative_to(data_root / "chest_xray_224") for r in m.records)


def test_split_identity_is_the_training_loops(dataset_root: Path) -> None:
    """manifest.split_identity (torch-free, for evaluate) computes what the training run recorded."""
    pytest.importorskip("torch")
    from deephealth.manifest import split_identity
    from deephealth.training.loop import split_identity as loop_split_identity

    train, val = grouped_split(scan(dataset_root).split("train"), 0.1, 0)
    ident = split_identity(train, val)
    assert loop_split_identity is split_identity  # one computation, for training and evaluate
    assert ident["val_sha256"] == "9618d9779bec0af4edb5a7d3505146b43bfa2820aa6b5764bb13325d01e9cfa7"
    assert (ident["n_train"], ident["n_val"]) == (4714, 502)
