"""Byte-identical images and patient overlap: synthetic records with planted duplicates, and the real dataset."""

from __future__ import annotations

from pathlib import Path

import pytest

from deephealth.duplicates import check_overlap, file_digests, find_duplicates, linked_patients
from deephealth.manifest import scan


def _write(root: Path, rel: str, data: bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)
    return p


def test_file_digests_known_value_and_unreadable(tmp_path: Path) -> None:
    f = _write(tmp_path, "abc.bin", b"abc")
    digests, problems = file_digests([str(f), str(tmp_path / "missing.jpeg"), str(f)])
    # FIPS 180-2, appendix B.1: SHA-256("abc")
    assert digests == {str(f): "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}
    assert len(problems) == 1 and "missing.jpeg: cannot read" in problems[0]


def _synthetic(tmp_path: Path, plant_leak: bool):
    _write(tmp_path, "train/NORMAL/IM-0001-0001.jpeg", b"n1")
    _write(tmp_path, "train/NORMAL/IM-0002-0001.jpeg", b"n1")  # within train, another patient id
    _write(tmp_path, "train/PNEUMONIA/person1_bacteria_1.jpeg", b"b1")
    _write(tmp_path, "train/PNEUMONIA/person3_virus_5.jpeg", b"v3")
    _write(tmp_path, "test/PNEUMONIA/person1_bacteria_9.jpeg", b"other child")  # same id, other child
    _write(tmp_path, "test/PNEUMONIA/person7_virus_2.jpeg", b"v3" if plant_leak else b"v7")
    return scan(tmp_path).records


def test_clean_splits_reuse_ids_without_leak(tmp_path: Path) -> None:
    rep = check_overlap(_synthetic(tmp_path, plant_leak=False))
    assert rep.leaks == [] and rep.cross_split == [] and rep.cross_split_patients == []
    assert rep.reused_patient_ids == ["person1"]  # numbering restarts: different children
    [g] = rep.within_split
    assert [Path(r.path).name for r in g.records] == ["IM-0001-0001.jpeg", "IM-0002-0001.jpeg"]
    assert g.patient_ids == ["IM-0001", "IM-0002"] and g.splits == ["train"] and g.labels == ["normal"]
    assert rep.describe(str(tmp_path))["within_split"] == {
        "train": {"groups": 1, "files": 2, "redundant_files": 1, "groups_spanning_patient_ids": 1}}


def test_shared_patient_ids_make_a_reused_id_a_leak(tmp_path: Path) -> None:
    rep = check_overlap(_synthetic(tmp_path, plant_leak=False), shared_patient_ids=True)
    assert rep.cross_split_patients == [["person1"]]
    assert rep.leaks == ["patient in more than one split: person1"]


def test_planted_cross_split_duplicate_is_named(tmp_path: Path) -> None:
    rep = check_overlap(_synthetic(tmp_path, plant_leak=True))
    [g] = rep.cross_split
    assert g.splits == ["test", "train"]
    assert rep.cross_split_patients == [["test/person7", "train/person3"]]
    assert rep.leaks == [
        "identical image in test, train: test/person7_virus_2.jpeg = train/person3_virus_5.jpeg",
        "patient in more than one split: test/person7 = train/person3",
    ]


def test_linked_patients_merge_through_identical_images(tmp_path: Path) -> None:
    records = _synthetic(tmp_path, plant_leak=True)
    units = linked_patients(records, find_duplicates(records))
    assert units["train/IM-0001"] == units["train/IM-0002"] == "train/IM-0001+train/IM-0002"
    assert units["train/person3"] == units["test/person7"] == "test/person7+train/person3"
    assert units["train/person1"] == "train/person1" and units["test/person1"] == "test/person1"


@pytest.mark.needs_data
def test_real_dataset_duplicates(dataset_root: Path) -> None:
    m = scan(dataset_root)
    rep = check_overlap(m.records)
    assert rep.leaks == [] and rep.cross_split == []
    counts = rep.describe()["within_split"]
    assert counts["test"] == {"groups": 6, "files": 12, "redundant_files": 6, "groups_spanning_patient_ids": 1}
    assert counts["train"] == {"groups": 24, "files": 50, "redundant_files": 26, "groups_spanning_patient_ids": 0}
    assert "val" not in counts
    assert len(rep.reused_patient_ids) == 170
    pair = [g for g in rep.within_split if len(g.patient_ids) > 1]
    assert len(pair) == 1
    assert [Path(r.path).name for r in pair[0].records] == ["NORMAL2-IM-0095-0001.jpeg", "NORMAL2-IM-0096-0001.jpeg"]
    assert pair[0].sha256 == "9088f8d6907f76d04b5604e84a3d0f4827ac04ada50ad82cf8537d9283f773bd"
    test_pairs = {tuple(Path(r.path).name for r in g.records) for g in rep.within_split if g.splits == ["test"]}
    assert ("person1661_virus_2872.jpeg", "person1661_virus_2873.jpeg") in test_pairs
    assert ("NORMAL2-IM-0173-0001-0001.jpeg", "NORMAL2-IM-0173-0001-0002.jpeg") in test_pairs
