"""Summarise a dataset: images per class and split, patients, duplicates, overlap between splits.

Prints a table of normal / bacterial / viral counts for each official split and for the
patient-grouped train/validation split used in training (--val-fraction, --split-seed), lists files
that do not fit the layout, and with --plot FILE draws the class histogram as a PNG.

It also hashes every file (SHA-256 of its bytes) and reports byte-identical images within each
split and across splits, and patients in more than one split. Patient ids of the Kermany layout
restart between splits (``person5`` in train is not ``person5`` in test), so patients are compared
as split/id and linked across splits only through an identical image; --shared-patient-ids says
that the ids name the same child in every split (e.g. a CSV of hospital record numbers).

Exit status: 0 no image or patient in two splits; 1 a cross-split duplicate or patient was found
(each named on stderr: a data leak); 2 bad data or arguments.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="PATH", help="dataset folder (Kermany layout) or a CSV of "
                        "path,label[,patient_id,split] (default: ../shared/data/chest_xray_224)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="patients per class held out (default 0.1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the grouped split (default 0)")
    parser.add_argument("--shared-patient-ids", action="store_true",
                        help="patient ids name the same child in every split (default: ids are per split)")
    parser.add_argument("--plot", metavar="FILE", help="write the class histogram as a PNG")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(data_dir: Path, val_fraction: float, split_seed: int, shared_patient_ids: bool = False) -> dict:
    """Counts per split and class, the grouped train/validation split, duplicates and overlap.

    Args:
        data_dir: a Kermany-layout folder or a CSV (see :func:`deephealth.manifest.read_csv`).
        val_fraction: fraction of train patients per class held out for validation.
        split_seed: seed of the grouped split.
        shared_patient_ids: patient ids name the same child in every split.

    Returns:
        ``{"dataset": str, "counts": {split: {class: n, "total": n, "patients": n}}, "problems": [...],
        "duplicates": {...}, "leaks": [...]}`` where the splits are ``train``, ``val``, ``test`` and
        the derived ``train (fit)``, ``validation``; ``duplicates`` is
        :meth:`deephealth.duplicates.OverlapReport.describe` of the official splits, and ``leaks``
        names every image or patient found in two splits, including the derived
        ``train (fit)`` / ``validation`` pair (empty when clean).

    Raises:
        FileNotFoundError: if the folder does not hold the Kermany layout or the CSV is missing.
        ValueError: if the CSV lacks the path or label column.
    """
    import dataclasses
    from collections import Counter

    from deephealth.duplicates import check_overlap, file_digests
    from deephealth.labels import CLASS_NAMES
    from deephealth.manifest import grouped_split, read_csv, scan

    manifest = read_csv(data_dir) if data_dir.is_file() else scan(data_dir)

    def count(records: list) -> dict:
        c = Counter(r.label for r in records)
        out = {name: c.get(name, 0) for name in CLASS_NAMES}
        out["total"] = len(records)
        out["patients"] = len({r.patient_id for r in records})
        return out

    splits = sorted({r.split for r in manifest.records}, key=lambda s: (("train", "val", "test", s).index(s), s))
    counts = {s: count(manifest.split(s)) for s in splits}
    digests, unreadable = file_digests(r.path for r in manifest.records)
    overlap = check_overlap(manifest.records, shared_patient_ids, digests)
    overlap.problems = unreadable
    leaks = overlap.leaks
    if manifest.split("train"):
        fit_recs, val_recs = grouped_split(manifest.split("train"), val_fraction, split_seed)
        counts["train (fit)"] = count(fit_recs)
        counts["validation"] = count(val_recs)
        derived = [dataclasses.replace(r, split="train (fit)") for r in fit_recs]
        derived += [dataclasses.replace(r, split="validation") for r in val_recs]
        derived_leaks = check_overlap(derived, shared_patient_ids, digests).leaks
        leaks += [f"{line} (grouped split, seed {split_seed})" for line in derived_leaks]
    root = manifest.root if not data_dir.is_file() else str(data_dir.resolve().parent)
    return {
        "dataset": manifest.root,
        "counts": counts,
        "problems": manifest.problems + unreadable,
        "duplicates": overlap.describe(root),
        "leaks": leaks,
    }


def plot_histogram(summary: dict, path: Path) -> None:
    """Grouped bar chart of images per class for each split (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from deephealth.labels import CLASS_NAMES

    splits = list(summary["counts"])
    x = np.arange(len(splits))
    fig, ax = plt.subplots(figsize=(8, 4))
    w = 0.8 / len(CLASS_NAMES)
    for i, name in enumerate(CLASS_NAMES):
        vals = [summary["counts"][s][name] for s in splits]
        bars = ax.bar(x + (i - 1) * w, vals, w, label=name)
        ax.bar_label(bars, fontsize=7)
    ax.set_xticks(x, splits)
    ax.set_ylabel("images")
    ax.set_title("Pediatric chest X-rays per class and split (Kermany et al., 2018)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _print_overlap(dup: dict) -> None:
    print("\nbyte-identical images (SHA-256 of the file bytes):")
    if not dup["groups"]:
        print("  none")
    for split, c in dup["within_split"].items():
        print(f"  within {split}: {c['groups']} group(s), {c['files']} files ({c['redundant_files']} redundant); "
              f"{c['groups_spanning_patient_ids']} group(s) span more than one patient id")
    print(f"  across splits: {dup['n_cross_split_groups']} group(s)")
    for g in dup["groups"]:
        note = f"  [patient ids: {', '.join(g['patient_ids'])}]" if len(g["patient_ids"]) > 1 else ""
        if len(g["labels"]) > 1:
            note += f"  [CONFLICTING LABELS: {', '.join(g['labels'])}]"
        print(f"    {' = '.join(g['files'])}{note}")
    if dup["shared_patient_ids"]:
        print("patients: ids name the same child in every split (--shared-patient-ids)")
    else:
        print(f"patients: ids are per split (numbering restarts); {dup['n_reused_patient_ids']} id(s) occur in "
              "more than one split as different children; patients are linked across splits only by an "
              "identical image")


def run(args: argparse.Namespace) -> int:
    from deephealth.labels import CLASS_NAMES
    from deephealth.paths import dataset_dir

    data = Path(args.data) if args.data else dataset_dir()
    try:
        summary = summarize(data, args.val_fraction, args.split_seed, args.shared_patient_ids)
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"dataset: {summary['dataset']}")
        head = f"{'split':<12}" + "".join(f"{c:>11}" for c in (*CLASS_NAMES, "total", "patients"))
        print(head)
        for split, c in summary["counts"].items():
            print(f"{split:<12}" + "".join(f"{c[k]:>11}" for k in (*CLASS_NAMES, "total", "patients")))
        if summary["problems"]:
            print(f"\n{len(summary['problems'])} file(s) do not fit the layout or cannot be read and were skipped:")
            for p in summary["problems"]:
                print(f"  {p}")
        _print_overlap(summary["duplicates"])
    if args.plot:
        try:
            plot_histogram(summary, Path(args.plot))
        except ImportError:
            print("error: --plot needs matplotlib (pip install 'deephealth[eval]')", file=sys.stderr)
            return 2
        print(f"histogram written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    if summary["leaks"]:
        print(f"error: data leak: {len(summary['leaks'])} image(s) or patient(s) in more than one split:",
              file=sys.stderr)
        for line in summary["leaks"]:
            print(f"  {line}", file=sys.stderr)
        return 1
    return 0
