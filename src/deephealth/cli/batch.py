"""Score a whole archive into Parquet with Ray Data: resumable, idempotent, local or on a cluster.

SOURCE: a folder (searched recursively, as predict does), a CSV or Parquet manifest (a "path"
column; relative entries are relative to --root, default the manifest's folder), a glob pattern,
or files. Every image goes through the same readers, input gate, preprocessing, model and
operating point as "deephealth predict"; each worker loads the model once.

RESULTS: a folder of Parquet parts (read it with pandas.read_parquet(RESULTS) or
deephealth.batch.load_results), one row per input with the fields of "predict --format json"
(source, ok, label, label_index, probabilities, logits, decision, suitability status, reasons and
scores, warnings, image, error, model name, version and SHA-256) plus decision_sha256 (the
fingerprint of the decision rule), content_sha256 and scored_at. The boolean column "review" marks
borderline films (in the model's review band: so close to a decision that a benign change of the
film could change the label; have them reviewed), for filtering without parsing the decision JSON,
and "review_reason" says why (null when the film is not flagged or was not classified).
A file that cannot be read is a row with its error; the others still finish.

Resume: run the same command again. Inputs whose result is already in RESULTS for the same content
(SHA-256 of the file), the same model and the same decision rule (temperature and operating point,
review band included, from the model's metadata.json) are skipped; only what is missing or was made
otherwise is scored, and the summary says how many were scored again for another model or rule. An
interrupted run (Ctrl-C, a killed worker) keeps every part already written. Rows are never
overwritten: a run's results are the rows of its own model and decision rule (load_results with
model_sha256= and decision_sha256=, which the summary prints when the folder holds newer rows of
another model, e.g. after runs with model A, then B, then A again: the third run skips every film
and its answers are A's rows, not B's newer ones).

Engine: without --address a local Ray instance is started (or the one RAY_ADDRESS names);
--address joins a cluster (see docs/scale.md). --workers model replicas with --threads ONNX
Runtime threads each; by default one worker per CPU with one thread each, never more
workers x threads than CPUs.

Exit status: 0 every input classified, 1 some rows of this run are errors or refusals, 2 usage,
model or engine error, 130 interrupted. Decision support only, not a diagnosis.
"""

from __future__ import annotations

import argparse
import logging
import sys

from deephealth.inputs import collect_inputs

PROGRESS_MIN_FILES = 50
"""Show a progress bar (on an interactive stderr) from this many inputs on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="folder (recursive), CSV/Parquet manifest, glob pattern or files")
    parser.add_argument("--out", required=True, metavar="RESULTS",
                        help="results folder of Parquet parts (local path or URI such as s3://bucket/results)")
    parser.add_argument("--workers", type=int, default=None, metavar="N",
                        help="model replicas (default: one per CPU of the Ray cluster)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime threads per worker (default: CPUs // workers)")
    parser.add_argument("--address", default=None, metavar="ADDR",
                        help="Ray cluster to join (e.g. ray://head:10001); default: a local Ray instance")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="model folder (default: $DEEPHEALTH_MODEL_DIR or the bundled model)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per network run (default 32)")
    parser.add_argument("--root", metavar="DIR", default=None,
                        help="folder that a manifest's relative paths are relative to (default: the manifest's folder)")
    parser.add_argument("--allow-unsuitable", action="store_true",
                        help="classify images the input gate refuses anyway (the flags are kept in the output)")
    parser.add_argument("--retry-errors", action="store_true",
                        help="score again inputs whose stored result is an error (e.g. a file that was unreadable)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")


def _counts(counter) -> str:
    return ", ".join(f"{k} {v}" for k, v in sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))) or "-"


def run(args: argparse.Namespace) -> int:
    """Score the inputs into RESULTS and print a summary. Exit 0 all ok, 1 some errors, 2 usage error, 130 interrupted."""
    from deephealth.batch import BatchError, require_ray, run_batch
    from deephealth.labels import INTENDED_USE

    try:  # before anything is printed or collected: a missing extra is the first thing to say
        require_ray()
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    from deephealth.inputs import skipped_line

    skipped: list[str] = []
    files, missing = collect_inputs(args.sources, root=args.root, skipped=skipped)
    for arg, reason in missing:
        print(f"error: {arg}: {reason}", file=sys.stderr)
    if skipped:  # as predict: files in the folders whose suffix is not an image's are said, not read
        print(skipped_line(skipped), file=sys.stderr)
    if not files:
        print("error: no inputs to score", file=sys.stderr)
        return 2
    if args.verbose < 1:  # Ray Data logs every execution at INFO (its logging is configured on import)
        import ray.data  # noqa: F401
        for name in ("ray", "ray.data", "ray.data._internal.execution.streaming_executor"):
            logging.getLogger(name).setLevel(logging.WARNING)

    bar = None
    if not args.no_progress and len(files) >= PROGRESS_MIN_FILES and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="img", desc="batch", file=sys.stderr)
        except ImportError:
            bar = None

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.update(done - bar.n)

    print(f"scoring {len(files)} input(s) into {args.out}", file=sys.stderr)
    try:
        summary = run_batch(
            files, args.out, model_dir=args.model, workers=args.workers, threads=args.threads,
            address=args.address, allow_unsuitable=args.allow_unsuitable, batch_size=args.batch_size,
            retry_errors=args.retry_errors, progress=progress,
        )
    except BatchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if bar is not None:
            bar.close()

    s = summary
    print(f"{s.total} input(s): {s.scored} scored by this run, {s.skipped} already in {args.out} (skipped), "
          f"{s.errors} error(s) or refusal(s)")
    if s.other_model:
        print(f"{s.other_model} result(s) in {args.out} were made by another model (another model.onnx) "
              "and are scored again")
    if s.other_rule:
        print(f"{s.other_rule} result(s) in {args.out} were made with another decision rule (operating point, "
              "review band, temperature or input-gate thresholds in metadata.json) and are scored again")
    if s.newer_elsewhere:  # model A, then B, then A: the folder's newest rows are not this run's answers
        print(f"{s.newer_elsewhere} input(s) skipped by this run have a newer row in {args.out} made by another model "
              "or decision rule; this run's results are its own model's rows: deephealth.batch.load_results("
              f"{str(args.out)!r}, model_sha256={s.model_sha256!r}, decision_sha256={s.decision_sha256!r})")
    if s.scored:
        print(f"labels: {_counts(s.labels)}")
        if s.review:
            print(f"flagged for review (borderline): {s.review}")
        print(f"input gate: {_counts(s.gate)}")
    if s.workers:
        skipped = f" ({s.skipped} skipped, already stored)" if s.skipped else ""
        print(f"{s.workers} worker(s) x {s.threads} thread(s): {s.scored} scored{skipped} in {s.seconds:.1f} s "
              f"({s.images_per_second:.1f} images scored/s; Ray start {s.startup_seconds:.1f} s); "
              f"{s.parts} part(s) written")
    if s.interrupted:
        print(f"interrupted: the {s.scored} rows scored are saved; run the same command again to finish")
    print(INTENDED_USE)
    for msg in s.error_messages:
        print(f"error: {msg}", file=sys.stderr)
    if s.errors > len(s.error_messages):
        print(f"... and {s.errors - len(s.error_messages)} more error rows in {args.out}", file=sys.stderr)
    if s.interrupted:
        return 130
    return 1 if s.errors or missing else 0
