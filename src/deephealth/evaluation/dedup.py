"""Metrics with each byte-identical image counted once, and duplicates merged into one bootstrap unit.

The official Kermany test split holds byte-identical files (for example
``NORMAL2-IM-0095-0001.jpeg`` and ``NORMAL2-IM-0096-0001.jpeg``, filed as two patients). Published
results count every file (the anchors' protocol), so the report gives the headline metrics on all
images and, in a second section, on the deduplicated set:

- duplicates are found from the file bytes (SHA-256, :mod:`deephealth.duplicates`), so any
  ``--data`` folder or CSV is deduplicated, not only the shared dataset;
- of each group of identical files only the first by path is kept (identical bytes give identical
  predictions, so which one is kept changes nothing unless the copies carry different labels;
  such label conflicts are listed);
- for the patient bootstrap, patients that share an identical image are merged into one resampling
  unit (:func:`deephealth.duplicates.linked_patients`), so one child filed under two ids is not
  counted as two independent patients.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from deephealth.duplicates import DuplicateGroup, file_digests, find_duplicates, linked_patients
from deephealth.manifest import Record


@dataclass(frozen=True)
class Deduplication:
    """Which scored images the deduplicated metrics keep, and their resampling units.

    Attributes:
        keep: ``(M,)`` bool over the scored images (the rows without error, in order): True for
            the first image (by path) of each group of identical files and for every unique image.
        units: ``(M,)`` resampling unit of each scored image: its patient id, or the ``+``-joined
            sorted ids of the patients merged through an identical image.
        groups: the duplicate groups among the scored images.
    """

    keep: np.ndarray
    units: list[str]
    groups: list[DuplicateGroup]

    @property
    def label_conflicts(self) -> list[DuplicateGroup]:
        """Groups of identical files that carry different labels."""
        return [g for g in self.groups if len(g.labels) > 1]


def deduplicate(rows: list[dict[str, Any]], digests: dict[str, str], split: str = "evaluated") -> Deduplication:
    """Find the duplicate groups among the scored rows and what to keep.

    Args:
        rows: evaluation rows (``path``, ``label``, ``patient_id``, ``error``), as from
            :func:`deephealth.evaluation.scoring.evaluate_model`; rows with an error are ignored.
        digests: ``{path: sha256}`` of the files; a scored file missing from it is hashed here
            (an unreadable one is kept as unique).
        split: name of the evaluated split, recorded in the groups.

    Returns:
        A :class:`Deduplication` over the scored rows.
    """
    scored = [r for r in rows if r["error"] is None]
    # One split is evaluated, so patient ids are compared as they are.
    records = [Record(r["path"], split, r["label"], r["patient_id"]) for r in scored]
    missing, _ = file_digests(r.path for r in records if r.path not in digests)
    digests = {**digests, **missing}
    groups = find_duplicates(records, digests)
    unit_of = linked_patients(records, groups, shared_patient_ids=True)
    duplicated = {g.sha256 for g in groups}
    keep = np.ones(len(scored), dtype=bool)
    kept_digests: set[str] = set()
    for i in sorted(range(len(scored)), key=lambda i: scored[i]["path"]):
        d = digests.get(scored[i]["path"])
        if d in duplicated:
            keep[i] = d not in kept_digests
            kept_digests.add(d)
    return Deduplication(keep, [unit_of[r.patient_id] for r in records], groups)
