"""Dataset manifest: one record per image of a Kermany-layout folder, and the patient-grouped split.

Layout (Kermany et al., 2018): ``<root>/{train,val,test}/{NORMAL,PNEUMONIA}/<file>``. The folder
gives normal vs pneumonia; the file name gives the pneumonia type (``personN_bacteria_M.jpeg`` ->
bacterial, ``personN_virus_M.jpeg`` -> viral) and the patient (``personN``). Normal files are named
``IM-XXXX-YYYY[-ZZZZ].jpeg`` or ``NORMAL2-IM-XXXX-YYYY.jpeg``; the patient is ``[NORMAL2-]IM-XXXX``.
Patient numbering restarts between splits, so a patient id is only meaningful within one split.
Files that do not fit this layout are reported in :attr:`Manifest.problems`, never guessed.
"""

from __future__ import annotations

import csv
import logging
import os
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from deephealth.labels import CLASS_NAMES
from deephealth.paths import dataset_dir, portable_path

_logger = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
IMAGE_SUFFIXES = {".jpeg", ".jpg", ".png", ".dcm", ".tif", ".tiff"}
_PNEUMONIA_RE = re.compile(r"^(person\d+)_(bacteria|virus)_\d+(?:_\d+)?$", re.IGNORECASE)
_NORMAL_RE = re.compile(r"^((?:NORMAL2-)?IM-\d+)-\d+(?:-\d+)?$", re.IGNORECASE)


@dataclass(frozen=True)
class Record:
    """One image of the dataset.

    Attributes:
        path: absolute path of the image file.
        split: ``train``, ``val`` or ``test`` (the official split the file lies in).
        label: class name, one of :data:`deephealth.labels.CLASS_NAMES`.
        patient_id: patient identifier, unique within one official split.
    """

    path: str
    split: str
    label: str
    patient_id: str

    @property
    def label_index(self) -> int:
        """Output index of :attr:`label` (0 normal, 1 bacterial, 2 viral)."""
        return CLASS_NAMES.index(self.label)


@dataclass
class Manifest:
    """All records found under a root plus the files that did not fit the layout."""

    root: str
    records: list[Record]
    problems: list[str] = field(default_factory=list)

    def split(self, name: str) -> list[Record]:
        """Records of one official split (``train``, ``val`` or ``test``)."""
        return [r for r in self.records if r.split == name]

    def summary(self) -> dict[str, dict[str, int]]:
        """Counts per split and class: ``{split: {class: n, ..., "total": n}}``."""
        out: dict[str, dict[str, int]] = {}
        for split in sorted({r.split for r in self.records}, key=_split_order):
            c = Counter(r.label for r in self.records if r.split == split)
            out[split] = {name: c.get(name, 0) for name in CLASS_NAMES}
            out[split]["total"] = sum(c.values())
        return out


def _split_order(name: str) -> tuple[int, str]:
    order = {"train": 0, "validation": 1, "val": 2, "test": 3}
    return (order.get(name, 9), name)


def relative_path(path: str, root: str | Path | None) -> str:
    """``path`` relative to ``root`` (POSIX separators) when it lies under it, else unchanged."""
    if root:
        try:
            rel = os.path.relpath(path, root)
        except ValueError:
            return path
        if not rel.startswith(".."):
            return Path(rel).as_posix()
    return path


def parse_name(folder: str, stem: str) -> tuple[str, str]:
    """Label and patient id from a class folder name and a file stem.

    Args:
        folder: ``NORMAL`` or ``PNEUMONIA`` (case-insensitive).
        stem: file name without suffix, e.g. ``person12_virus_44``.

    Returns:
        ``(label, patient_id)``.

    Raises:
        ValueError: if the folder or the file name does not fit the Kermany layout.
    """
    folder_u = folder.upper()
    if folder_u == "PNEUMONIA":
        m = _PNEUMONIA_RE.match(stem)
        if not m:
            raise ValueError("pneumonia file name does not match personN_bacteria_M or personN_virus_M")
        return ("bacterial" if m.group(2).lower() == "bacteria" else "viral"), m.group(1).lower()
    if folder_u == "NORMAL":
        m = _NORMAL_RE.match(stem)
        if not m:
            raise ValueError("normal file name does not match IM-XXXX-YYYY or NORMAL2-IM-XXXX-YYYY")
        return "normal", m.group(1).upper()
    raise ValueError(f"class folder {folder!r} is neither NORMAL nor PNEUMONIA")


def scan(root: str | Path) -> Manifest:
    """Build the manifest of a Kermany-layout folder.

    Args:
        root: folder holding ``train/``, ``val/`` and/or ``test/``.

    Returns:
        A :class:`Manifest` with records sorted by path; unexpected files or folders are listed in
        ``problems`` (one line each, naming the path and the problem) and skipped.

    Raises:
        FileNotFoundError: if ``root`` does not exist or holds none of the split folders.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"dataset folder not found: {root}")
    records: list[Record] = []
    problems: list[str] = []
    found_split = False
    for entry in sorted(root.iterdir()):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir() or entry.name not in SPLITS:
            problems.append(f"{entry}: not a split folder ({', '.join(SPLITS)})")
            continue
        found_split = True
        for cls_dir in sorted(entry.iterdir()):
            if cls_dir.name.startswith("."):
                continue
            if not cls_dir.is_dir() or cls_dir.name.upper() not in ("NORMAL", "PNEUMONIA"):
                problems.append(f"{cls_dir}: not a class folder (NORMAL, PNEUMONIA)")
                continue
            for f in sorted(cls_dir.iterdir()):
                if f.name.startswith("."):
                    continue
                if not f.is_file() or f.suffix.lower() not in IMAGE_SUFFIXES:
                    problems.append(f"{f}: not an image file")
                    continue
                try:
                    label, patient = parse_name(cls_dir.name, f.stem)
                except ValueError as exc:
                    problems.append(f"{f}: {exc}")
                    continue
                records.append(Record(str(f.resolve()), entry.name, label, patient))
    if not found_split:
        raise FileNotFoundError(f"{root} holds none of the split folders {', '.join(SPLITS)}")
    for p in problems:
        _logger.warning("manifest: %s", p)
    return Manifest(str(root.resolve()), records, problems)


def read_csv(path: str | Path) -> Manifest:
    """Manifest from a CSV with columns ``path,label`` and optionally ``patient_id`` and ``split``.

    A relative path is looked up first in the CSV's folder, then in the folder beside the CSV that
    is named like its stem (``data/chest_xray_224.csv`` -> ``data/chest_xray_224/``), so the shared
    dataset CSV, whose paths are relative to the dataset folder, works as it is. ``label`` is a
    class name or index (0 normal, 1 bacterial, 2 viral). Without ``patient_id`` every image is
    its own patient.

    Raises:
        FileNotFoundError: if the CSV does not exist.
        ValueError: if a required column is missing; bad rows are reported in ``problems``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"CSV not found: {path}")
    records: list[Record] = []
    problems: list[str] = []
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh)
        cols = set(reader.fieldnames or [])
        if not {"path", "label"} <= cols:
            raise ValueError(f"{path}: CSV needs the columns 'path' and 'label', has {sorted(cols)}")
        for i, row in enumerate(reader, start=2):
            raw = (row.get("label") or "").strip().lower()
            if raw.isdigit() and int(raw) < len(CLASS_NAMES):
                label = CLASS_NAMES[int(raw)]
            elif raw in CLASS_NAMES:
                label = raw
            else:
                problems.append(f"{path}:{i}: unknown label {row.get('label')!r}")
                continue
            p = Path(row["path"])
            if not p.is_absolute():
                candidates = [path.parent / p, path.parent / path.stem / p]
                p = next((c for c in candidates if c.is_file()), candidates[0])
                if not p.is_file():
                    problems.append(f"{path}:{i}: file not found: {row['path']} (looked in "
                                    f"{' and '.join(str(c.parent) for c in candidates)})")
                    continue
            elif not p.is_file():
                problems.append(f"{path}:{i}: file not found: {p}")
                continue
            patient = (row.get("patient_id") or "").strip() or f"image:{p}"
            records.append(Record(str(p.resolve()), (row.get("split") or "").strip() or "csv", label, patient))
    for p in problems:
        _logger.warning("manifest: %s", p)
    return Manifest(str(path.resolve()), records, problems)


def grouped_split(
    records: list[Record], val_fraction: float = 0.1, seed: int = 0
) -> tuple[list[Record], list[Record]]:
    """Patient-grouped, label-stratified split of records into (train, validation).

    Every patient goes wholly to one side. Patients are stratified by their most frequent label
    (ties broken by class order), shuffled with ``seed`` within each stratum, and the first
    ``round(val_fraction * n_patients)`` of each stratum go to validation.

    Args:
        records: records of one official split (patient ids must be unique within it).
        val_fraction: fraction of patients, per class, held out for validation, in (0, 1).
        seed: seed of the shuffle; the same records and seed always give the same split.

    Returns:
        ``(train_records, validation_records)``, each in the input order.

    Raises:
        ValueError: if ``val_fraction`` is not in (0, 1).
    """
    if not 0.0 < val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    by_patient: dict[str, list[str]] = defaultdict(list)
    for r in records:
        by_patient[r.patient_id].append(r.label)
    strata: dict[str, list[str]] = defaultdict(list)
    for pid in sorted(by_patient):
        counts = Counter(by_patient[pid])
        top = max(CLASS_NAMES, key=lambda c: (counts.get(c, 0), -CLASS_NAMES.index(c)))
        strata[top].append(pid)
    rng = np.random.default_rng(seed)
    val_patients: set[str] = set()
    for label in CLASS_NAMES:
        pids = strata.get(label, [])
        if not pids:
            continue
        order = rng.permutation(len(pids))
        n_val = int(round(val_fraction * len(pids)))
        val_patients.update(pids[i] for i in order[:n_val])
    train = [r for r in records if r.patient_id not in val_patients]
    val = [r for r in records if r.patient_id in val_patients]
    return train, val


def stratified_subset(records: list[Record], n: int, seed: int) -> list[Record]:
    """A class-stratified subset of about ``n`` records (smoke runs: ``max_train_images``).

    Each class keeps ``max(1, round(n * share))`` of its records, drawn with
    ``numpy.random.default_rng(seed)`` and kept in input order; the same records, ``n`` and ``seed``
    always give the same subset (the training loop and :func:`run_split` rely on it).

    Args:
        records: the records to draw from.
        n: about how many to keep; ``n <= 0`` or ``n >= len(records)`` keeps them all.
        seed: seed of the draw.

    Returns:
        The subset (``records`` itself when every record is kept).
    """
    if n <= 0 or n >= len(records):
        return records
    rng = np.random.default_rng(seed)
    out: list[Record] = []
    for label in CLASS_NAMES:
        group = [r for r in records if r.label == label]
        k = max(1, round(n * len(group) / len(records)))
        out.extend(group[i] for i in sorted(rng.permutation(len(group))[:k]))
    return out


def run_split(config: dict, data_dir: str | Path | None = None) -> tuple[list[Record], list[Record], dict] | None:
    """The patient-grouped train / validation records a training run used, re-created from its config.

    :func:`grouped_split` of the official ``train`` folder with the config's ``val_fraction`` and
    ``split_seed`` (defaults 0.1 and 0), then the same ``max_train_images`` subsets the training
    loop took (:func:`stratified_subset`; smoke runs; all of it for a release run). No PyTorch:
    the input gate's and the review band's refits both use it.

    Args:
        config: the checkpoint's training config (``data_dir``, ``val_fraction``, ``split_seed``,
            ``max_train_images``, ``seed``).
        data_dir: dataset folder overriding the config's (default: the config's, else
            :func:`deephealth.paths.dataset_dir`).

    Returns:
        ``(train_records, val_records, provenance)`` with ``provenance`` = ``{"dataset_dir"
        (portable), "val_fraction", "split_seed", "max_train_images"}`` for the metadata; or
        ``None`` when the dataset folder has no ``train`` folder (a warning is logged).

    Raises:
        ValueError: ``val_fraction`` not in (0, 1).
    """
    root = Path(data_dir or config.get("data_dir") or dataset_dir())
    if not (root / "train").is_dir():
        _logger.warning("no dataset at %s", root)
        return None
    val_fraction, split_seed = float(config.get("val_fraction", 0.1)), int(config.get("split_seed", 0))
    train_recs, val_recs = grouped_split(scan(root).split("train"), val_fraction, split_seed)
    n_max, seed = int(config.get("max_train_images", 0) or 0), int(config.get("seed", 0))
    if n_max:  # the same subsets the training loop used (smoke runs)
        train_recs, val_recs = stratified_subset(train_recs, n_max, seed), stratified_subset(val_recs, n_max // 4, seed)
    return train_recs, val_recs, {"dataset_dir": portable_path(root), "val_fraction": val_fraction,
                                  "split_seed": split_seed, "max_train_images": n_max}


SPLIT_IDENTITY_KEYS = ("val_sha256", "n_val", "val_counts")
"""What a run records of its validation split (``deephealth.training.loop.split_identity``), most specific first."""


def split_difference(recorded: dict, split_id: dict) -> str | None:
    """The first key of :data:`SPLIT_IDENTITY_KEYS` that ``recorded`` holds with another value than ``split_id``.

    Args:
        recorded: a model's or checkpoint's recorded split (any subset of the keys; older runs
            recorded only ``n_val`` and ``val_counts``).
        split_id: this run's split identity (every key).

    Returns:
        The differing key, or ``None`` when every recorded key agrees (or none is recorded).
    """
    return next((k for k in SPLIT_IDENTITY_KEYS if k in recorded and recorded[k] != split_id[k]), None)


def split_identity(train_recs: list[Record], val_recs: list[Record]) -> dict:
    """What identifies a patient-grouped train/validation split, independent of where the dataset lies.

    Recorded by training runs (``deephealth.training.loop`` imports it from here) and checked by
    ``deephealth evaluate --split model-val``, which must not import PyTorch.

    Args:
        train_recs: the training records of :func:`grouped_split` (before any subset).
        val_recs: its validation records.

    Returns:
        ``{"n_train", "n_val", "val_counts", "val_sha256"}``: the counts, the validation films per
        class, and the SHA-256 (hex) of the sorted ``patient_id / label / file name`` lines of the
        validation films.
    """
    import hashlib

    lines = sorted(f"{r.patient_id}/{r.label}/{Path(r.path).name}" for r in val_recs)
    return {
        "n_train": len(train_recs),
        "n_val": len(val_recs),
        "val_counts": {c: sum(r.label == c for r in val_recs) for c in CLASS_NAMES},
        "val_sha256": hashlib.sha256("\n".join(lines).encode()).hexdigest(),
    }


def model_validation_split(metadata: dict, data_dir: str | Path) -> tuple[list[Record], dict]:
    """The validation films an exported model was selected on, checked against what it recorded.

    Re-creates the training run's patient-grouped split of ``data_dir``'s official ``train`` folder
    (:func:`grouped_split` with the recorded ``val_fraction`` and ``split_seed``, then the
    ``max_train_images`` subset of a smoke run, as :func:`run_split` does) and checks its
    :func:`split_identity` against the one the model records (``metadata["data"]["split"]``, or
    for older models the ``n_val`` / ``val_counts`` beside it), so the films scored are exactly the
    model's validation films.

    Args:
        metadata: the model's ``metadata.json`` content.
        data_dir: the Kermany-layout dataset folder (it needs a ``train`` folder).

    Returns:
        ``(val_records, split_identity)``: the validation records in dataset order, and this
        dataset's :func:`split_identity` (of the full split, before any subset).

    Raises:
        ValueError: if the model records no validation split, ``data_dir`` has no ``train`` folder,
            or the dataset gives another split than the recorded one (the first differing key of
            :data:`SPLIT_IDENTITY_KEYS` is named).
    """
    data = metadata.get("data") or {}
    config = (metadata.get("training") or {}).get("config") or {}
    recorded = data.get("split") or {k: data[k] for k in SPLIT_IDENTITY_KEYS if k in data}
    if not any(k in recorded for k in SPLIT_IDENTITY_KEYS):
        raise ValueError("the model records no validation split (metadata.json data.split: n_val, val_counts, "
                         "val_sha256), so its validation films cannot be identified")
    root = Path(data_dir)
    if not (root / "train").is_dir():
        raise ValueError(f"{root} has no train folder: the model's validation split is drawn from the official "
                         "train folder of the dataset it was trained on")
    val_fraction = float(data.get("val_fraction", config.get("val_fraction", 0.1)))
    split_seed = int(data.get("split_seed", config.get("split_seed", 0)))
    train_recs, val_recs = grouped_split(scan(root).split("train"), val_fraction, split_seed)
    ident = split_identity(train_recs, val_recs)
    k = split_difference(recorded, ident)
    if k is not None:
        raise ValueError(f"{root} gives another validation split than the model's ({k}: {recorded[k]!r} recorded, "
                         f"{ident[k]!r} here, val_fraction {val_fraction}, split_seed {split_seed}; the model was "
                         f"trained on {data.get('dataset_dir', 'an unrecorded dataset folder')}): score it on the "
                         "dataset it was trained on")
    n_max, seed = int(config.get("max_train_images", 0) or 0), int(config.get("seed", 0))
    if n_max:  # a smoke run validated on a subset (run_split)
        val_recs = stratified_subset(val_recs, n_max // 4, seed)
    return val_recs, ident
