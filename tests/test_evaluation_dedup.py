"""Deduplicated metrics, duplicate-aware bootstrap units and the model comparison rows, on known toy inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from deephealth.evaluation.bootstrap import patient_resample_weights
from deephealth.evaluation.dedup import deduplicate
from deephealth.evaluation.report import build_report, comparison_entry, render_markdown

NAMES = ["normal", "bacterial", "viral"]
# file, bytes, label, patient, probs. a.png and b.png are identical (one child filed as pA and pB);
# c.png and d.png are two films of pC; e.png is a correct normal.
TOY = [
    ("a.png", b"X", 0, "pA", [0.2, 0.7, 0.1]),  # normal called bacterial
    ("b.png", b"X", 0, "pB", [0.2, 0.7, 0.1]),  # the same file again
    ("c.png", b"Y", 1, "pC", [0.1, 0.8, 0.1]),
    ("d.png", b"Z", 2, "pC", [0.1, 0.2, 0.7]),
    ("e.png", b"W", 0, "pE", [0.9, 0.05, 0.05]),
]


def _toy(tmp_path: Path):
    rows, y, p = [], [], []
    for name, data, label, patient, probs in TOY:
        f = tmp_path / "data" / name
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(data)
        rows.append({"path": str(f), "label": NAMES[label], "label_index": label, "patient_id": patient,
                     "predicted": NAMES[int(np.argmax(probs))], "probs": probs, "error": None})
        y.append(label)
        p.append(probs)
    return rows, np.array(y), np.array(p, dtype=float)


def _report(tmp_path: Path, comparisons=None):
    rows, y, p = _toy(tmp_path)
    return build_report(
        y_true=y, probs=p, rows=rows, model={"name": "toy", "version": "1", "sha256": "00" * 32, "temperature": 1.0},
        data={"dataset": "data", "kind": "csv", "split": "test", "root": str(tmp_path / "data")},
        run={"command": "deephealth evaluate"}, n_resamples=200, seed=0, comparisons=comparisons,
    )


def test_deduplicate_keeps_first_by_path_and_merges_patients(tmp_path):
    rows, _, _ = _toy(tmp_path)
    digests = {r["path"]: {b"X": "x", b"Y": "y", b"Z": "z", b"W": "w"}[Path(r["path"]).read_bytes()] for r in rows}
    d = deduplicate(list(reversed(rows)), {k: v for k, v in digests.items()})  # order of rows does not matter
    assert d.keep.tolist() == [True, True, True, False, True]  # reversed: b.png dropped, a.png kept
    assert d.units == ["pE", "pC", "pC", "pA+pB", "pA+pB"]
    [g] = d.groups
    assert g.sha256 == "x" and g.patient_ids == ["pA", "pB"] and d.label_conflicts == []
    # merged patients are drawn together: one weight per unit
    w = patient_resample_weights(d.units, n_resamples=50, seed=1)
    assert (w[:, 3] == w[:, 4]).all() and (w[:, 1] == w[:, 2]).all()


def test_deduplicated_metrics_on_toy(tmp_path):
    report = _report(tmp_path)
    m, dd = report["metrics"], report["deduplicated"]
    # all 5 images: a, b wrong; c, d, e right
    assert m["three_class"]["accuracy"] == 0.6
    assert m["binary"]["pneumonia_vs_normal"]["specificity"] == round(1 / 3, 6)
    assert report["data"]["n_patients"] == 4
    # each identical file once: a, c, d, e
    assert dd["n_images"] == 4 and dd["n_removed"] == 1 and dd["n_duplicate_groups"] == 1
    assert dd["metrics"]["three_class"]["accuracy"] == 0.75
    assert dd["metrics"]["binary"]["pneumonia_vs_normal"]["specificity"] == 0.5
    assert dd["metrics"]["binary"]["pneumonia_vs_normal"]["sensitivity"] == 1.0
    assert dd["n_patients"] == 3  # pA+pB, pC, pE
    assert dd["confidence_intervals"]["n_patients"] == 3 and dd["confidence_intervals"]["n_images"] == 4
    assert dd["headline"]["metrics"]["three_class.accuracy"]["value"] == 0.75
    assert dd["groups"] == [{"sha256": "4b68ab3847feda7d6c62c1fbcbeebfa35eab7351ed5e78f4ddadea5df64b8015",
                             "files": ["a.png", "b.png"], "splits": ["test"], "patient_ids": ["pA", "pB"],
                             "labels": ["normal"]}]
    md = render_markdown(report)
    assert "## Headline: all 5 images" in md
    assert "## Headline, deduplicated: each byte-identical image counted once (4 images)" in md
    assert "| 3-class accuracy | 75.0 % (" in md
    assert "- `a.png` = `b.png` (filed as patients pA, pB)" in md
    assert "| **this model**, deduplicated | 4 | 75.0 % (" in md


def test_identical_files_with_conflicting_labels_are_flagged(tmp_path):
    rows, y, p = _toy(tmp_path)
    (tmp_path / "data" / "e.png").write_bytes(b"Y")  # e (normal) now identical to c (bacterial)
    report = build_report(y_true=y, probs=p, rows=rows, model={}, data={"dataset": "d", "split": "test"},
                          run={}, n_resamples=50)
    dd = report["deduplicated"]
    assert dd["n_duplicate_groups"] == 2 and dd["n_images"] == 3
    [conflict] = dd["label_conflicts"]
    assert [g["labels"] for g in dd["groups"] if g["sha256"] == conflict] == [["bacterial", "normal"]]
    assert "**conflicting labels: bacterial, normal**" in render_markdown(report)


def test_no_duplicates_gives_the_same_figures(tmp_path):
    rows, y, p = _toy(tmp_path)
    (tmp_path / "data" / "b.png").write_bytes(b"V")
    report = build_report(y_true=y, probs=p, rows=rows, model={}, data={"dataset": "d", "split": "test"},
                          run={}, n_resamples=100)
    dd = report["deduplicated"]
    assert dd["n_duplicate_groups"] == 0 and dd["n_images"] == 5
    assert dd["metrics"] == report["metrics"]
    assert dd["confidence_intervals"] == report["confidence_intervals"]
    assert "so the deduplicated metrics equal the ones above" in render_markdown(report)


def test_comparison_rows(tmp_path):
    other = _report(tmp_path)
    other_file = tmp_path / "other.json"
    other_file.write_text(json.dumps(other))
    loaded = json.loads(other_file.read_text())
    report = _report(tmp_path, comparisons=[("prototype method: frozen ImageNet features + last layer", loaded, None),
                                            ("site-adapted (AdaBN, uses unlabelled test images)", loaded, True)])
    proto, adapted = report["comparisons"]
    assert proto["uses_unlabelled_target_images"] is False and adapted["uses_unlabelled_target_images"] is True
    assert proto["data"] == {"dataset": "data", "split": "test", "n_images": 5, "same_images": True}
    assert proto["all"]["three_class.accuracy"]["value"] == 0.6
    assert proto["deduplicated"]["n_images"] == 4
    assert proto["deduplicated"]["metrics"]["three_class.accuracy"]["value"] == 0.75
    md = render_markdown(report)
    assert "| prototype method: frozen ImageNet features + last layer | all 5 (same images) | 60.0 % (" in md
    assert "| prototype method: frozen ImageNet features + last layer, deduplicated | 4 | 75.0 % (" in md
    row = next(line for line in md.splitlines() if line.startswith("| site-adapted (AdaBN, uses unlabelled test images) | all"))
    assert row.endswith("| **yes** |")
    # a model that records its adaptation in its metrics.json counts as transductive by itself
    loaded["model"]["adaptation"] = {"method": "AdaBN", "n_images": 624}
    loaded["data"]["files_sha256"] = "ff" * 32
    entry = comparison_entry("adapted", loaded)
    assert entry["uses_unlabelled_target_images"] is True
    assert comparison_entry("x", loaded, reference_fingerprint="00")["data"]["same_images"] is False
    with pytest.raises(ValueError, match="no headline.metrics section"):
        comparison_entry("bad", {"metrics": {}})
