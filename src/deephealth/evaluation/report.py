"""The evaluation report: ``metrics.json``, ``report.md``, CSVs and PNG plots in one folder.

Folder contents (written by :func:`write_report`):

- ``metrics.json``: everything below except the plots. Sections ``model``, ``data``, ``metrics``,
  ``confidence_intervals``, ``anchors``, ``misclassified``, ``failures``, ``deduplicated`` (the
  headline metrics with each byte-identical image counted once) and ``comparisons`` (other
  models' rows, ``--compare``) depend only on the model, the data and the compared files (fixed
  bootstrap seed, floats rounded to 6 decimals, file paths relative to the dataset), so a rerun reproduces them byte for byte; the ``run`` section holds what changes
  between runs (command, date, library versions, duration, and the folders, recorded with
  :func:`deephealth.paths.portable_path`: no absolute path of the machine that ran it).
- ``report.md``: the human-readable report (command, date, model, data provenance, intended use,
  metric tables with 95 % intervals, comparison with published anchors (official test split only),
  plots, misclassified list).
- ``predictions.csv``: one row per image (file, patient, true, predicted, 3 probabilities, error).
- ``misclassified.csv``: the misclassified images, most confident mistakes first.
- ``confusion_matrix.png``, ``roc_one_vs_rest.png``, ``roc_binary.png``, ``reliability.png``.
- with a ``stability`` section (``deephealth evaluate --stability``,
  :mod:`deephealth.evaluation.stability`): ``stability.png`` and a stability table in report.md.
- with a ``review_band`` section (the model's operating point has a review band, issue 16;
  :func:`deephealth.evaluation.metrics.review_band_metrics`): the share of films flagged for
  review, accuracy with them counted as errors and the figures among the films not flagged, next
  to the headline ones, in report.md's "Review band" section.
- with a ``faithfulness`` section (``deephealth evaluate --faithfulness``,
  :func:`deephealth.evaluation.faithfulness.deletion_report`): ``deletion_curves.png`` and a table
  of deletion-curve areas, heatmap against random deletion, in report.md.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from deephealth.duplicates import file_digests
from deephealth.evaluation.bootstrap import bootstrap_ci, review_band_ci
from deephealth.evaluation.dedup import deduplicate
from deephealth.evaluation.metrics import PROTOCOLS, compute_metrics, decision_threshold, review_band_metrics
from deephealth.labels import CLASS_NAMES, INTENDED_USE
from deephealth.manifest import relative_path
from deephealth.paths import portable_path, resolve_portable_path

_logger = logging.getLogger(__name__)

SCHEMA = "deephealth-evaluation/1"
ROUND_DIGITS = 6
REPRODUCIBLE_SECTIONS = (
    "schema", "model", "data", "headline", "metrics", "confidence_intervals", "anchors", "misclassified",
    "failures", "deduplicated", "comparisons", "review_band", "stability", "faithfulness",
)
"""Sections of ``metrics.json`` that a rerun on the same model and data reproduces exactly."""

PLOTS = {
    "confusion_matrix": "confusion_matrix.png",
    "roc_one_vs_rest": "roc_one_vs_rest.png",
    "roc_binary": "roc_binary.png",
    "reliability": "reliability.png",
}
STABILITY_PLOT = "stability.png"
"""Bar chart of the label-flip rates, written when the report has a ``stability`` section."""
DELETION_PLOT = "deletion_curves.png"
"""Mean deletion curves, written when the report has a ``faithfulness`` section."""

ANCHORS: tuple[dict[str, Any], ...] = (
    {
        "reference": "Deep Health 2020 prototype",
        "citation": "this project's 2020 prototype (approximate)",
        "task": "three_class",
        "values": {"accuracy": 0.83},
        "note": "approximate, as recorded by the project; same 3 classes",
    },
    {
        "reference": "Best published 3-class results",
        "citation": "literature on the official Kermany test split (approximate)",
        "task": "three_class",
        "values": {"accuracy": 0.91},
        "note": "approximate; different models and training protocols",
    },
    {
        "reference": "Kermany et al. 2018",
        "citation": "Kermany DS et al. Cell 172(5):1122-1131, 2018, doi:10.1016/j.cell.2018.02.010",
        "task": "pneumonia_vs_normal",
        "values": {"accuracy": 0.928, "sensitivity": 0.932, "specificity": 0.901, "auroc": 0.968},
        "note": "transfer-learned Inception v3 on the original-resolution images",
    },
    {
        "reference": "Kermany et al. 2018",
        "citation": "Kermany DS et al. Cell 172(5):1122-1131, 2018, doi:10.1016/j.cell.2018.02.010",
        "task": "bacterial_vs_viral",
        "values": {"accuracy": 0.907, "sensitivity": 0.886, "specificity": 0.909, "auroc": 0.940},
        "note": "positive class of the paper not confirmed; here positive = viral (specificity = bacterial recall)",
    },
    {
        "reference": "MedMNIST v2 PneumoniaMNIST, best (Google AutoML Vision)",
        "citation": "Yang J et al. MedMNIST v2. Scientific Data 10:41, 2023, doi:10.1038/s41597-022-01721-8",
        "task": "pneumonia_vs_normal",
        "values": {"accuracy": 0.946, "auroc": 0.991},
        "note": "28x28 images and a different split: not like for like",
    },
)
"""Published results the report compares against (values are fractions, not percent)."""

_TASK_TITLES = {
    "three_class": "3-class",
    "pneumonia_vs_normal": "pneumonia vs normal",
    "bacterial_vs_viral": "bacterial vs viral",
}


def _clean(obj: Any) -> Any:
    """Round floats to ROUND_DIGITS, NaN/inf -> None, tuples/arrays -> lists (JSON-able, stable)."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _clean(obj.tolist())
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if not math.isfinite(f):
            return None
        r = round(f, ROUND_DIGITS)
        return 0.0 if r == 0 else r  # no "-0.0"
    return obj


def data_fingerprint(rows: list[dict[str, Any]], root: str | Path | None,
                     digests: dict[str, str] | None = None) -> str:
    """SHA-256 over the sorted lines ``<relative path>\\t<label>\\t<sha256 of the file>``.

    Identifies the evaluated images and labels independently of where the dataset lies; a file
    that cannot be hashed contributes ``unreadable`` instead of its digest. ``digests``
    (``{path: sha256}``) saves hashing files again; files missing from it are hashed here.
    """
    digests = dict(digests or {})
    digests.update(file_digests(r["path"] for r in rows if r["path"] not in digests)[0])
    lines = []
    for r in rows:
        digest = digests.get(r["path"], "unreadable")
        lines.append(f"{relative_path(r['path'], root)}\t{r['label']}\t{digest}")
    return hashlib.sha256("\n".join(sorted(lines)).encode()).hexdigest()


def _relative_message(message: str, root: str | Path | None) -> str:
    """A reader's or the manifest's one-line message with the data folder's prefix removed.

    ``/data/chest_xray_224/test/NORMAL/x.jpeg: not a JPEG file`` becomes
    ``test/NORMAL/x.jpeg: not a JPEG file`` for ``root`` ``/data/chest_xray_224`` (as given or
    resolved), so ``failures`` and ``data.skipped`` name files as the rest of the report does and
    hold no absolute path of the machine that ran the evaluation. Paths outside ``root`` are kept.
    """
    if not root or not message:
        return message
    prefixes = {str(Path(root)), str(Path(root).resolve())} - {"", ".", "/"}
    for prefix in sorted(prefixes, key=len, reverse=True):
        # the folder itself (".") or a path inside it, never part of a longer name
        pattern = r"(?<![\w.~/-])" + re.escape(prefix) + r"(/|(?=[\s,;:)'\"]|$))"
        message = re.sub(pattern, lambda m: "" if m.group(1) == "/" else ".", message)
    return message


def _misclassified(rows: list[dict[str, Any]], root: str | Path | None) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        if r["error"] is None and r["predicted"] != r["label"]:
            item = {
                "file": relative_path(r["path"], root),
                "patient_id": r["patient_id"],
                "true": r["label"],
                "predicted": r["predicted"],
            }
            item.update({f"p_{name}": p for name, p in zip(CLASS_NAMES, r["probs"])})
            out.append(item)
    # Most confident mistakes first; ties by file name, so the order is stable.
    out.sort(key=lambda m: (-max(m[f"p_{c}"] for c in CLASS_NAMES), m["file"]))
    return out


def _headline_key(name: str) -> str:
    if "." in name:
        return name
    if name in ("ece", "brier", "nll"):
        return f"calibration.{name}"
    return f"three_class.{name}"


def _metric_value(metrics: dict[str, Any], key: str) -> Any:
    group, name = key.split(".", 1)
    if group == "calibration":
        return metrics["calibration"][name]
    if group == "three_class":
        if name.startswith("auroc_"):
            return metrics["three_class"]["per_class"][name[len("auroc_"):]]["auroc"]
        return metrics["three_class"][name]
    return metrics["binary"].get(group, {}).get(name)


def headline(metrics: dict[str, Any], ci: Any, data: dict[str, Any]) -> dict[str, Any]:
    """Compact summary for model cards and the README: each headline metric with its interval.

    Args:
        metrics: :func:`deephealth.evaluation.metrics.compute_metrics` output.
        ci: :class:`deephealth.evaluation.bootstrap.BootstrapResult` of the same data.
        data: the report's data section (``split``, ``dataset``).

    Returns:
        ``{"dataset", "split", "n_images", "n_patients", "ci_level", "metrics": {key: {"value",
        "ci_low", "ci_high"}}}`` with keys ``three_class.<metric>``, ``three_class.auroc_<class>``,
        ``<protocol>.<metric>`` and ``calibration.<ece|brier|nll>``; fractions, not percent.
    """
    out = {}
    for name, (lo, hi) in ci.items():
        key = _headline_key(name)
        out[key] = {"value": _metric_value(metrics, key), "ci_low": lo, "ci_high": hi}
    return {
        "dataset": data.get("dataset"),
        "split": data.get("split"),
        "n_images": metrics["n"],
        "n_patients": ci.n_patients,
        "ci_level": 1.0 - ci.alpha,
        "metrics": out,
    }


def build_report(
    *,
    y_true: np.ndarray,
    probs: np.ndarray,
    rows: list[dict[str, Any]],
    model: dict[str, Any],
    data: dict[str, Any],
    run: dict[str, Any],
    operating_points: dict[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
    decision: dict[str, Any] | None = None,
    comparisons: list[tuple[str, dict[str, Any], bool | None]] | None = None,
    stability: dict[str, Any] | None = None,
    faithfulness: dict[str, Any] | None = None,
    skipped: list[str] | None = None,
) -> dict[str, Any]:
    """Compute metrics and intervals and assemble the ``metrics.json`` content.

    Besides the metrics on all scored images (the published anchors' protocol), the
    ``deduplicated`` section gives them with each group of byte-identical files counted once and
    patients sharing an identical image merged into one bootstrap unit
    (:mod:`deephealth.evaluation.dedup`; same seed and resample count).

    Args:
        y_true: ``(M,)`` int labels of the scored images (from
            :func:`deephealth.evaluation.scoring.evaluate_model`).
        probs: ``(M, 3)`` calibrated probabilities of the scored images.
        rows: one dict per record, including failures (``evaluate_model``'s rows).
        model: ``name``, ``version``, ``sha256``, ``temperature`` (and anything else to record).
        data: provenance: ``dataset``, ``kind``, ``split``, ``root`` (paths are reported relative
            to it; ``root`` itself is moved to the ``run`` section as ``data_root``, written with
            :func:`deephealth.paths.portable_path`), plus anything else to record.
        run: what changes between runs: ``command``, ``date_utc``, versions, portable paths (no
            absolute path of this machine; see :func:`deephealth.cli.evaluate.run`).
        operating_points: optional thresholds from the model's metadata (see
            :func:`deephealth.evaluation.metrics.compute_metrics`).
        n_resamples: bootstrap resamples (>= 1,000 for the report).
        seed: bootstrap seed.
        alpha: 1 - confidence level.
        decision: the model's shipped operating point (``metadata.json`` -> ``operating_point``):
            labels, 3-class and pneumonia-vs-normal figures are at it (see
            :func:`deephealth.evaluation.metrics.compute_metrics`); ``None``: arg-max. With a
            ``review_band`` in it, the report gets a ``review_band`` section
            (:func:`deephealth.evaluation.metrics.review_band_metrics` plus
            ``confidence_intervals`` from :func:`deephealth.evaluation.bootstrap.review_band_ci`,
            same resamples as the headline intervals).
        comparisons: other models for the comparison table, each ``(label, its metrics.json
            dict, uses unlabelled target images: True, False or None to read it from the file)``;
            see :func:`comparison_entry`.
        stability: optional :func:`deephealth.evaluation.stability.summarize_stability` dict of
            the same films (label flips under benign perturbations), stored as ``stability``.
        faithfulness: optional :func:`deephealth.evaluation.faithfulness.deletion_report` dict of
            the same films (deletion curves of the heatmaps), stored as ``faithfulness``.
        skipped: entries of the data that never became a record (a CSV row whose file is missing,
            a file in the folder that is not an image: :attr:`deephealth.manifest.Manifest.problems`),
            one line each; stored as ``data.skipped`` and listed in report.md.

    Returns:
        The JSON-able report dict (floats rounded to 6 decimals).

    Raises:
        ValueError: if no image was scored or the inputs are malformed.
    """
    if len(y_true) == 0:
        raise ValueError("no image could be scored; nothing to report")
    scored = [r for r in rows if r["error"] is None]
    if len(scored) != len(y_true):
        raise ValueError(f"{len(scored)} scored rows but {len(y_true)} labels")
    patient_ids = [r["patient_id"] for r in scored]
    metrics = compute_metrics(y_true, probs, operating_points, decision)
    ci = bootstrap_ci(y_true, probs, patient_ids, n_resamples=n_resamples, seed=seed, alpha=alpha, decision=decision)
    data = dict(data)
    root = data.pop("root", None)
    digests, _ = file_digests(r["path"] for r in rows)
    run = dict(run)
    if root is not None:
        # Portable, as the model card records paths: never an absolute path of this machine in a
        # committed report. write_report takes the real folder as an argument, or resolves this
        # one against the configured data root (paths.resolve_portable_path).
        run["data_root"] = portable_path(root)
    if skipped:
        data["skipped"] = [_relative_message(line, root) for line in skipped]
    data.update(
        {
            "n_records": len(rows),
            "n_scored": len(scored),
            "n_failed": len(rows) - len(scored),
            "support": metrics["support"],
            "n_patients": len(set(patient_ids)),
            "files_sha256": data_fingerprint(rows, root, digests),
        }
    )
    dedup = deduplicated_section(y_true, probs, rows, digests, data, root, operating_points,
                                 n_resamples=n_resamples, seed=seed, alpha=alpha, decision=decision)
    failures = [{"file": relative_path(r["path"], root), "error": _relative_message(r["error"], root)}
                for r in rows if r["error"]]
    band = review_band_metrics(y_true, probs, decision)
    if band is not None:
        band["confidence_intervals"] = review_band_ci(y_true, probs, patient_ids, decision,
                                                      n_resamples=n_resamples, seed=seed, alpha=alpha)
    return _clean(
        {
            "schema": SCHEMA,
            "model": model,
            "data": data,
            "headline": headline(metrics, ci, data),
            "metrics": metrics,
            "confidence_intervals": ci.describe(),
            "anchors": list(ANCHORS),
            "misclassified": _misclassified(rows, root),
            "gate": gate_summary(rows, root),
            "failures": failures,
            "deduplicated": dedup,
            "comparisons": [comparison_entry(name, other, uses, data["files_sha256"])
                            for name, other, uses in (comparisons or [])],
            **({"review_band": band} if band is not None else {}),
            **({"stability": stability} if stability else {}),
            **({"faithfulness": faithfulness} if faithfulness else {}),
            "run": run,
        }
    )


def deduplicated_section(
    y_true: np.ndarray,
    probs: np.ndarray,
    rows: list[dict[str, Any]],
    digests: dict[str, str],
    data: dict[str, Any],
    root: str | Path | None,
    operating_points: dict[str, Any] | None = None,
    *,
    decision: dict[str, Any] | None = None,
    n_resamples: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, Any]:
    """The report's ``deduplicated`` section: metrics with each identical image counted once.

    Args:
        y_true: ``(M,)`` int labels of the scored images.
        probs: ``(M, 3)`` calibrated probabilities of the scored images.
        rows: every evaluation row (scored ones in the order of ``y_true``).
        digests: ``{path: sha256}`` of the files.
        data: the report's data section (``dataset``, ``split``).
        root: dataset folder the listed files are made relative to.
        operating_points, decision, n_resamples, seed, alpha: as :func:`build_report`.

    Returns:
        ``{"method", "n_images", "n_removed", "n_duplicate_groups", "n_patients" (bootstrap units),
        "groups": [...], "label_conflicts": [...], "headline", "metrics", "confidence_intervals"}``
        (not yet rounded).
    """
    d = deduplicate(rows, digests, str(data.get("split") or "evaluated"))
    y, p = np.asarray(y_true)[d.keep], np.asarray(probs)[d.keep]
    units = [u for u, k in zip(d.units, d.keep) if k]
    metrics = compute_metrics(y, p, operating_points, decision)
    ci = bootstrap_ci(y, p, units, n_resamples=n_resamples, seed=seed, alpha=alpha, decision=decision)
    return {
        "method": "each group of byte-identical files (SHA-256 of the bytes) counted once (first by path); "
                  "patients sharing an identical image merged into one bootstrap unit",
        "n_images": int(d.keep.sum()),
        "n_removed": int((~d.keep).sum()),
        "n_duplicate_groups": len(d.groups),
        "n_patients": ci.n_patients,
        "groups": [g.describe(str(root) if root is not None else None) for g in d.groups],
        "label_conflicts": [g.sha256 for g in d.label_conflicts],
        "headline": headline(metrics, ci, data),
        "metrics": metrics,
        "confidence_intervals": ci.describe(),
    }


COMPARED_METRICS: tuple[str, ...] = (
    "three_class.accuracy",
    "pneumonia_vs_normal.sensitivity",
    "pneumonia_vs_normal.specificity",
    "pneumonia_vs_normal.auroc",
    "bacterial_vs_viral.auroc",
)
"""Headline metrics shown for every model of the comparison table (keys of ``headline.metrics``)."""


def comparison_entry(name: str, other: dict[str, Any], uses_unlabelled_target_images: bool | None = None,
                     reference_fingerprint: str | None = None) -> dict[str, Any]:
    """One labelled row of the comparison table from another evaluation's ``metrics.json``.

    Args:
        name: the row's label, e.g. ``"prototype method: frozen ImageNet features + last layer"``.
        other: that evaluation's report dict (:func:`load_metrics`); it needs a ``headline``
            section, and its ``deduplicated`` section is used when present.
        uses_unlabelled_target_images: True for a transductive model (e.g. site-adapted with the
            evaluated films, AdaBN); None takes it from ``other["model"]["adaptation"]`` (present
            means adapted).
        reference_fingerprint: this report's ``data.files_sha256``, to say whether both scored the
            same images.

    Returns:
        ``{"name", "model", "uses_unlabelled_target_images", "data": {"dataset", "split",
        "n_images", "same_images"}, "all": {metric: {"value", "ci_low", "ci_high"}},
        "deduplicated": {...} or None, "review_band": {...} or None}`` over
        :data:`COMPARED_METRICS`; ``review_band`` holds the other report's band figures
        (:data:`COMPARED_REVIEW_BAND`), ``None`` when it has none.

    Raises:
        ValueError: if ``other`` has no ``headline.metrics`` section.
    """
    head = (other.get("headline") or {}).get("metrics")
    if not isinstance(head, dict):
        raise ValueError(f"{name}: not an evaluation metrics.json (no headline.metrics section)")
    model = other.get("model") or {}
    if uses_unlabelled_target_images is None:
        uses_unlabelled_target_images = bool(model.get("adaptation"))
    dedup = (other.get("deduplicated") or {}).get("headline")
    fp = (other.get("data") or {}).get("files_sha256")
    pick = lambda h: {k: h.get(k) for k in COMPARED_METRICS}  # noqa: E731
    return {
        "name": name,
        "model": {k: model.get(k) for k in ("name", "version", "sha256")},
        "uses_unlabelled_target_images": bool(uses_unlabelled_target_images),
        "data": {
            "dataset": other["headline"].get("dataset"),
            "split": other["headline"].get("split"),
            "n_images": other["headline"].get("n_images"),
            "same_images": None if fp is None or reference_fingerprint is None else fp == reference_fingerprint,
        },
        "all": pick(head),
        "deduplicated": {"n_images": dedup.get("n_images"), "metrics": pick(dedup["metrics"])} if dedup else None,
        "review_band": compared_review_band(other.get("review_band")),
    }


COMPARED_REVIEW_BAND: tuple[str, ...] = (
    "review_rate", "n_review", "review_as_error.accuracy", "not_flagged.accuracy", "not_flagged.n",
)
"""Review-band figures shown for every model of the comparison (keys into the ``review_band`` section)."""


def compared_review_band(band: dict[str, Any] | None) -> dict[str, Any] | None:
    """The :data:`COMPARED_REVIEW_BAND` figures of a report's ``review_band`` section (``None`` without one)."""
    if not isinstance(band, dict):
        return None
    out = {}
    for key in COMPARED_REVIEW_BAND:
        v: Any = band
        for part in key.split("."):
            v = v.get(part) if isinstance(v, dict) else None
        out[key] = v
    return out


def gate_summary(rows: list[dict[str, Any]], root: str | Path | None) -> dict[str, Any]:
    """The input gate's outcomes on the evaluated images (rows from ``evaluate_model``).

    Returns:
        ``{"counts": {status: n}, "n_read": int, "flagged_fraction": float | None,
        "flagged": [{"file", "status", "reasons"}]}`` -- ``flagged`` lists every warned or refused
        image (refused ones were still scored, so the metrics cover the whole split).
    """
    read = [r for r in rows if r.get("gate")]
    counts: dict[str, int] = {}
    for r in read:
        counts[r["gate"]] = counts.get(r["gate"], 0) + 1
    flagged = [
        {"file": relative_path(r["path"], root), "status": r["gate"], "reasons": list(r.get("gate_reasons") or [])}
        for r in read if r["gate"] in ("warn", "refuse")
    ]
    flagged.sort(key=lambda f: (f["status"] != "refuse", f["file"]))
    return {
        "counts": dict(sorted(counts.items())),
        "n_read": len(read),
        "flagged_fraction": len(flagged) / len(read) if read else None,
        "flagged": flagged,
    }


def report_files(report: dict[str, Any]) -> list[str]:
    """The file names a report lists (``misclassified``, ``gate.flagged``, ``failures``), relative to its data folder."""
    names = [m.get("file") for m in report.get("misclassified") or []]
    names += [f.get("file") for f in (report.get("gate") or {}).get("flagged") or []]
    names += [f.get("file") for f in report.get("failures") or []]
    return sorted({n for n in names if isinstance(n, str) and n and not Path(n).is_absolute()})


def report_data_root(report: dict[str, Any], data_root: str | Path | None = None,
                     rows: list[dict[str, Any]] | None = None) -> Path | None:
    """The folder on this machine that the report's file names are relative to.

    ``run.data_root`` is recorded portably (:func:`deephealth.paths.portable_path`), so it is
    resolved here with :func:`deephealth.paths.resolve_portable_path`: as recorded, against the
    current directory, then under the configured data root (``DEEPHEALTH_DATA_ROOT`` or
    ``../shared/data``). A candidate counts only if the images are in it: every path of ``rows``
    lies under it, or, without rows, every file the report lists (:func:`report_files`) exists in it.

    Args:
        report: a :func:`build_report` dict or a ``metrics.json`` read back (:func:`load_metrics`).
        data_root: the folder, when the caller knows it (``deephealth evaluate`` does); returned
            as given, unchecked.
        rows: the scored rows (``evaluate_model``'s), whose ``path`` s must lie under the folder.

    Returns:
        The folder; ``None`` when ``data_root`` is not given and the report records no data folder.

    Raises:
        FileNotFoundError: if a data folder is recorded but no folder holding the report's images
            is found on this machine (the message says where it looked and to set
            ``DEEPHEALTH_DATA_ROOT``).
    """
    if data_root is not None:
        return Path(data_root)
    recorded = (report.get("run") or {}).get("data_root")
    if not recorded:
        return None
    if rows:
        paths = [r["path"] for r in rows]

        def accept(folder: Path) -> bool:
            return all(relative_path(str(Path(p).absolute()), folder) != str(Path(p).absolute()) for p in paths)
    else:
        files = report_files(report)

        def accept(folder: Path) -> bool:
            return all((folder / f).is_file() for f in files)
    return resolve_portable_path(recorded, accept=accept)


def write_report(report: dict[str, Any], y_true: np.ndarray, probs: np.ndarray, rows: list[dict[str, Any]],
                 out_dir: str | Path, *, data_root: str | Path | None = None) -> dict[str, Path]:
    """Write ``metrics.json``, ``report.md``, the CSVs and the plots into ``out_dir``.

    Args:
        report: the dict from :func:`build_report`.
        y_true: ``(M,)`` labels of the scored images (for the ROC plots).
        probs: ``(M, 3)`` calibrated probabilities of the scored images.
        rows: one dict per record (for ``predictions.csv``).
        out_dir: output folder, created if missing; existing report files are overwritten.
        data_root: the folder the rows' paths lie under (``build_report``'s ``data["root"]``);
            ``predictions.csv`` names files relative to it. Default: the report's portable
            ``run.data_root`` resolved on this machine, to a folder holding every row's file
            (:func:`report_data_root`).

    Returns:
        ``{kind: path}`` of every file written.

    Raises:
        FileNotFoundError: if ``data_root`` is not given and no folder holding the rows' files is
            found for the report's recorded data folder (nothing is written then).
        OSError: if the folder cannot be created or written.
    """
    from deephealth.evaluation import plots

    root = report_data_root(report, data_root, rows)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: dict[str, Path] = {}
    names = list(CLASS_NAMES)
    written["confusion_matrix"] = plots.plot_confusion_matrix(
        report["metrics"]["three_class"]["confusion_matrix"], names, out / PLOTS["confusion_matrix"],
        title=f"Confusion matrix, {report['data'].get('split', '')} (n={report['metrics']['n']})",
    )
    written["roc_one_vs_rest"] = plots.plot_roc_one_vs_rest(y_true, probs, names, out / PLOTS["roc_one_vs_rest"])
    kermany = {
        a["task"]: (a["values"]["sensitivity"], a["values"]["specificity"])
        for a in ANCHORS
        if a["reference"].startswith("Kermany") and "sensitivity" in a["values"]
    } if is_official_test(report["data"]) else None  # published points are on the official test split only
    decision = report["model"].get("operating_point")
    written["roc_binary"] = plots.plot_roc_binary(y_true, probs, out / PLOTS["roc_binary"], kermany,
                                                  thresholds={p: decision_threshold(p, decision) for p in PROTOCOLS})
    written["reliability"] = plots.plot_reliability(report["metrics"]["calibration"], out / PLOTS["reliability"])
    if report.get("stability"):
        model = report["model"]
        written["stability"] = plots.plot_stability(
            {f"{model.get('name', 'model')} {model.get('version', '')}".strip(): report["stability"]},
            out / STABILITY_PLOT, title=f"Label flips under benign perturbations, {report['data'].get('split', '')}",
        )
    if report.get("faithfulness"):
        model = report["model"]
        written["faithfulness"] = plots.plot_deletion(
            [{"model": f"{model.get('name', 'model')} {model.get('version', '')}".strip(),
              "split": report["data"].get("split", ""), **report["faithfulness"]}], out / DELETION_PLOT)

    path = out / "metrics.json"
    path.write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    written["metrics_json"] = path

    path = out / "predictions.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["file", "patient_id", "true", "predicted", *(f"p_{c}" for c in names), "gate", "error"])
        for r in rows:
            ps = [f"{v:.6f}" for v in r["probs"]] if r["probs"] is not None else [""] * len(names)
            w.writerow([relative_path(r["path"], root), r["patient_id"], r["label"], r["predicted"] or "", *ps,
                        r.get("gate") or "", r["error"] or ""])
    written["predictions_csv"] = path

    path = out / "misclassified.csv"
    with path.open("w", newline="") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["file", "patient_id", "true", "predicted", *(f"p_{c}" for c in names)])
        for m in report["misclassified"]:
            w.writerow([m["file"], m["patient_id"], m["true"], m["predicted"], *(f"{m[f'p_{c}']:.6f}" for c in names)])
    written["misclassified_csv"] = path

    path = out / "report.md"
    path.write_text(render_markdown(report))
    written["report_md"] = path
    _logger.info("evaluation report written to %s", out)
    return written


# ---------------------------------------------------------------------------------------------
# Markdown


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100.0 * x:.1f} %"


def _num(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def _fmt(x: Any, kind: str) -> str:
    return _pct(x) if kind == "pct" else _num(x)


def _with_ci(x: Any, ci: list[Any] | None, kind: str) -> str:
    """``93.1 % (91.0–95.0)`` or ``0.968 (0.951–0.981)``."""
    s = _fmt(x, kind)
    if x is None or not ci or ci[0] is None or ci[1] is None:
        return s
    if kind == "pct":
        return f"{s} ({100.0 * ci[0]:.1f}–{100.0 * ci[1]:.1f})"
    return f"{s} ({ci[0]:.3f}–{ci[1]:.3f})"


_KIND = {"accuracy": "pct", "balanced_accuracy": "pct", "macro_f1": "num", "sensitivity": "pct",
         "specificity": "pct", "precision": "pct", "f1": "num", "auroc": "num", "ppv": "pct", "npv": "pct"}


def _ours(report: dict[str, Any], task: str, metric: str) -> str:
    m = report["metrics"]
    ci = report["confidence_intervals"]["intervals"]
    if task == "three_class":
        return _with_ci(m["three_class"].get(metric), ci.get(metric), _KIND[metric])
    return _with_ci(m["binary"][task].get(metric), ci.get(f"{task}.{metric}"), _KIND[metric])


def _headline_table(section: dict[str, Any]) -> list[str]:
    """Markdown rows of the headline table of a report or of its ``deduplicated`` section."""
    m, iv = section["metrics"], section["confidence_intervals"]["intervals"]
    out = [
        "| | value (95 % CI) |",
        "|---|---|",
        f"| 3-class accuracy | {_ours(section, 'three_class', 'accuracy')} |",
        f"| 3-class balanced accuracy | {_ours(section, 'three_class', 'balanced_accuracy')} |",
        f"| 3-class macro-F1 | {_ours(section, 'three_class', 'macro_f1')} |",
    ]
    for proto in PROTOCOLS:
        if m["binary"][proto].get("n"):
            title = _TASK_TITLES[proto]
            out.append(f"| {title}: accuracy / sensitivity / specificity | "
                       f"{_ours(section, proto, 'accuracy')} / {_ours(section, proto, 'sensitivity')} / "
                       f"{_ours(section, proto, 'specificity')} |")
            out.append(f"| {title}: AUROC | {_ours(section, proto, 'auroc')} |")
    out.append(f"| ECE (15 bins) | {_with_ci(m['calibration']['ece'], iv.get('ece'), 'num')} |")
    return out


def _deduplicated_section(report: dict[str, Any], dd: dict[str, Any]) -> list[str]:
    """The report.md section of the metrics with each byte-identical image counted once."""
    out = [f"## Headline, deduplicated: each byte-identical image counted once ({dd['n_images']} images)", ""]
    if not dd["n_duplicate_groups"]:
        out += ["No two scored files are byte-identical (SHA-256 of the file bytes), so the deduplicated "
                "metrics equal the ones above.", ""]
        return out
    out += [
        f"{dd['n_duplicate_groups']} groups of scored files are byte-identical (SHA-256 of the file bytes). "
        f"Keeping the first of each (by path) removes {dd['n_removed']} images and leaves {dd['n_images']}. "
        f"For the bootstrap, patients that share an identical image are merged into one resampling unit: "
        f"{dd['n_patients']} units. Published results count every file, so compare them with the table above; "
        "this one shows how much the duplicates move the figures.",
        "",
        *_headline_table(dd),
        "",
        "Groups of byte-identical files (the first one is kept):",
        "",
    ]
    conflicts = set(dd.get("label_conflicts") or [])
    for g in dd["groups"]:
        note = f" (filed as patients {', '.join(g['patient_ids'])})" if len(g["patient_ids"]) > 1 else ""
        if g["sha256"] in conflicts:
            note += f" **conflicting labels: {', '.join(g['labels'])}**"
        out.append("- " + " = ".join(f"`{f}`" for f in g["files"]) + note)
    out.append("")
    return out


_SIDE_BY_SIDE = (
    ("three_class", "accuracy", "3-class accuracy"),
    ("pneumonia_vs_normal", "sensitivity", "pneumonia vs normal: sensitivity"),
    ("pneumonia_vs_normal", "specificity", "specificity"),
    ("pneumonia_vs_normal", "auroc", "AUROC"),
    ("bacterial_vs_viral", "auroc", "bacterial vs viral: AUROC"),
)


def _yes_no(flag: Any) -> str:
    return "**yes**" if flag else "no"


def _side_by_side(report: dict[str, Any], published: bool = True) -> list[str]:
    """Markdown table: this model (all images and deduplicated), compared models, published anchors if ``published``."""
    m, dd, model = report["metrics"], report.get("deduplicated"), report["model"]

    def ours(section: dict[str, Any], task: str, metric: str) -> str:
        if task != "three_class" and not section["metrics"]["binary"][task].get("n"):
            return "n/a"
        return _ours(section, task, metric)

    def head(h: dict[str, Any], task: str, metric: str) -> str:
        v = (h or {}).get(f"{task}.{metric}") or {}
        return _with_ci(v.get("value"), [v.get("ci_low"), v.get("ci_high")], _KIND[metric])

    title = f"{model.get('name', '?')} {model.get('version', '')}".rstrip()
    adapted = _yes_no(model.get("adaptation"))
    out = [
        "Models side by side (95 % CI). *Uses unlabelled target images*: whether the model saw the evaluated "
        "site's films, without labels, before scoring them (transductive, e.g. site-adapted BatchNorm "
        "statistics); such rows are not comparable with inductive ones.",
        "",
        "| model | images | " + " | ".join(t for _, _, t in _SIDE_BY_SIDE) + " | uses unlabelled target images |",
        "|---|---|" + "---|" * len(_SIDE_BY_SIDE) + "---|",
        f"| **this model**: {title} | all {m['n']} | "
        + " | ".join(ours(report, t, k) for t, k, _ in _SIDE_BY_SIDE) + f" | {adapted} |",
    ]
    if dd:
        out.append(f"| **this model**, deduplicated | {dd['n_images']} | "
                   + " | ".join(ours(dd, t, k) for t, k, _ in _SIDE_BY_SIDE) + f" | {adapted} |")
    for c in report.get("comparisons") or []:
        data = c["data"]
        same = {True: "same images", False: "**different images**", None: "images not checked"}[data["same_images"]]
        out.append(f"| {c['name']} | all {data.get('n_images')} ({same}) | "
                   + " | ".join(head(c["all"], t, k) for t, k, _ in _SIDE_BY_SIDE)
                   + f" | {_yes_no(c['uses_unlabelled_target_images'])} |")
        if c.get("deduplicated"):
            out.append(f"| {c['name']}, deduplicated | {c['deduplicated']['n_images']} | "
                       + " | ".join(head(c["deduplicated"]["metrics"], t, k) for t, k, _ in _SIDE_BY_SIDE)
                       + f" | {_yes_no(c['uses_unlabelled_target_images'])} |")
    by_ref: dict[str, dict[str, Any]] = {}
    for a in report["anchors"] if published else []:
        by_ref.setdefault(a["reference"], {}).update({f"{a['task']}.{k}": v for k, v in a["values"].items()})
    for ref, values in by_ref.items():
        cells = [_fmt(values[f"{t}.{k}"], _KIND[k]) if f"{t}.{k}" in values else "" for t, k, _ in _SIDE_BY_SIDE]
        out.append(f"| {ref} (published) | | " + " | ".join(cells) + " | not reported |")
    return out


def is_official_test(data: dict[str, Any]) -> bool:
    """Whether a report's data is the official test split, the only data published results are comparable on.

    Args:
        data: the report's ``data`` section (its ``split`` as ``deephealth evaluate`` recorded it:
            ``test`` for the official test folder or a CSV's ``test`` rows).

    Returns:
        ``True`` for the ``test`` split.
    """
    return data.get("split") == "test"


def _not_comparable_line(data: dict[str, Any]) -> str:
    """One line for a report on other data than the official test split.

    It says that published results are not comparable and, when the report records ``model_films``,
    that the model was trained or selected on those films.
    """
    line = (f"**Not comparable with published results.** Published results (Kermany et al. 2018, MedMNIST) are on "
            f"the official test split; this report is on split {data.get('split', '?')}.")
    films = data.get("model_films")
    if films:
        n, total = films.get("n"), data.get("n_records")
        which = "All of these films are" if n == total else f"{n} of these {total} films are"
        if films.get("role") == "validation":
            line += (f" {which} the model's own validation films: they were used to select the model (checkpoint, "
                     "temperature, operating point, review band), so its figures on them are optimistic.")
        else:
            line += (f" {which} in the official train folder of the model's dataset: they were used to train or "
                     "select the model, so its figures on them are optimistic.")
    return line


def _published_comparison(report: dict[str, Any]) -> list[str]:
    """The "Comparison with published results" section (official test split only)."""
    m, dd = report["metrics"], report.get("deduplicated")
    L: list[str] = []
    add = L.append
    add("## Comparison with published results")
    add("")
    L.extend(_side_by_side(report))
    add("")
    dd_n = f", deduplicated, {dd['n_images']} images (95 % CI)" if dd else None
    add(f"| reference | task | metric | published | this model, all {m['n']} images (95 % CI) |"
        + (f" this model{dd_n} |" if dd else "") + " note |")
    add("|---|---|---|---:|---|" + ("---|" if dd else "") + "---|")
    for a in report["anchors"]:
        for metric, value in a["values"].items():
            task = a["task"]
            ours = _ours(report, task, metric) if (task == "three_class" or m["binary"][task].get("n")) else "n/a"
            extra = ""
            if dd:
                has = task == "three_class" or dd["metrics"]["binary"][task].get("n")
                extra = f" {_ours(dd, task, metric) if has else 'n/a'} |"
            add(f"| {a['reference']} | {_TASK_TITLES[task]} | {metric} | {_fmt(value, _KIND[metric])} | "
                f"{ours} |{extra} {a['note']} |")
    add("")
    add("Anchors come from different models, image resolutions and training protocols; the MedMNIST "
        "result is at 28×28 pixels on a different split. Only the Kermany et al. rows use the same test "
        "images (at their original resolution) and tasks. Sources: " + "; ".join(sorted({a['citation'] for a in report['anchors']})) + ".")
    add("")
    return L


def render_markdown(report: dict[str, Any]) -> str:
    """The ``report.md`` text of a report dict from :func:`build_report`.

    The comparison with published results is given for the official test split only
    (:func:`is_official_test`); a report on other data says in one line that they are not
    comparable, and whether the model was trained or selected on the films (``data.model_films``).
    """
    m, ci = report["metrics"], report["confidence_intervals"]
    iv = ci["intervals"]
    model, data, run = report["model"], report["data"], report["run"]
    tc = m["three_class"]
    level = f"{100 * ci['level']:.0f} %"
    L: list[str] = []
    add = L.append
    add(f"# Evaluation report: {model.get('name', '?')} {model.get('version', '')}".rstrip())
    add("")
    add(f"> **Intended use.** {INTENDED_USE}")
    add("")
    add("| | |")
    add("|---|---|")
    add(f"| Command | `{run.get('command', '')}` |")
    if run.get("command_resolved") and run.get("command_resolved") != run.get("command"):
        add(f"| Same, all options spelled out | `{run['command_resolved']}` |")
    add(f"| Date (UTC) | {run.get('date_utc', '')} |")
    add(f"| Model | {model.get('name', '?')} version {model.get('version', '?')}, "
        f"temperature {_num(model.get('temperature'), 4)} |")
    add(f"| Model SHA-256 | `{model.get('sha256', '?')}` (ONNX file, as in metadata.json) |")
    sup = data["support"]
    counts = ", ".join(f"{sup[c]} {c}" for c in CLASS_NAMES)
    add(f"| Data | {data.get('description', data.get('dataset', '?'))} |")
    split_name = data.get("split", "?") + (f" ({data['split_description']})" if data.get("split_description") else "")
    add(f"| Split | {split_name}: {data['n_scored']} images scored ({counts}) from "
        f"{data['n_patients']} patients; {data['n_failed']} could not be read |")
    add(f"| Data fingerprint | `{data['files_sha256']}` (SHA-256 over path, label and file SHA-256) |")
    add(f"| Scored with | the exported ONNX model through `deephealth.inference.Predictor` (what ships is "
        f"what is scored); deephealth {run.get('deephealth_version', '?')}, onnxruntime "
        f"{run.get('onnxruntime_version', '?')} |")
    add("")
    official_test = is_official_test(data)
    if not official_test:
        add(_not_comparable_line(data))
        add("")
    op = model.get("operating_point")
    if op:
        rule = (f"The predicted class is the model's shipped decision at its **operating point**: pneumonia when "
                f"1 − P(normal) ≥ {_num(op.get('threshold'), 4)} (chosen on the validation split for "
                f"{_pct(op.get('target_sensitivity'))} sensitivity; validation sensitivity "
                f"{_pct(op.get('val_sensitivity'))}, specificity {_pct(op.get('val_specificity'))}), then the likelier "
                "of bacterial and viral; pneumonia vs normal uses that threshold, bacterial vs viral 0.5.")
    else:
        rule = ("The predicted class is the class with the largest calibrated probability; the binary protocols "
                "use threshold 0.5 on their score.")
    add(f"Intervals are {level} percentile bootstrap intervals over {ci['n_resamples']:,} resamples of "
        f"**patients** (seed {ci['seed']}; all images of a drawn child come along). {rule}")
    add("")
    # Headline
    dd = report.get("deduplicated")
    add(f"## Headline: all {m['n']} images")
    add("")
    add("Every scored file counts, as in the published results of the comparison below." if official_test
        else "Every scored file counts.")
    add("")
    L.extend(_headline_table(report))
    add("")
    if dd:
        L.extend(_deduplicated_section(report, dd))
    if report.get("review_band"):
        L.extend(_review_band_markdown(report))
    cal = m["calibration"]
    # 3-class
    add("## 3-class metrics")
    add("")
    add("| metric | value (95 % CI) |")
    add("|---|---|")
    add(f"| accuracy | {_ours(report, 'three_class', 'accuracy')} |")
    add(f"| balanced accuracy (mean sensitivity) | {_ours(report, 'three_class', 'balanced_accuracy')} |")
    add(f"| macro-F1 | {_ours(report, 'three_class', 'macro_f1')} |")
    add(f"| macro AUROC (one-vs-rest) | {_num(tc.get('macro_auroc'))} |")
    add("")
    add("| class | images | precision | sensitivity (recall) | specificity | F1 | AUROC one-vs-rest (95 % CI) |")
    add("|---|---:|---:|---:|---:|---:|---|")
    for c in CLASS_NAMES:
        pc = tc["per_class"][c]
        add(f"| {c} | {pc['support']} | {_pct(pc['precision'])} | {_pct(pc['sensitivity'])} | "
            f"{_pct(pc['specificity'])} | {_num(pc['f1'])} | {_with_ci(pc['auroc'], iv.get(f'auroc_{c}'), 'num')} |")
    add("")
    add("Confusion matrix (rows: true class, columns: predicted class):")
    add("")
    add("| true \\ predicted | " + " | ".join(CLASS_NAMES) + " |")
    add("|---|" + "---:|" * len(CLASS_NAMES))
    for c, row in zip(CLASS_NAMES, tc["confusion_matrix"]):
        add(f"| **{c}** | " + " | ".join(str(v) for v in row) + " |")
    add("")
    add(f"![Confusion matrix]({PLOTS['confusion_matrix']})")
    add("")
    # Binary protocols
    add("## Binary protocols of Kermany et al. (2018)")
    add("")
    add("Both are derived from the 3-class probabilities. **Pneumonia vs normal** on all images: "
        "positive = pneumonia, score = 1 − P(normal). **Bacterial vs viral** on the images whose true "
        "label is bacterial or viral: positive = viral, score = P(viral) / (P(bacterial) + P(viral)), "
        "so sensitivity is the recall of viral and specificity the recall of bacterial pneumonia "
        "(we could not confirm which class Kermany et al. took as positive; if bacterial, swap their sensitivity "
        "and specificity when comparing). Threshold: the model's shipped operating point where it has one "
        "(the threshold on 1 − P(normal) chosen on validation, what `predict` decides with), otherwise score ≥ 0.5.")
    add("")
    add("| protocol | images (pos / neg) | threshold | accuracy | sensitivity | specificity | PPV | NPV | AUROC |")
    add("|---|---|---:|---|---|---|---:|---:|---|")
    for proto in PROTOCOLS:
        b = m["binary"][proto]
        if not b.get("n"):
            add(f"| {_TASK_TITLES[proto]} | 0 | | | | | | | |")
            continue
        add(f"| {_TASK_TITLES[proto]} | {b['n']} ({b['n_positive']} {b['positive']} / {b['n_negative']} "
            f"{b['negative']}) | {b['threshold']:.2f} | {_ours(report, proto, 'accuracy')} | "
            f"{_ours(report, proto, 'sensitivity')} | {_ours(report, proto, 'specificity')} | {_pct(b['ppv'])} | "
            f"{_pct(b['npv'])} | {_ours(report, proto, 'auroc')} |")
        op = b.get("operating_point")
        if op:
            add(f"| {_TASK_TITLES[proto]}, operating point from the model's metadata (chosen on validation) | "
                f"{op['n']} | {op['threshold']:.3f} | {_pct(op['accuracy'])} | {_pct(op['sensitivity'])} | "
                f"{_pct(op['specificity'])} | {_pct(op['ppv'])} | {_pct(op['npv'])} | (same) |")
    add("")
    add("The pneumonia-vs-normal AUROC equals the normal one-vs-rest AUROC (its score is a decreasing "
        "function of P(normal)).")
    add("")
    add(f"![ROC curves of the binary protocols]({PLOTS['roc_binary']})")
    add("")
    add(f"![ROC curves, one class vs the rest]({PLOTS['roc_one_vs_rest']})")
    add("")
    # Calibration
    add("## Calibration")
    add("")
    add("| metric | value (95 % CI) | definition |")
    add("|---|---|---|")
    add(f"| ECE | {_with_ci(cal['ece'], iv.get('ece'), 'num')} | {cal['n_bins']} equal-width bins of the top-class "
        "confidence, Σ_b (n_b / N) · abs(acc_b − conf_b) (Guo et al., 2017) |")
    add(f"| Brier score | {_with_ci(cal['brier'], iv.get('brier'), 'num')} | mean over images of Σ_k (p_k − y_k)², "
        "multi-class form, range 0–2 |")
    add(f"| NLL | {_with_ci(cal['nll'], iv.get('nll'), 'num')} | mean −ln P(true class), nats, P clipped at 1e-12 |")
    add("")
    add(f"![Reliability diagram]({PLOTS['reliability']})")
    add("")
    if report.get("stability"):
        L.extend(_stability_markdown(report["stability"]))
    if report.get("faithfulness"):
        L.extend(_faithfulness_markdown(report["faithfulness"]))
    # Anchors: published results are on the official test split only
    if official_test:
        L.extend(_published_comparison(report))
    elif report.get("comparisons"):
        add("## Models side by side")
        add("")
        L.extend(_side_by_side(report, published=False))
        add("")
    # Misclassified
    mis = report["misclassified"]
    add(f"## Misclassified images ({len(mis)})")
    add("")
    add("Most confident mistakes first; also in [`misclassified.csv`](misclassified.csv) (all predictions: "
        "[`predictions.csv`](predictions.csv)). File paths are relative to the dataset folder (a file outside it keeps its full path).")
    add("")
    if mis:
        add("| file | patient | true | predicted | P(normal) | P(bacterial) | P(viral) |")
        add("|---|---|---|---|---:|---:|---:|")
        for x in mis:
            add(f"| `{x['file']}` | {x['patient_id']} | {x['true']} | {x['predicted']} | "
                + " | ".join(f"{x[f'p_{c}']:.3f}" for c in CLASS_NAMES) + " |")
        add("")
    _gate_markdown(report.get("gate"), add)
    # Failures
    if report["failures"]:
        add(f"## Files that could not be read ({len(report['failures'])})")
        add("")
        add("These are excluded from every metric above.")
        add("")
        for f in report["failures"]:
            add(f"- `{f['file']}`: {f['error']}")
        add("")
    if report["data"].get("skipped"):
        entries = report["data"]["skipped"]
        add(f"## Entries of the data that were skipped ({len(entries)})")
        add("")
        add("These entries never reached the model (a listed file that is missing, a file that is not an "
            "image); they are excluded from every metric above.")
        add("")
        for line in entries:
            add(f"- {line}")
        add("")
    add("## Notes")
    add("")
    skipped = ci.get("skipped") or {}
    if skipped:
        add("- Resamples in which a metric was undefined (one class absent) were skipped for that metric: "
            + ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())) + f" of {ci['n_resamples']}.")
    else:
        add(f"- Every metric was defined in all {ci['n_resamples']:,} bootstrap resamples.")
    add(f"- {ci['n_images']} images from {ci['n_patients']} patients; patient ids come from the file names "
        "(Kermany layout) or the CSV's `patient_id` column (without it every image is its own patient).")
    add("- `metrics.json` holds every number of this report; its sections other than `run` are reproduced "
        "exactly by rerunning the command above on the same model and data.")
    add("")
    return "\n".join(L)


def _review_band_markdown(report: dict[str, Any]) -> list[str]:
    """The "Review band" section of report.md: the band's share and what it costs, next to the headline."""
    rb, m = report["review_band"], report["metrics"]
    op = report["model"].get("operating_point") or {}
    spec = op.get("review_band") or {}
    rci = (rb.get("confidence_intervals") or {}).get("intervals") or {}
    n, kept = rb["n"], rb["not_flagged"]
    pn = m["binary"]["pneumonia_vs_normal"]

    def band(key: str) -> str:
        value = rb
        for part in key.split("."):
            value = value.get(part)
        return _with_ci(value, rci.get(key), "pct")

    def pr(rng: Any) -> str:
        return f"{rng[0]:.3f}–{rng[1]:.3f}" if rng else "n/a"

    out = [f"## Review band: borderline films flagged for review ({n} images)", ""]
    held_out = (report.get("data") or {}).get("split") == "test"  # the official test split: never used to fit it
    fitted_on = "" if not spec.get("n_films") else (
        f" The band was fitted on the model's {spec['n_films']} validation films only; these test films played "
        "no part in it." if held_out else
        f" The band was fitted on the model's {spec['n_films']} validation films: evaluated on those "
        "same films, these figures are in-sample (optimistic).")
    fitted = (f" Its half-widths are the {spec['quantile']:g} quantile of the score changes that the benign "
              f"perturbations of the stability section cause on {spec.get('n_films', '?')} validation films."
              if spec.get("quantile") is not None else "")
    out.append(
        "The model's operating point has an *indeterminate, review* band (issue 16): a film is flagged for review "
        f"when P(pneumonia) = 1 − P(normal) lies in {pr(rb.get('pneumonia_probability_range'))} around the threshold "
        f"{_num(op.get('threshold'), 4)} (**pneumonia vs normal borderline**), or when it is called pneumonia and "
        f"its bacterial share P(bacterial) / (P(bacterial) + P(viral)) lies in {pr(rb.get('bacterial_share_range'))} "
        f"(**bacterial vs viral borderline**).{fitted} A flagged film keeps its label (the best guess), "
        "but the model has no reliable answer for it: a clinician reads it without relying on the label. The band is reported here at its cost: accuracy **with every flagged film "
        "counted as an error**, and the figures among the films not flagged, next to the headline figures without "
        "the band; a bacterial-vs-viral flag leaves the pneumonia call definite, so the pneumonia-vs-normal rows "
        "count only the pneumonia-vs-normal flags as errors." + fitted_on + " Intervals: the same patient bootstrap "
        "as the headline.")
    out.append("")
    by = rb["by_reason"]
    out += [
        f"| | without the band: all {n} films | with the band, flagged counted as errors | "
        f"with the band: the {kept['n']} films not flagged |",
        "|---|---|---|---|",
        f"| films flagged for review | — | {band('review_rate')}, {rb['n_review']} films | — |",
        f"| … pneumonia vs normal borderline | — | {_pct(by['pneumonia_vs_normal']['rate'])} "
        f"({by['pneumonia_vs_normal']['n']}) | — |",
        f"| … bacterial vs viral borderline | — | {_pct(by['bacterial_vs_viral']['rate'])} "
        f"({by['bacterial_vs_viral']['n']}) | — |",
        f"| 3-class accuracy | {_ours(report, 'three_class', 'accuracy')} | {band('review_as_error.accuracy')} | "
        f"{band('not_flagged.accuracy')} |",
    ]
    if pn.get("n"):
        out += [
            f"| pneumonia vs normal: sensitivity | {_ours(report, 'pneumonia_vs_normal', 'sensitivity')} | "
            f"{band('review_as_error.sensitivity')} | {band('not_flagged.sensitivity')} "
            f"(n = {kept['n_positive']} pneumonia) |",
            f"| pneumonia vs normal: specificity | {_ours(report, 'pneumonia_vs_normal', 'specificity')} | "
            f"{band('review_as_error.specificity')} | {band('not_flagged.specificity')} "
            f"(n = {kept['n_negative']} normal) |",
        ]
    out.append("")
    fl = rb["flagged"]
    if fl["n"]:
        out.append(f"The model's label was right on {_pct(fl['accuracy'])} of the {fl['n']} flagged films; the band "
                   f"flags {fl['n_errors']} of the {rb['n_errors']} films the model gets wrong. Accuracy among the "
                   "films not flagged is measured on a selected, easier subset: read it together with the share "
                   "flagged.")
    else:
        out.append("No film of this set lies in the band.")
    out.append("")
    comps = report.get("comparisons") or []
    if comps:
        out += ["Compared models (— : no review band in that report):", "",
                "| model | films flagged for review | 3-class accuracy, flagged counted as errors | "
                "3-class accuracy, films not flagged |",
                "|---|---|---|---|"]
        title = f"{report['model'].get('name', '?')} {report['model'].get('version', '')}".rstrip()
        out.append(f"| **this model**: {title} | {_pct(rb['review_rate'])} ({rb['n_review']}) | "
                   f"{_pct(rb['review_as_error']['accuracy'])} | {_pct(kept['accuracy'])} (n = {kept['n']}) |")
        for c in comps:
            o = c.get("review_band")
            if not o:
                out.append(f"| {c['name']} | — | — | — |")
                continue
            out.append(f"| {c['name']} | {_pct(o.get('review_rate'))} ({o.get('n_review')}) | "
                       f"{_pct(o.get('review_as_error.accuracy'))} | {_pct(o.get('not_flagged.accuracy'))} "
                       f"(n = {o.get('not_flagged.n')}) |")
        out.append("")
    return out


def _worst_names(names: list[str] | None, rate: float) -> str:
    """```a`, 2.4 %`` for one worst perturbation, ```a` and `b` (tied), 2.4 % each`` for a tie."""
    quoted = [f"`{n}`" for n in names or []]
    if len(quoted) == 1:
        return f"{quoted[0]}, {_pct(rate)}"
    return f"{', '.join(quoted[:-1])} and {quoted[-1]} (tied), {_pct(rate)} each"


def _stability_markdown(st: dict[str, Any]) -> list[str]:
    """The "Stability" section of report.md."""
    from deephealth.evaluation.stability import format_table

    target = st.get("target_flip_rate")
    over = [k for k, v in st["perturbations"].items() if target is not None and (v["flip_rate"] or 0) > target]
    out = [f"## Stability under benign perturbations ({st['n_images']} images)", ""]
    out.append("Each film is decoded, changed in a way that does not change the diagnosis, and scored again through "
               "the same Predictor; a **label flip** is a change of the 3-class label at the shipped operating "
               "point, ΔP is the change of P(pneumonia) = 1 − P(normal). The family is defined in "
               "`deephealth.evaluation.stability` (docs/stability.md)."
               + (f" Intervals: 95 % bootstrap over patients ({st['bootstrap']['n_resamples']:,} resamples)."
                  if st.get("bootstrap") else ""))
    out.append("")
    band = st.get("review_band")
    if band:
        out.append(f"With the model's review band, {_pct(band['review_rate'])} ({band['n_review']}) of the unchanged "
                   "films are flagged for review and every answer is a definite label or *review*. The last two "
                   "columns count, per perturbation, the **contradicting flips** (a definite label before and a "
                   "different definite label after: two answers, neither flagged) and the **outcome changes** "
                   "(any change of the answer, into or out of review included). The label-flip columns are "
                   "unchanged: they remain the headline flip figure.")
        out.append("")
    out.extend(format_table(st))
    out.append("")
    if st.get("any_flip_rate") is not None:
        worst_all = st.get("worst_perturbations", [st["worst"]] if st.get("worst") else [])  # older: one name
        worst_txt = (_worst_names(worst_all, st["max_flip_rate"]) if worst_all and st.get("max_flip_rate")
                     else "0.0 % (no perturbation flips any film's label)")
        summary = (f"Films whose label changes under at least one perturbation: {_pct(st['any_flip_rate'])}. "
                   f"Worst: {worst_txt}.")
        if target is not None:
            summary += (f" Target ≤ {_pct(target)} for every perturbation: "
                        + (f"missed for {', '.join(f'`{k}`' for k in over)}." if over else "met."))
        out += [summary, ""]
    if band and band.get("max_contradicting_rate") is not None:
        c_over = [k for k, v in st["perturbations"].items()
                  if target is not None and (v.get("contradicting_rate") or 0) > target]
        worst_c = band.get("worst_contradicting_perturbations",
                           [band["worst_contradicting"]] if band.get("worst_contradicting") else [])
        worst = (_worst_names(worst_c, band["max_contradicting_rate"])
                 if worst_c else "0.0 % (no perturbation contradicts any film)")
        line = (f"With the review band: films contradicted by at least one perturbation: "
                f"{_pct(band['any_contradicting_rate'])}. Worst contradicting rate: {worst}")
        if target is not None:
            line += (f", against the target ≤ {_pct(target)} for every perturbation: "
                     + (f"missed for {', '.join(f'`{k}`' for k in c_over)}." if c_over else "met."))
        else:
            line += "."
        out += [line, ""]
    alt = "Label flips and contradicting flips per perturbation" if band else (
        "Label-flip rate per perturbation")
    out += [f"![{alt}]({STABILITY_PLOT})", ""]
    return out


def _faithfulness_markdown(fa: dict[str, Any]) -> list[str]:
    """The "Heatmap faithfulness" section of report.md."""
    out = [f"## Heatmap faithfulness: deletion curves ({fa['films']} images)", ""]
    out.append("No lesion boxes exist for these films, so the heatmap is checked against the model instead "
               "(Petsiuk et al., 2018): the network-input pixels of each film are deleted in the map's order, "
               f"most highlighted first, 1/{fa['steps']} at a time (fill: {fa['fill']}), and the calibrated "
               "probability of the class the model gives the intact film is followed. A faithful map makes it "
               "fall faster than deleting pixels in random order: a smaller area under the curve (AUC, 0–1). "
               f"The heatmap shown to users is the `{fa['heatmap_source']}` map. Intervals: 95 % bootstrap over "
               "films. `deephealth.evaluation.faithfulness` (docs/evidence.md, which also has the "
               "model-randomisation check).")
    out.append("")
    names = [c for c in CLASS_NAMES if c in fa["predicted_class_counts"]]
    out.append("| map | cells | deletion AUC | map − random, paired | films where the map beats random | "
               + " | ".join(f"map − random, called {c} (n)" for c in names) + " |")
    out.append("|---|---|---:|---:|---:|" + "---:|" * len(names))
    for src, e in fa["maps"].items():
        cells = "×".join(str(v) for v in e["map_shape"]) if e.get("map_shape") else "–"
        auc = f"{e['auc']['mean']:.3f} ({e['auc']['ci95'][0]:.3f}–{e['auc']['ci95'][1]:.3f})"
        if src == "random":
            out.append(f"| random order | – | {auc} | – | – |" + " – |" * len(names))
            continue
        d = e["auc_minus_random"]
        by = e.get("auc_minus_random_by_predicted_class") or {}
        per = " | ".join(f"{by[c]['mean']:+.3f} ({by[c]['n']})" if c in by else "–" for c in names)
        out.append(f"| {src} | {cells} | {auc} | {d['mean']:+.3f} ({d['ci95'][0]:+.3f} to {d['ci95'][1]:+.3f}) | "
                   f"{_pct(e['share_below_random'])} | {per} |")
    out.append("")
    undecided = [src for src, e in fa["maps"].items()
                 if src != "random" and e["auc_minus_random"]["ci95"][0] <= 0.0 <= e["auc_minus_random"]["ci95"][1]]
    if undecided:
        out.append(f"**Too few films to tell:** the paired interval of {', '.join(f'`{s}`' for s in undecided)} "
                   f"includes zero, so on these {fa['films']} images the map cannot be told apart from random "
                   "deletion (neither better nor worse). Run on more films before drawing a conclusion.")
        out.append("")
    out += [f"![Deletion curves]({DELETION_PLOT})", ""]
    return out


def _gate_markdown(gate: dict[str, Any] | None, add: Any) -> None:
    """The "Input gate" section of report.md."""
    if not gate or not gate.get("n_read"):
        return
    c = gate["counts"]
    n = gate["n_read"]
    add("## Input gate")
    add("")
    if c.get("unavailable"):
        add("This model has no fitted feature-space gate: only the image checks (colour, shape, near-blank) ran.")
        add("")
    add(f"Outcomes on the {n} images read (every image was scored anyway, so the metrics above cover them all; "
        "in use, refused images get no probabilities):")
    add("")
    add("| outcome | images | share |")
    add("|---|---:|---:|")
    for status in ("accept", "warn", "refuse", "unavailable"):
        if status in c:
            add(f"| {status} | {c[status]} | {_pct(c[status] / n)} |")
    add("")
    if gate["flagged"]:
        add(f"Warned or refused ({len(gate['flagged'])}, {_pct(gate['flagged_fraction'])} of the images):")
        add("")
        for f in gate["flagged"]:
            add(f"- `{f['file']}` ({f['status']}): " + "; ".join(f["reasons"]))
        add("")


def load_metrics(path: str | Path) -> dict[str, Any]:
    """Read a ``metrics.json`` written by :func:`write_report`."""
    return json.loads(Path(path).read_text())


def reproducible_part(report: dict[str, Any]) -> dict[str, Any]:
    """The sections of a report that depend only on model and data (:data:`REPRODUCIBLE_SECTIONS`)."""
    return {k: report.get(k) for k in REPRODUCIBLE_SECTIONS}


__all__ = [
    "ANCHORS",
    "PLOTS",
    "REPRODUCIBLE_SECTIONS",
    "DELETION_PLOT",
    "STABILITY_PLOT",
    "build_report",
    "data_fingerprint",
    "headline",
    "load_metrics",
    "render_markdown",
    "report_data_root",
    "report_files",
    "reproducible_part",
    "write_report",
]
