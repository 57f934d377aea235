"""Summarise a dataset folder in the Kermany layout: images per class and split, patients, problems.

Prints a table of normal / bacterial / viral counts for each official split and for the
patient-grouped train/validation split used in training (--val-fraction, --split-seed), lists files
that do not fit the layout, and with --plot FILE draws the class histogram as a PNG.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", metavar="DIR", help="dataset folder (default: ../shared/data/chest_xray_224)")
    parser.add_argument("--val-fraction", type=float, default=0.1, help="patients per class held out (default 0.1)")
    parser.add_argument("--split-seed", type=int, default=0, help="seed of the grouped split (default 0)")
    parser.add_argument("--plot", metavar="FILE", help="write the class histogram as a PNG")
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def summarize(data_dir: Path, val_fraction: float, split_seed: int) -> dict:
    """Counts per split and class, the grouped train/validation split and the layout problems.

    Returns:
        ``{"dataset": str, "counts": {split: {class: n, "total": n, "patients": n}}, "problems": [...]}``
        where the splits are ``train``, ``val``, ``test`` and the derived ``train (fit)``,
        ``validation``.

    Raises:
        FileNotFoundError: if the folder does not hold the Kermany layout.
    """
    from collections import Counter

    from deephealth.labels import CLASS_NAMES
    from deephealth.manifest import grouped_split, scan

    manifest = scan(data_dir)

    def count(records: list) -> dict:
        c = Counter(r.label for r in records)
        out = {name: c.get(name, 0) for name in CLASS_NAMES}
        out["total"] = len(records)
        out["patients"] = len({r.patient_id for r in records})
        return out

    counts = {s: count(manifest.split(s)) for s in ("train", "val", "test") if manifest.split(s)}
    if manifest.split("train"):
        fit_recs, val_recs = grouped_split(manifest.split("train"), val_fraction, split_seed)
        counts["train (fit)"] = count(fit_recs)
        counts["validation"] = count(val_recs)
    return {"dataset": manifest.root, "counts": counts, "problems": manifest.problems}


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


def run(args: argparse.Namespace) -> int:
    from deephealth.labels import CLASS_NAMES
    from deephealth.paths import dataset_dir

    data = Path(args.data) if args.data else dataset_dir()
    try:
        summary = summarize(data, args.val_fraction, args.split_seed)
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
            print(f"\n{len(summary['problems'])} file(s) do not fit the layout and were skipped:")
            for p in summary["problems"]:
                print(f"  {p}")
    if args.plot:
        try:
            plot_histogram(summary, Path(args.plot))
        except ImportError:
            print("error: --plot needs matplotlib (pip install 'deephealth[eval]')", file=sys.stderr)
            return 2
        print(f"histogram written to {args.plot}", file=sys.stderr if args.json else sys.stdout)
    return 0
