"""Byte-identical images and patient overlap within and across dataset splits.

Two files are duplicates when their bytes are identical (same SHA-256 digest, FIPS 180-4), which
is computed from the files themselves, so any folder or CSV of images can be checked. Pixel-level
near-duplicates (re-encoded or resized copies) are not detected.

Patient ids: in the Kermany layout the ``personN`` / ``IM-XXXX`` numbering restarts between the
official splits, so ``person5`` in train and ``person5`` in test are different children. Patients
are therefore compared as ``<split>/<patient_id>`` (``shared_patient_ids=False``, the default) and
a patient id reused in another split is only counted, not treated as a leak. A child can still be
linked across splits by an identical image: patients whose images are byte-identical are taken to
be the same child, and a linked set of patients that spans two splits is a *cross-split patient*.
For data whose patient ids name the same child in every split (for example a hospital's record
numbers in a CSV), ``shared_patient_ids=True`` also treats a patient id present in two splits as
one cross-split patient.

A cross-split duplicate or patient means test images (or their children) were seen in training:
:attr:`OverlapReport.leaks` lists them, and ``deephealth dataset`` exits non-zero naming them.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from deephealth.artifact import sha256_file
from deephealth.manifest import Record, relative_path

_logger = logging.getLogger(__name__)


def file_digests(paths: Iterable[str]) -> tuple[dict[str, str], list[str]]:
    """SHA-256 digest of each file's bytes.

    Args:
        paths: file paths (duplicates in the list are hashed once).

    Returns:
        ``(digests, problems)``: ``{path: 64-char lowercase hex digest}`` for every readable file,
        and one line ``"<path>: cannot read: <reason>"`` per file that could not be read.
    """
    digests: dict[str, str] = {}
    problems: list[str] = []
    for p in paths:
        if p in digests:
            continue
        try:
            digests[p] = sha256_file(p)
        except OSError as exc:
            problems.append(f"{p}: cannot read: {exc.strerror or exc}")
    return digests, problems


class _UnionFind:
    """Disjoint sets of strings (path halving, union by name order so results are stable)."""

    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        while self.parent[x] != x:
            self.parent[x] = self.parent[self.parent[x]]
            x = self.parent[x]
        return x

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo

    def groups(self) -> list[list[str]]:
        out: dict[str, list[str]] = defaultdict(list)
        for x in self.parent:
            out[self.find(x)].append(x)
        return sorted(sorted(v) for v in out.values())


def patient_key(record: Record, shared_patient_ids: bool = False) -> str:
    """The identity of a record's patient: ``<split>/<patient_id>``, or ``patient_id`` when shared."""
    return record.patient_id if shared_patient_ids else f"{record.split}/{record.patient_id}"


@dataclass(frozen=True)
class DuplicateGroup:
    """Two or more records whose files are byte-identical.

    Attributes:
        sha256: the common digest (64 lowercase hex characters).
        records: the records, sorted by split then path.
    """

    sha256: str
    records: tuple[Record, ...]

    @property
    def splits(self) -> list[str]:
        """Sorted distinct splits of the group's records."""
        return sorted({r.split for r in self.records})

    @property
    def patient_ids(self) -> list[str]:
        """Sorted distinct patient ids as the manifest has them (not namespaced)."""
        return sorted({r.patient_id for r in self.records})

    @property
    def labels(self) -> list[str]:
        """Sorted distinct labels; more than one means the same image carries conflicting labels."""
        return sorted({r.label for r in self.records})

    @property
    def cross_split(self) -> bool:
        """True when the identical files lie in more than one split."""
        return len(self.splits) > 1

    def describe(self, root: str | None = None) -> dict[str, Any]:
        """JSON-able form: digest, files (relative to ``root`` when under it), splits, patients, labels."""
        return {
            "sha256": self.sha256,
            "files": [relative_path(r.path, root) for r in self.records],
            "splits": self.splits,
            "patient_ids": self.patient_ids,
            "labels": self.labels,
        }


def find_duplicates(records: Sequence[Record], digests: dict[str, str] | None = None) -> list[DuplicateGroup]:
    """Groups of byte-identical files among ``records``.

    Args:
        records: manifest records; a path listed twice counts as two records of the same bytes.
        digests: ``{path: sha256}`` already computed (e.g. by :func:`file_digests`); files missing
            from it are hashed here, and files that cannot be read are skipped (logged).

    Returns:
        The groups with two or more records, sorted by their first record's (split, path).
    """
    if digests is None:
        digests, problems = file_digests(r.path for r in records)
    else:
        missing = [r.path for r in records if r.path not in digests]
        extra, problems = file_digests(missing)
        digests = {**digests, **extra}
    for p in problems:
        _logger.warning("duplicates: %s", p)
    by_digest: dict[str, list[Record]] = defaultdict(list)
    for r in records:
        if r.path in digests:
            by_digest[digests[r.path]].append(r)
    groups = [
        DuplicateGroup(d, tuple(sorted(rs, key=lambda r: (r.split, r.path))))
        for d, rs in by_digest.items()
        if len(rs) > 1
    ]
    return sorted(groups, key=lambda g: (g.records[0].split, g.records[0].path))


def linked_patients(
    records: Sequence[Record], groups: Sequence[DuplicateGroup], shared_patient_ids: bool = False
) -> dict[str, str]:
    """Resampling unit of each patient: patients sharing an identical image merged into one.

    Args:
        records: manifest records.
        groups: their duplicate groups (:func:`find_duplicates`).
        shared_patient_ids: see :func:`patient_key`.

    Returns:
        ``{patient key: unit}`` for every patient of ``records``; the unit of a merged set is its
        sorted patient keys joined by ``+`` (e.g. ``test/NORMAL2-IM-0095+test/NORMAL2-IM-0096``),
        otherwise the patient key itself.
    """
    uf = _UnionFind()
    for r in records:
        uf.find(patient_key(r, shared_patient_ids))
    for g in groups:
        keys = [patient_key(r, shared_patient_ids) for r in g.records]
        for k in keys[1:]:
            uf.union(keys[0], k)
    unit: dict[str, str] = {}
    for members in uf.groups():
        name = "+".join(members)
        for m in members:
            unit[m] = name
    return unit


@dataclass
class OverlapReport:
    """Duplicates and patient overlap of a set of records (see :func:`check_overlap`).

    Attributes:
        duplicate_groups: every group of byte-identical files.
        cross_split_patients: sets of patient keys (``split/id``, or ``id`` when shared) that are
            one child present in more than one split, each sorted.
        reused_patient_ids: patient ids that occur in more than one split; with split-local ids
            these are different children (numbering restarts) and not a leak.
        shared_patient_ids: whether patient ids were taken to name the same child in every split.
        problems: files that could not be read (not checked).
    """

    duplicate_groups: list[DuplicateGroup]
    cross_split_patients: list[list[str]]
    reused_patient_ids: list[str]
    shared_patient_ids: bool
    problems: list[str] = field(default_factory=list)

    @property
    def within_split(self) -> list[DuplicateGroup]:
        """Duplicate groups that lie in a single split."""
        return [g for g in self.duplicate_groups if not g.cross_split]

    @property
    def cross_split(self) -> list[DuplicateGroup]:
        """Duplicate groups spanning more than one split (a leak)."""
        return [g for g in self.duplicate_groups if g.cross_split]

    @property
    def leaks(self) -> list[str]:
        """One line per cross-split duplicate group and per cross-split patient; empty when clean."""
        out = [
            f"identical image in {', '.join(g.splits)}: " + " = ".join(f"{r.split}/{_name(r)}" for r in g.records)
            for g in self.cross_split
        ]
        out += [f"patient in more than one split: {' = '.join(p)}" for p in self.cross_split_patients]
        return out

    def describe(self, root: str | None = None) -> dict[str, Any]:
        """JSON-able summary: counts per split, every group, the cross-split patients, the leaks."""
        per_split: dict[str, dict[str, int]] = {}
        for g in self.within_split:
            s = per_split.setdefault(g.splits[0], {"groups": 0, "files": 0, "redundant_files": 0,
                                                   "groups_spanning_patient_ids": 0})
            s["groups"] += 1
            s["files"] += len(g.records)
            s["redundant_files"] += len(g.records) - 1
            s["groups_spanning_patient_ids"] += len(g.patient_ids) > 1
        return {
            "method": "SHA-256 of the file bytes (byte-identical files only)",
            "shared_patient_ids": self.shared_patient_ids,
            "within_split": per_split,
            "n_cross_split_groups": len(self.cross_split),
            "groups": [g.describe(root) for g in self.duplicate_groups],
            "cross_split_patients": self.cross_split_patients,
            "n_reused_patient_ids": len(self.reused_patient_ids),
            "leaks": self.leaks,
            "problems": list(self.problems),
        }


def _name(r: Record) -> str:
    return r.path.replace("\\", "/").rsplit("/", 1)[-1]


def check_overlap(
    records: Sequence[Record], shared_patient_ids: bool = False, digests: dict[str, str] | None = None
) -> OverlapReport:
    """Byte-identical images and patients within and across splits.

    Args:
        records: manifest records of one or more splits.
        shared_patient_ids: False (Kermany layout, default): patient ids are local to a split;
            True: a patient id names the same child in every split.
        digests: ``{path: sha256}`` already computed; the rest are hashed here.

    Returns:
        An :class:`OverlapReport`; ``report.leaks`` is empty when no image or child is in two splits.
    """
    if digests is None:
        digests, problems = file_digests(r.path for r in records)
    else:
        problems = []
    groups = find_duplicates(records, digests)
    units = linked_patients(records, groups, shared_patient_ids)
    split_of: dict[str, set[str]] = defaultdict(set)
    members: dict[str, set[str]] = defaultdict(set)
    for r in records:
        key = patient_key(r, shared_patient_ids)
        split_of[units[key]].add(r.split)
        members[units[key]].add(key)
    cross_patients = sorted(sorted(members[u]) for u, s in split_of.items() if len(s) > 1)
    ids_splits: dict[str, set[str]] = defaultdict(set)
    for r in records:
        ids_splits[r.patient_id].add(r.split)
    reused = sorted(pid for pid, s in ids_splits.items() if len(s) > 1)
    return OverlapReport(groups, cross_patients, reused, shared_patient_ids, problems)
