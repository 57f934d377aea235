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
    from deephealth.calibration import decide
    from deephealth.evaluation.faithfulness import blurred, curve_auc, deletion_curves, summarise
    from deephealth.inference import Predictor, calibrated_probabilities, cam_heatmap

    p = Predictor(model_dir, num_threads=threads)
    s = p.input_size
    xs = []
    for f in files:
        image, _ = p.load(f)
        xs.append(p._prepare(image)[1])  # (1, S, S) float32, content box squashed to the square
    x = np.stack(xs)  # (N, 1, S, S)
    temp, op = p.artifact.temperature, p.artifact.operating_point

    def score(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
        logits, _ = p.infer(batch)
        probs = calibrated_probabilities(logits, temp)
        return probs[np.arange(len(classes)), classes]

    sources = ["cam"] + (["evidence"] if p.evidence_name else [])
    maps, logits = {}, None
    for src in sources:
        chunks = [p.infer(x[i : i + 32], cam=True, source=src) for i in range(0, len(x), 32)]
        logits = np.concatenate([c[0] for c in chunks])
        maps[src] = np.concatenate([c[1] for c in chunks])
    probs = calibrated_probabilities(logits, temp)
    classes = np.array([int(decide(pr, op)) for pr in probs])
    sigma = s / 24.0  # 8 px at 192 px
    fill_value = blurred(x, sigma) if fill == "blur" else 0.0
    fill_desc = (f"Gaussian blur of the input, sigma {sigma:.0f} px" if fill == "blur"
                 else "0 (the normalisation mean, mid-grey)")
    result = {"model": f"{p.artifact.name} {p.artifact.version}", "model_dir": str(p.artifact.directory),
              "input_size": s, "films": len(files), "steps": steps, "fill": fill_desc,
              "predicted_class_counts": {c: int(np.sum(classes == i)) for i, c in enumerate(p.artifact.class_names)},
              "heatmap_source": p.heatmap_source, "maps": {}}
    curves = {}
    for src in sources + ["random"]:
        t0 = time.time()
        if src == "random":
            sal = None
        else:  # the displayed heatmap in input pixels (ReLU, max-normalised, bilinear)
            sal = np.stack([cam_heatmap(m[k], (s, s)) for m, k in zip(maps[src], classes)])
        fr, sc = deletion_curves(score, x, classes, sal, steps=steps, fill=fill_value, seed=seed)
        curves[src] = (fr, sc)
        log.info("%s %s: deletion curves of %d films in %.0f s", result["model"], src, len(x), time.time() - t0)
    rand_auc = curve_auc(*curves["random"])
    for src, (fr, sc) in curves.items():
        auc = curve_auc(fr, sc)
        entry = {"map_shape": list(maps[src].shape[2:]) if src in maps else None,
                 "auc": summarise(auc, seed), "mean_curve": sc.mean(axis=0).tolist(), "fractions": fr.tolist()}
        entry["auc_by_predicted_class"] = {c: summarise(auc[classes == i], seed)
                                           for i, c in enumerate(p.artifact.class_names) if np.any(classes == i)}
        if src != "random":
            entry["auc_minus_random"] = summarise(auc - rand_auc, seed)
            entry["auc_minus_random_by_predicted_class"] = {
                c: summarise((auc - rand_auc)[classes == i], seed)
                for i, c in enumerate(p.artifact.class_names) if np.any(classes == i)}
            entry["share_below_random"] = float(np.mean(auc < rand_auc))
        result["maps"][src] = entry
    if randomisation:
        result["randomisation"] = _randomisation(p, x, sources, seed, log)
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


def plot(results: list[dict], path: Path) -> None:
    """Deletion curves (one panel per model) and the randomisation cascade, as one PNG."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    n = len(results)
    has_rand = any(r.get("randomisation") for r in results)
    fig, axes = plt.subplots(1, n + int(has_rand), figsize=(5.0 * (n + int(has_rand)), 4.2), squeeze=False)
    colours = {"cam": "tab:blue", "evidence": "tab:red", "random": "0.5"}
    for ax, r in zip(axes[0], results):
        for src, e in r["maps"].items():
            shape = "x".join(str(v) for v in e["map_shape"]) if e["map_shape"] else ""
            label = f"{src} {shape}".strip() + f" (AUC {e['auc']['mean']:.3f})"
            ax.plot(np.array(e["fractions"]) * 100, e["mean_curve"], color=colours.get(src, "k"), label=label,
                    ls="--" if src == "random" else "-")
        ax.set_xlabel("pixels deleted (%)")
        ax.set_ylabel("P(predicted class), mean")
        ax.set_title(f"deletion, {r['model']}, {r['films']} {r['split']} films\nfill: {r['fill']}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if has_rand:
        ax = axes[0][-1]
        for r in results:
            for src, e in (r.get("randomisation") or {}).items():
                ys = [e["spearman"][st]["mean"] for st in e["stages"]]
                ax.plot(range(len(ys)), ys, marker="o", color=colours.get(src, "k"),
                        ls="-" if r is results[0] else ":", label=f"{src}, {r['model']}")
        stages = next(e["stages"] for r in results for e in (r.get("randomisation") or {}).values())
        ax.set_xticks(range(len(stages)))
        ax.set_xticklabels(["+" + s.split("+")[-1] if i else s for i, s in enumerate(stages)], rotation=20, fontsize=8)
        ax.axhline(0, color="0.6", lw=0.8)
        ax.set_ylabel("Spearman vs trained map, mean")
        ax.set_title("model randomisation (cascading from the top)", fontsize=10)
        ax.set_ylim(-0.5, 1)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, metadata={"Software": None})
    plt.close(fig)


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
    plot(results, out / "deletion_curves.png")
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
