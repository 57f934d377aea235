"""Score a model on labelled chest X-rays and write its evaluation report.

The exported ONNX model is scored through the same reading and preprocessing path users get
(what ships is what is scored). The report folder gets metrics.json, report.md, predictions.csv,
misclassified.csv and PNG plots (confusion matrix, ROC curves, reliability diagram): 3-class
metrics, the two binary protocols of Kermany et al. (2018), calibration (ECE, Brier, NLL), 95 %
patient-level bootstrap intervals, and (official test split only) a comparison with published
results. The headline metrics are given on all images (the published protocol) and again with
each group of byte-identical files (SHA-256 of the bytes) counted once, patients sharing an
identical image merged into one bootstrap unit. --compare NAME=METRICS_JSON adds another evaluation's headline figures as a
labelled row of the comparison table (--compare-adapted for a model that used the evaluated
site's unlabelled films, e.g. site-adapted BatchNorm statistics). --stability also scores every
film under the benign-perturbation family of deephealth.evaluation.stability (JPEG q90, +-1 grey
level, gamma, rescale, rotate, shift, crop, blur, sharpen; about 16x the scoring time) and adds the
label-flip table and stability.png to the report (with the model's review band, if it has one, also
the contradicting flips: a definite label changed into a different definite label). A model whose
operating point has a review band also gets a "Review band" section: the share of films flagged for
review and the accuracy with them counted as errors, next to the headline figures. --faithfulness
adds the heatmap's deletion curves (Petsiuk et al., 2018; deephealth.evaluation.faithfulness): the
predicted class's probability as the most highlighted pixels are deleted first, against random
deletion (about 50x the scoring time, no labels used), with deletion_curves.png.

Data: a Kermany-layout folder ({train,val,test}/{NORMAL,PNEUMONIA}/...; default: the shared
chest_xray_224, official test split) or a CSV with columns path,label[,patient_id,split].
Splits of a folder: test (the official test split, reserved for reporting a release: at most three
looks per release, recorded in docs/model-development.md; a note on stderr says so), val (the
official 16-film val folder, NOT the model's validation split), train (the official train folder,
which the model was trained and selected on), and model-val: exactly the validation films of the
model's training run (the patient-grouped split of the official train folder it was selected on,
re-created from its metadata and checked against the recorded val_sha256 and counts), the split
every validation figure of the docs is on. Reports of any other data than the official test split
say that published results are not comparable, and whether the films were used to train or select
the model.

Examples:
  deephealth evaluate
  deephealth evaluate --model src/deephealth/models/deephealth-cxr3 --out src/deephealth/models/deephealth-cxr3/report
  deephealth evaluate --data my_images.csv --out eval-mine
  deephealth evaluate --split model-val --out eval-model-val
  deephealth evaluate --data ../shared/data/chest_xray_224.csv --split test
  deephealth evaluate --stability --faithfulness --out eval-test
  deephealth evaluate --compare "prototype method=eval-proto/metrics.json" \
      --compare-adapted "site-adapted (AdaBN)=eval-adapted/metrics.json"

Exit status: 0 report written; 1 report written but some images could not be read or some entries
of the data were skipped (both listed in the report), or none could be read; 2 bad model, data or
arguments.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

DEFAULT_OUT = "evaluation"
MODEL_VAL = "model-val"
FOLDER_SPLITS = ("train", "val", "test", MODEL_VAL)
"""The ``--split`` names of a Kermany-layout folder."""
TEST_SPLIT_NOTE = ("note: the official test split is reserved for reporting a release (at most three looks per "
                   "release, recorded in docs/model-development.md)")
OFFICIAL_VAL_NOTE = ("the official {n}-film val folder, not the model's validation split "
                     f"(that is --split {MODEL_VAL})")
MIN_RECOMMENDED_RESAMPLES = 1000


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``deephealth evaluate``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("--model", metavar="DIR", help="model folder (model.onnx + metadata.json); "
                        "default: DEEPHEALTH_MODEL_DIR or the bundled model")
    parser.add_argument("--data", metavar="PATH", help="Kermany-layout dataset folder or a CSV of path,label "
                        "(optional patient_id, split); default: <data root>/chest_xray_224")
    parser.add_argument("--split", metavar="NAME", help="split to score: test (official test split, reserved for "
                        "a release's report), val (the official 16-film val folder, not the model's validation "
                        f"split), train, or {MODEL_VAL} (the model's own validation films, as recorded in its "
                        "metadata) (default: test for a folder; every row of a CSV unless given, then its split "
                        "column must match)")
    parser.add_argument("--out", metavar="DIR", default=DEFAULT_OUT,
                        help=f"report folder, created if needed (default: ./{DEFAULT_OUT})")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per inference batch (32)")
    parser.add_argument("--bootstrap", type=int, default=1000, metavar="N",
                        help="bootstrap resamples of patients for the 95 %% intervals (1000)")
    parser.add_argument("--seed", type=int, default=0, help="bootstrap seed (0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compare", action="append", default=[], metavar="NAME=METRICS_JSON",
                        help="add another evaluation's metrics.json as a labelled row of the comparison "
                        "table (repeatable)")
    parser.add_argument("--compare-adapted", action="append", default=[], metavar="NAME=METRICS_JSON",
                        help="as --compare, for a model that used the evaluated site's unlabelled images "
                        "(transductive, e.g. site-adapted BatchNorm statistics; repeatable)")
    parser.add_argument("--stability", action="store_true",
                        help="also measure label flips and |ΔP(pneumonia)| under the benign-perturbation family "
                        "(deephealth.evaluation.stability; about 16x the scoring time) and add them to the report")
    parser.add_argument("--faithfulness", action="store_true",
                        help="also draw the heatmaps' deletion curves against random deletion (Petsiuk et al., "
                        "2018; deephealth.evaluation.faithfulness; about 50x the scoring time) and add them to "
                        "the report")


def load_comparisons(args: argparse.Namespace) -> list[tuple[str, dict, bool | None]]:
    """``(label, metrics.json dict, uses unlabelled target images)`` of each --compare option.

    Raises:
        ValueError: for an option without ``NAME=``, or a file that is missing or not a metrics.json.
    """
    import json

    out = []
    for specs, adapted in ((args.compare, None), (args.compare_adapted, True)):
        for spec in specs:
            name, sep, path = spec.partition("=")
            if not sep or not name.strip() or not path.strip():
                raise ValueError(f"--compare needs NAME=path/to/metrics.json, got {spec!r}")
            try:
                other = json.loads(Path(path).read_text())
            except OSError as exc:
                raise ValueError(f"--compare {name}: cannot read {path}: {exc.strerror or exc}") from None
            except json.JSONDecodeError as exc:
                raise ValueError(f"--compare {name}: {path} is not JSON ({exc})") from None
            if not isinstance(other, dict) or not isinstance((other.get("headline") or {}).get("metrics"), dict):
                raise ValueError(f"--compare {name}: {path} is not an evaluation metrics.json "
                                 "(no headline.metrics section)")
            out.append((name.strip(), other, adapted))
    return out


def _error(msg: str) -> int:
    print(f"deephealth evaluate: error: {msg}", file=sys.stderr)
    return 2


PATH_OPTIONS = ("--model", "--data", "--out")
"""Options whose value is a path: recorded with :func:`deephealth.paths.portable_path`."""
COMPARE_OPTIONS = ("--compare", "--compare-adapted")
"""Options of the form NAME=PATH: the PATH part is recorded with :func:`deephealth.paths.portable_path`."""


def portable_argv(argv: list[str], base: str | Path | None = None) -> list[str]:
    """``argv`` with the path values of :data:`PATH_OPTIONS` and :data:`COMPARE_OPTIONS` made portable.

    Both ``--out DIR`` and ``--out=DIR`` are recognised; everything else is kept as typed. A path is
    written as :func:`deephealth.paths.portable_path` writes it (relative to ``base`` when inside it
    or beside it, else ``<...>/<last two parts>``), so the recorded command holds no absolute path
    of this machine.

    Args:
        argv: the arguments after the program name, e.g. ``["evaluate", "--model", "/tmp/m"]``.
        base: the folder paths are made relative to; default the current directory.

    Returns:
        A new list, as long as ``argv``.
    """
    from deephealth.paths import portable_path

    def value(option: str, v: str) -> str:
        if option in PATH_OPTIONS:
            return portable_path(v, base)
        name, sep, path = v.partition("=")
        return f"{name}={portable_path(path, base)}" if sep and path else v

    out: list[str] = []
    pending: str | None = None
    for arg in argv:
        if pending is not None:
            out.append(value(pending, arg))
            pending = None
            continue
        option, eq, v = arg.partition("=")
        if option in PATH_OPTIONS + COMPARE_OPTIONS:
            if eq:
                out.append(f"{option}={value(option, v)}")
            else:
                out.append(arg)
                pending = option
            continue
        out.append(arg)
    return out


def _invoked_command() -> str | None:
    """The command line as typed (its paths portable), when this process is the ``deephealth`` program."""
    argv = sys.argv
    if len(argv) > 1 and "evaluate" in argv[1:] and Path(argv[0]).name.startswith(("deephealth", "cli")):
        return "deephealth " + shlex.join(portable_argv(argv[1:]))
    return None


def _describe_data(path: Path, is_csv: bool) -> str:
    if is_csv:
        return f"CSV {path.name} (paths and labels as listed; patient ids from its patient_id column if any)"
    if path.name == "chest_xray_224":
        return ("chest_xray_224: 224×224 copies of the pediatric chest X-rays of Kermany et al. (2018), "
                "Mendeley Data v2, doi:10.17632/rscbjbr9sj.2, CC BY 4.0; labels from folder and file name, "
                "patients from file name")
    return f"Kermany-layout folder {path.name} (labels from folder and file name, patients from file name)"


def _model_films(records: list, metadata: dict, split: str) -> dict | None:
    """How many of ``records`` the model was trained or selected on, for the report.

    The model's training and validation films both come from the official ``train`` folder of the
    dataset it records (``metadata["data"]["dataset_dir"]``, resolved with
    :func:`deephealth.paths.resolve_portable_path`): a film whose resolved path lies in it counts.
    Films copied elsewhere are not recognised.

    Args:
        records: the records to be scored.
        metadata: the model's ``metadata.json`` content.
        split: the ``--split`` name (``model-val`` gives the validation role outright).

    Returns:
        ``{"role": "validation" | "training or validation", "n": films}``, or ``None`` when no
        film is in the model's train folder (or that folder is not found here).
    """
    from deephealth.paths import resolve_portable_path

    if split == MODEL_VAL:
        return {"role": "validation", "n": len(records)}
    recorded = (metadata.get("data") or {}).get("dataset_dir")
    try:
        train_dir = resolve_portable_path(recorded, accept=lambda d: (d / "train").is_dir()) / "train"
    except FileNotFoundError:
        return None
    n = sum(Path(r.path).resolve().is_relative_to(train_dir) for r in records)
    return {"role": "training or validation", "n": n} if n else None


def run(args: argparse.Namespace) -> int:
    """Score the model and write the report; see the module docstring for the exit status."""
    import datetime
    import platform
    import time

    from deephealth import __version__, manifest, paths

    try:
        from deephealth.evaluation import build_report, evaluate_model, write_report
        from deephealth.inference import Predictor
    except ImportError as exc:  # the [eval] extra is missing
        return _error(f"{exc}; install the evaluation extra: pip install 'deephealth[eval]'")
    from deephealth.artifact import ModelArtifactError

    if args.bootstrap < 1:
        return _error(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.batch_size < 1:
        return _error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.bootstrap < MIN_RECOMMENDED_RESAMPLES:
        print(f"warning: {args.bootstrap} bootstrap resamples; use >= {MIN_RECOMMENDED_RESAMPLES} for a report",
              file=sys.stderr)

    try:
        comparisons = load_comparisons(args)
    except ValueError as exc:
        return _error(str(exc))

    model_dir = Path(args.model) if args.model else paths.default_model_dir()
    try:
        predictor = Predictor(model_dir)
    except ModelArtifactError as exc:
        return _error(str(exc))

    data_path = Path(args.data) if args.data else paths.dataset_dir()
    is_csv = data_path.is_file()
    split_description = None
    try:
        if is_csv:
            if args.split == MODEL_VAL:
                return _error(f"--split {MODEL_VAL} scores the model's validation films from the Kermany-layout "
                              f"dataset folder it was trained on; {data_path} is a CSV: give that folder as --data")
            man = manifest.read_csv(data_path)
            records = man.records
            splits = sorted({r.split for r in records})
            if args.split:
                records = [r for r in records if r.split == args.split]
                if not records and splits and man.records:
                    return _error(f"unknown split {args.split!r}: {data_path} holds the splits {', '.join(splits)}")
            elif len(splits) > 1:
                return _error(f"{data_path} holds the splits {', '.join(splits)}; choose one with --split")
            split = args.split or (splits[0] if splits else "csv")
            root = data_path.resolve().parent
        else:
            split = args.split or "test"
            if split not in FOLDER_SPLITS:
                return _error(f"unknown split {split!r}; the splits of a dataset folder are {', '.join(FOLDER_SPLITS)}")
            man = manifest.scan(data_path)
            if split == MODEL_VAL:
                records, _ = manifest.model_validation_split(predictor.artifact.metadata, data_path)
                split_description = (f"the model's validation split: its training run's {len(records)} "
                                     "validation films from the official train folder, checked against its metadata")
            else:
                records = man.split(split)
                if split == "val":
                    split_description = OFFICIAL_VAL_NOTE.format(n=len(records))
            root = Path(man.root)
    except (OSError, ValueError) as exc:
        return _error(str(exc))
    if man.problems:
        print(f"warning: {len(man.problems)} entries of {data_path} were skipped (first: {man.problems[0]})",
              file=sys.stderr)
    if not records:
        if is_csv and not args.split and not splits:
            return _error(f"no labelled images in {data_path}: it needs a row per film with its path and label")
        return _error(f"no labelled images for split {split!r} in {data_path}")
    if split == "test":
        print(TEST_SPLIT_NOTE, file=sys.stderr)

    t0 = time.monotonic()
    try:
        y_true, probs, rows = evaluate_model(
            predictor, records, batch_size=args.batch_size, progress=not args.no_progress
        )
    except ValueError as exc:
        return _error(str(exc))
    failures = [r for r in rows if r["error"]]
    for r in failures:
        print(f"not scored: {r['error']}", file=sys.stderr)
    if len(y_true) == 0:
        print(f"deephealth evaluate: error: none of the {len(rows)} images could be read", file=sys.stderr)
        return 1
    stability = None
    if args.stability:
        from deephealth.evaluation.stability import score_stability, summarize_stability

        scored = [r for r in rows if r["error"] is None]
        t1 = time.monotonic()
        st_scores = score_stability(predictor, [r["path"] for r in scored], batch_size=args.batch_size,
                                    progress=not args.no_progress)
        for label, err in st_scores.errors:
            print(f"stability: not scored: {err}", file=sys.stderr)
        stability = summarize_stability(
            st_scores, patient_ids=[scored[i]["patient_id"] for i in st_scores.source_index],
            n_resamples=args.bootstrap, seed=args.seed, operating_point=predictor.artifact.operating_point,
        )
        stability_seconds = round(time.monotonic() - t1, 1)
    faithfulness = None
    if args.faithfulness:
        from deephealth.evaluation.faithfulness import deletion_report

        t2 = time.monotonic()
        try:
            faithfulness = deletion_report(predictor, [r["path"] for r in rows if r["error"] is None],
                                           seed=args.seed, batch_size=args.batch_size, progress=not args.no_progress)
        except ValueError as exc:
            return _error(str(exc))
        for label, err in faithfulness.pop("errors"):
            print(f"deletion curves: not scored: {err}", file=sys.stderr)
        faithfulness_seconds = round(time.monotonic() - t2, 1)

    art = predictor.artifact
    model_info = {
        "name": art.name,
        "version": art.version,
        "sha256": art.sha256,
        "temperature": art.temperature,
    }
    operating_points = art.metadata.get("operating_points")
    if operating_points:
        model_info["operating_points"] = operating_points
    if art.operating_point:  # the shipped decision rule: labels and figures are at it
        model_info["operating_point"] = art.operating_point
    if art.metadata.get("adaptation"):  # a site-adapted model records how (transductive)
        model_info["adaptation"] = art.metadata["adaptation"]
    # The folders as the model card records paths (paths.portable_path): relative to the current
    # directory when inside it or beside it, else "<...>/<last two parts>"; never an absolute path
    # of this machine in the shipped report (command, command_resolved, model_dir, data_path, and
    # data_root, which build_report writes the same way).
    resolved = shlex.join([
        "deephealth", "evaluate", "--model", paths.portable_path(model_dir),
        "--data", paths.portable_path(data_path),
        *(["--split", args.split] if args.split else ([] if is_csv else ["--split", split])),
        "--out", paths.portable_path(args.out), "--bootstrap", str(args.bootstrap), "--seed", str(args.seed),
        *(["--stability"] if args.stability else []),
        *(["--faithfulness"] if args.faithfulness else []),
        *(x for spec in args.compare for x in ("--compare", spec)),
        *(x for spec in args.compare_adapted for x in ("--compare-adapted", spec)),
    ])
    try:
        import onnxruntime
        import sklearn

        ort_version, sk_version = onnxruntime.__version__, sklearn.__version__
    except ImportError:  # pragma: no cover - both are dependencies of this command
        ort_version = sk_version = "?"
    run_info = {
        "command": _invoked_command() or resolved,
        "command_resolved": resolved,
        "date_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "model_dir": paths.portable_path(model_dir),
        "data_path": paths.portable_path(data_path),
        "deephealth_version": __version__,
        "onnxruntime_version": ort_version,
        "sklearn_version": sk_version,
        "python_version": platform.python_version(),
        "scoring_seconds": round(time.monotonic() - t0, 1),
    }
    if stability is not None:
        run_info["stability_seconds"] = stability_seconds
    if faithfulness is not None:
        run_info["faithfulness_seconds"] = faithfulness_seconds
    data_info = {
        "dataset": data_path.name,
        "kind": "csv" if is_csv else "kermany-folder",
        "description": _describe_data(data_path, is_csv),
        "split": split,
        "root": str(root),
    }
    if split_description:
        data_info["split_description"] = split_description
    model_films = _model_films(records, art.metadata, split)
    if model_films:
        data_info["model_films"] = model_films
    try:
        report = build_report(
            y_true=y_true, probs=probs, rows=rows, model=model_info, data=data_info, run=run_info,
            operating_points=operating_points if isinstance(operating_points, dict) else None,
            n_resamples=args.bootstrap, seed=args.seed, comparisons=comparisons, decision=art.operating_point,
            stability=stability, faithfulness=faithfulness, skipped=man.problems,
        )
        written = write_report(report, y_true, probs, rows, args.out, data_root=root)
    except ValueError as exc:
        return _error(str(exc))
    except OSError as exc:
        return _error(f"cannot write the report to {args.out}: {exc}")

    m, iv = report["metrics"], report["confidence_intervals"]["intervals"]

    def show(label: str, value: float | None, key: str, pct: bool = True) -> None:
        lo, hi = iv.get(key, [None, None])
        if value is None:
            print(f"  {label:<36} n/a")
        elif pct:
            print(f"  {label:<36} {100 * value:5.1f} %  (95 % CI {100 * lo:.1f}–{100 * hi:.1f})")
        else:
            print(f"  {label:<36} {value:.3f}    (95 % CI {lo:.3f}–{hi:.3f})")

    where = f"{split}: {split_description}" if split_description else split
    print(f"{art.name} {art.version} on {data_path.name} [{where}]: {len(y_true)} images, "
          f"{report['data']['n_patients']} patients, {len(failures)} not readable"
          + (f", {len(man.problems)} entries of the data skipped (listed in the report)" if man.problems else ""))
    show("3-class accuracy", m["three_class"]["accuracy"], "accuracy")
    show("3-class balanced accuracy", m["three_class"]["balanced_accuracy"], "balanced_accuracy")
    show("3-class macro-F1", m["three_class"]["macro_f1"], "macro_f1", pct=False)
    for proto, title in (("pneumonia_vs_normal", "pneumonia vs normal"), ("bacterial_vs_viral", "bacterial vs viral")):
        b = m["binary"][proto]
        if not b.get("n"):
            continue
        for metric in ("accuracy", "sensitivity", "specificity"):
            show(f"{title} {metric}", b[metric], f"{proto}.{metric}")
        show(f"{title} AUROC", b["auroc"], f"{proto}.auroc", pct=False)
    show("ECE (15 bins)", m["calibration"]["ece"], "ece", pct=False)
    band = report.get("review_band")
    if band:
        kept = band["not_flagged"]
        print(f"review band: {band['n_review']} films flagged for review ({100 * band['review_rate']:.1f} %: "
              f"{band['by_reason']['pneumonia_vs_normal']['n']} pneumonia vs normal, "
              f"{band['by_reason']['bacterial_vs_viral']['n']} bacterial vs viral borderline)")
        for label, value in (("3-class accuracy, flagged = error", band["review_as_error"]["accuracy"]),
                             (f"3-class accuracy, {kept['n']} not flagged", kept["accuracy"])):
            print(f"  {label:<36} " + ("n/a" if value is None else f"{100 * value:5.1f} %"))
    dd = report["deduplicated"]
    if dd["n_duplicate_groups"]:
        m, iv = dd["metrics"], dd["confidence_intervals"]["intervals"]
        print(f"deduplicated: {dd['n_duplicate_groups']} groups of byte-identical files counted once: "
              f"{dd['n_images']} images, {dd['n_patients']} bootstrap units")
        show("3-class accuracy", m["three_class"]["accuracy"], "accuracy")
        pn = m["binary"]["pneumonia_vs_normal"]
        for metric in ("sensitivity", "specificity"):
            show(f"pneumonia vs normal {metric}", pn[metric], f"pneumonia_vs_normal.{metric}")
        show("pneumonia vs normal AUROC", pn["auroc"], "pneumonia_vs_normal.auroc", pct=False)
    else:
        print("deduplicated: no two scored files are byte-identical")
    if stability is not None and stability["n_images"]:
        print(f"stability under {len(stability['perturbations'])} benign perturbations "
              f"({stability['n_images']} images): label flips, |ΔP(pneumonia)| p95")
        for name, v in stability["perturbations"].items():
            extra = (f"   contradicting {100 * v['contradicting_rate']:4.1f} % ({v['n_contradicting']})"
                     if "contradicting_rate" in v else "")
            print(f"  {name:<14} {100 * v['flip_rate']:5.1f} % ({v['n_flips']})   {v['abs_dp_p95']:.3f}{extra}")
        print(f"  any of them      {100 * stability['any_flip_rate']:5.1f} %")
        if stability.get("review_band"):
            any_c = stability["review_band"]["any_contradicting_rate"]
            print(f"  contradicted by any of them (review band) {100 * any_c:5.1f} %")
    if faithfulness is not None:
        print(f"heatmap deletion curves ({faithfulness['films']} images): AUC, lower = more faithful")
        for src, e in faithfulness["maps"].items():
            vs = "" if src == "random" else (f"  map − random {e['auc_minus_random']['mean']:+.3f}, beats random on "
                                             f"{100 * e['share_below_random']:.0f} % of films")
            print(f"  {src:<9} {e['auc']['mean']:.3f}{vs}")
    gate = report.get("gate") or {}
    if gate.get("n_read"):
        counts = ", ".join(f"{n} {status}" for status, n in gate["counts"].items())
        listed = "; listed in the report" if gate["flagged"] else ""
        print(f"input gate: {counts} ({100 * gate['flagged_fraction']:.1f} % warned or refused{listed})")
    print(f"report: {written['report_md']}")
    print(f"metrics: {written['metrics_json']}")
    return 1 if failures or man.problems else 0
