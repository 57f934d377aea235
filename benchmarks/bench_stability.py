"""Stability benchmark: label flips and |ΔP(pneumonia)| under the benign-perturbation family (issue 16).

Every film of the split is decoded, changed by each member of the fixed family of
:mod:`deephealth.evaluation.stability` (JPEG q90, ±1 grey level, gamma 0.9 / 1.1, rescale 0.8 /
1.25, rotate ±3°, shift 4 px left / right / up / down, centre crop 95 %, blur, unsharp mask) and
scored again through the shipped :class:`deephealth.inference.Predictor` (ONNX Runtime, the model's
temperature and operating point). Figures per perturbation: the share of films whose 3-class label
changes (95 % patient-bootstrap interval), the normal <-> pneumonia flips, and the 50th / 95th
percentile and maximum of |ΔP(pneumonia)|, P(pneumonia) = 1 − P(normal). Target (issue 16): at
most 1 % label flips for every perturbation. For a model whose operating point has a review band
(issue 16), the contradicting-flip rate (a definite label changed into a different definite label,
neither flagged for review) and the outcome-change rate are printed beside the flip rate and
written into stability.json (``review_band_figures``); the label-flip rate stays the headline.

Splits: ``val`` is the development validation split, i.e. the patient-grouped hold-out of the
official train folder that training used (``grouped_split`` with the ``val_fraction`` and
``split_seed`` recorded in the first model's metadata, default 0.1 and 0); ``test`` the official
624-film test split (for the report); ``kermany-val`` the official 16-film val folder.

Give ``--model`` twice to compare two models side by side (e.g. 0.2.0 and a candidate).

Writes ``OUT/stability.json`` (every figure, per model) and ``OUT/stability.png`` (grouped bars).

    PYTHONPATH=src python benchmarks/bench_stability.py --split val --model src/deephealth/models/deephealth-cxr3 \\
        [--model runs/candidate/model] --out runs/stability-val [--limit 100] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import sys
import time
from pathlib import Path
from typing import Any


def select_records(split: str, data_root: Path, val_fraction: float, split_seed: int) -> list[Any]:
    """The records of ``split`` (see the module docstring)."""
    from deephealth.manifest import grouped_split, scan

    man = scan(data_root)
    if split == "val":
        return grouped_split(man.split("train"), val_fraction, split_seed)[1]
    if split == "kermany-val":
        return man.split("val")
    return man.split(split)


def _model_label(art: Any, directory: Path, taken: set[str]) -> str:
    label = f"{art.name} {art.version}"
    return label if label not in taken else f"{label} ({directory})"


def main(argv: list[str] | None = None) -> int:
    from deephealth.cpu import describe as cpu_describe
    from deephealth.evaluation import stability as st
    from deephealth.evaluation.plots import plot_stability
    from deephealth.inference import Predictor
    from deephealth.paths import dataset_dir, default_model_dir

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--split", choices=("val", "test", "kermany-val"), default="val",
                    help="val: training's patient-grouped validation split (default); test: official test split")
    ap.add_argument("--model", action="append", default=[], metavar="DIR",
                    help="model folder (repeat to compare; default: the bundled model)")
    ap.add_argument("--out", default="stability-out", metavar="DIR", help="output folder (stability-out)")
    ap.add_argument("--data-root", default=None, metavar="DIR", help="Kermany-layout dataset (default: chest_xray_224)")
    ap.add_argument("--limit", type=int, default=0, help="score only every k-th film so that about N remain (0: all)")
    ap.add_argument("--only", default="", help="comma-separated perturbation names (default: the whole family)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--bootstrap", type=int, default=1000, help="patient-bootstrap resamples for the CI (0: none)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    try:
        perts = [st.perturbation(n.strip()) for n in args.only.split(",") if n.strip()] or list(st.PERTURBATIONS)
    except KeyError as exc:
        print(f"bench_stability: error: {exc.args[0]}", file=sys.stderr)
        return 2
    model_dirs = [Path(m) for m in args.model] or [default_model_dir()]
    predictors = []
    for d in model_dirs:
        try:
            predictors.append((d, Predictor(d, num_threads=args.threads)))
        except Exception as exc:  # ModelArtifactError and friends: one line
            print(f"bench_stability: error: {exc}", file=sys.stderr)
            return 2
    cfg = (predictors[0][1].artifact.metadata.get("training") or {}).get("config") or {}
    val_fraction, split_seed = float(cfg.get("val_fraction") or 0.1), int(cfg.get("split_seed") or 0)
    data_root = Path(args.data_root) if args.data_root else Path(dataset_dir())
    try:
        records = select_records(args.split, data_root, val_fraction, split_seed)
    except (OSError, ValueError) as exc:
        print(f"bench_stability: error: {exc}", file=sys.stderr)
        return 2
    if args.limit and len(records) > args.limit:
        records = records[:: max(1, len(records) // args.limit)][: args.limit]
    if not records:
        print(f"bench_stability: error: no films in split {args.split!r} of {data_root}", file=sys.stderr)
        return 2

    print(f"CPU: {cpu_describe()}")
    print(f"split: {args.split} ({len(records)} films"
          + (f"; patient-grouped hold-out of train, val_fraction {val_fraction:g}, split_seed {split_seed}"
             if args.split == "val" else "") + f") from {data_root}")
    print(f"family: {len(perts)} perturbations of the decoded 8-bit film, scored through the Predictor")
    results: dict[str, Any] = {}
    for d, pred in predictors:
        label = _model_label(pred.artifact, d, set(results))
        t0 = time.monotonic()
        scores = st.score_stability(pred, [r.path for r in records], perturbations=perts,
                                    batch_size=args.batch_size, progress=not args.no_progress)
        seconds = time.monotonic() - t0
        for _, err in scores.errors:
            print(f"not scored: {err}", file=sys.stderr)
        summary = st.summarize_stability(scores, patient_ids=[records[i].patient_id for i in scores.source_index],
                                         n_resamples=args.bootstrap, seed=args.seed,
                                         operating_point=pred.artifact.operating_point)
        summary["model"] = {"name": pred.artifact.name, "version": pred.artifact.version, "dir": str(d),
                            "sha256": pred.artifact.sha256, "input_size": pred.input_size,
                            "operating_point": pred.artifact.operating_point}
        summary["seconds"] = round(seconds, 1)
        results[label] = summary
        print(f"{label}: {summary['n_images']} films x {len(perts) + 1} views in {seconds:.0f} s "
              f"({pred.num_threads} thread(s))")

    labels = list(results)
    names = [p.name for p in perts]
    banded = [lb for lb in labels if results[lb].get("review_band")]
    wd = 41 if banded else 30  # column width: the contradicting flips take 11 more characters
    head = f"{'perturbation':<14}" + "".join(f" | {lb[:wd]:>{wd}}" for lb in labels)
    print()
    print("label flips % (n) [95 % CI]" + (" c contradicting flips % (n) with the review band" if banded else "")
          + " / |ΔP(pneumonia)| p95, max")
    print(head)
    print("-" * len(head))
    for n in names:
        cells = []
        for lb in labels:
            v = results[lb]["perturbations"][n]
            ci = v.get("flip_rate_ci")
            ci_s = f"[{100 * ci[0]:.1f}-{100 * ci[1]:.1f}]" if ci else ""
            contra = (f" c{100 * v['contradicting_rate']:4.1f} ({v['n_contradicting']:>2})"
                      if "contradicting_rate" in v else "")
            cells.append(f"{100 * v['flip_rate']:4.1f} ({v['n_flips']:>2}) {ci_s:>11}{contra} "
                         f"{v['abs_dp_p95']:.3f} {v['abs_dp_max']:.2f}")
        print(f"{n:<14}" + "".join(f" | {c:>{wd}}" for c in cells))
    print("-" * len(head))
    print(f"{'any flip':<14}" + "".join(f" | {100 * results[lb]['any_flip_rate']:{wd - 2}.1f} %" for lb in labels))
    print(f"{'worst':<14}" + "".join(
        f" | {', '.join(results[lb]['worst_perturbations']) or 'none'} {100 * results[lb]['max_flip_rate']:.1f} %"
        for lb in labels))
    target = st.FLIP_TARGET
    for lb in labels:
        over = [n for n in names if results[lb]["perturbations"][n]["flip_rate"] > target]
        print(f"{lb}: target <= {100 * target:g} % flips " + (f"missed for {', '.join(over)}" if over else "met"))
        band = results[lb].get("review_band")
        if band:
            c_over = [n for n in names if results[lb]["perturbations"][n]["contradicting_rate"] > target]
            print(f"{lb}: review band flags {100 * band['review_rate']:.1f} % ({band['n_review']}) of the films; "
                  f"contradicting flips at most {100 * band['max_contradicting_rate']:.1f} % "
                  f"({', '.join(band['worst_contradicting_perturbations']) or 'none contradicts'}), "
                  f"any {100 * band['any_contradicting_rate']:.1f} %; "
                  f"target <= {100 * target:g} % " + (f"missed for {', '.join(c_over)}" if c_over else "met"))

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {
        "schema": "deephealth-stability/1",
        "split": args.split,
        "data_root": str(data_root),
        "n_films": len(records),
        "split_rule": ({"val_fraction": val_fraction, "split_seed": split_seed} if args.split == "val" else None),
        "cpu": cpu_describe(),
        "python": platform.python_version(),
        "models": results,
    }
    (out / "stability.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")
    plot_stability(results, out / "stability.png", title=f"Label flips under benign perturbations ({args.split}, "
                   f"{len(records)} films)")
    print(f"wrote {out / 'stability.json'} and {out / 'stability.png'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
