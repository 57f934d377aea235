"""Is the heatmap faithful? Deletion curves and model randomisation on the validation split.

For each model folder (``--model`` and optionally ``--compare``) and each map it has -- ``cam``,
the class activation map of the last feature map (6 x 6 at 192 px), and ``evidence``, the
dilated-network evidence map (12 x 12, docs/evidence.md) -- this measures on the films of the
split, read and preprocessed exactly as ``deephealth predict`` does:

- the deletion curve (Petsiuk et al., 2018): the calibrated probability of the class the model
  gives the intact film (at its operating point, the heatmap's class) as the network-input pixels
  are deleted in the map's order, 1/16 at a time, against a random order;
  deleted pixels take a Gaussian blur of the film (``--fill blur``, default; ``--fill mean`` sets the
  mid-grey normalisation mean, which on a radiograph looks like an opacity); the area under the
  curve (AUC, lower = more faithful), its paired difference from random and
  the share of films where the map beats random;
- the cascading model-randomisation check (Adebayo et al., 2018): Spearman correlation between
  the trained model's map and the map after re-drawing the classifier, then the head convolution,
  then blocks 6, 5 and 4 (needs ``weights.pt`` and the ``[train]`` extra; skipped otherwise).

    PYTHONPATH=src python benchmarks/bench_evidence.py --model DIR [--compare DIR] --split val --out DIR

Writes ``DIR/evidence.json`` and ``DIR/deletion_curves.png``; prints a table. The validation split
is the patient-grouped split the model's training run used (``metadata.json`` ->
``training.config``: ``val_fraction``, ``split_seed``); ``--split test`` uses the official test
folder (spend a look at the test split only for the release report).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np


def split_files(predictor, split: str) -> list[Path]:
    """The films of ``split`` for a model: its training run's patient-grouped validation split, or ``test``."""
    from deephealth.manifest import grouped_split, scan
    from deephealth.paths import dataset_dir

    config = ((predictor.artifact.metadata.get("training") or {}).get("config")) or {}
    root = Path(config.get("data_dir") or dataset_dir())
    if not (root / "train").is_dir():
        root = Path(dataset_dir())
    if split == "test":
        return [r.path for r in scan(root).split("test")]
    _, val = grouped_split(scan(root).split("train"), float(config.get("val_fraction", 0.1)),
                           int(config.get("split_seed", 0)))
    return [r.path for r in val]


def evaluate_model(model_dir: str | None, files: list[Path], steps: int, threads: int, seed: int,
                   randomisation: bool, log: logging.Logger, fill: str = "blur") -> dict:
    """Deletion curves (every map of the model + random) and randomisation for one model folder."""
    from deephealth.evaluation.faithfulness import deletion_report
    from deephealth.inference import Predictor

    p = Predictor(model_dir, num_threads=threads)
    t0 = time.time()
    result = {"model": f"{p.artifact.name} {p.artifact.version}", "model_dir": str(p.artifact.directory),
              **deletion_report(p, files, steps=steps, seed=seed, fill=fill, progress=True)}
    log.info("%s: deletion curves of %d films in %.0f s", result["model"], result["films"], time.time() - t0)
    if randomisation:
        x = np.stack([p._prepare(p.load(f)[0])[1] for f in files])  # (N, 1, S, S), as predict prepares them
        result["randomisation"] = _randomisation(p, x, [k for k in result["maps"] if k != "random"], seed, log)
    return result


def _randomisation(p, x: np.ndarray, sources: list[str], seed: int, log: logging.Logger) -> dict | None:
    wpath = p.artifact.directory / "weights.pt"
    try:
        import torch

        from deephealth.evaluation.faithfulness import randomisation_check
    except ImportError as exc:
        log.warning("randomisation check skipped (needs the [train] extra): %s", exc)
        return None
    if not wpath.is_file():
        log.warning("randomisation check skipped: no %s", wpath)
        return None
    ck = torch.load(wpath, map_location="cpu", weights_only=True)
    return randomisation_check(ck["model_args"], ck["model_state"], x, maps=sources, seed=seed)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--compare", default=None, help="a second model folder measured the same way (e.g. 0.2.0)")
    ap.add_argument("--split", choices=("val", "test"), default="val")
    ap.add_argument("--out", required=True, help="folder for evidence.json and deletion_curves.png")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N films of the split (0: all)")
    ap.add_argument("--steps", type=int, default=16, help="deletion steps (default 16)")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--fill", choices=("blur", "mean"), default="blur",
                    help="what deleted pixels become: a Gaussian blur of the film (default) or the mid-grey mean")
    ap.add_argument("--no-randomisation", action="store_true", help="skip the model-randomisation check")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    log = logging.getLogger("bench_evidence")

    from deephealth.artifact import ModelArtifactError
    from deephealth.evaluation.plots import plot_deletion
    from deephealth.inference import Predictor

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    try:
        for model_dir in [args.model] + ([args.compare] if args.compare else []):
            files = split_files(Predictor(model_dir, num_threads=1), args.split)
            if args.limit:
                files = files[: args.limit]
            if not files:
                print(f"bench_evidence: no films found for split {args.split!r}", file=sys.stderr)
                return 2
            r = evaluate_model(model_dir, files, args.steps, args.threads, args.seed, not args.no_randomisation, log,
                               fill=args.fill)
            r["split"] = args.split
            results.append(r)
    except ModelArtifactError as exc:
        print(f"bench_evidence: {exc}", file=sys.stderr)
        return 2
    (out / "evidence.json").write_text(json.dumps({"results": results}, indent=2) + "\n")
    plot_deletion(results, out / "deletion_curves.png")
    for r in results:
        print(f"{r['model']} ({r['films']} {r['split']} films, {r['input_size']} px)")
        for src, e in r["maps"].items():
            extra = ""
            if src != "random":
                d = e["auc_minus_random"]
                extra = (f"  map - random {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}], "
                         f"below random on {100 * e['share_below_random']:.0f} % of films")
            shape = "x".join(map(str, e["map_shape"])) if e["map_shape"] else "-"
            print(f"  deletion AUC {src:<8} {shape:>6}: {e['auc']['mean']:.3f} "
                  f"[{e['auc']['ci95'][0]:.3f}, {e['auc']['ci95'][1]:.3f}]{extra}")
            by = e.get("auc_minus_random_by_predicted_class") or {}
            if by:
                print("      map - random by predicted class: " + ", ".join(
                    f"{c} {v['mean']:+.3f} (n={v['n']})" for c, v in by.items()))
        for src, e in (r.get("randomisation") or {}).items():
            cells = ", ".join(f"{st.split('+')[-1]} {e['spearman'][st]['mean']:.2f}" for st in e["stages"])
            print(f"  randomisation {src}: Spearman vs trained map, cumulative: {cells}")
    print(f"wrote {out / 'evidence.json'} and {out / 'deletion_curves.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
