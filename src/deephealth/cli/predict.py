"""Classify chest X-rays: 0 no pneumonia (normal), 1 bacterial pneumonia, 2 viral pneumonia.

PATH may be files (any format the readers accept: JPEG, PNG, TIFF, DICOM...), folders (searched
recursively for image files: .jpg .jpeg .png .tif .tiff .bmp .gif .webp .dcm .dicom and files
without an extension, which may be DICOM), glob patterns ("scans/**/*.dcm") and CSV or Parquet
manifests (a "path" column; relative entries are relative to the manifest's folder). A file that
cannot be read is reported with its reason and the others are still classified. For a whole
archive (resumable, Parquet results, several workers or a Ray cluster) use "deephealth batch".

Output: a table (default), or --format json / csv on stdout (the decision-support notice then goes
to stderr so the output stays parseable). Probabilities are calibrated (temperature scaling).
The three formats carry the same fields under the same names (JSON nests some, CSV
flattens them): source (the file, as in the API); label and label_index; p_normal, p_bacterial,
p_viral (JSON probabilities.*); pneumonia_probability, threshold, target_sensitivity and rule (JSON
decision.*: how the label was decided, which is not simply the largest probability when the model
has an operating point; the table states the rule once, under the rows); review and review_reason
(JSON decision.*: true when the film lies in the model's review band, so close to a decision that a
benign change of the film could change the label; the label is kept but is no reliable answer:
read the film without relying on it); gate and gate_reasons
(JSON suitability.status and .reasons); warnings; error or skipped (why a file was not classified,
or not read); model (JSON: name, version, sha256); intended_use, the decision-support notice's
text, in every JSON record and CSV row (the CSV's last column), as the REST API's response carries
it (the notice still goes to stderr). The table's "review" column says yes for a film in the model's review band (borderline:
read it without relying on the label); its last
column, "notes", holds what a reader should see next to a row: the review reason of a borderline
film, the gate's reasons and the warnings of a classified film, the reasons of a refused one, or
the error of a file that could not be read; the summary counts the films flagged for review.

Files inside folders with another suffix (notes.txt, report.pdf) are skipped, and said so: a
"skipped ..." line on stderr, a record with "skipped" in JSON and CSV, a count in the table's
summary. Name such a file directly to read it anyway.

--heatmap-dir DIR writes, for each image, a PNG of the class activation heatmap of the predicted
class over the image. --dicom-out DIR writes, for each image, a DICOM Comprehensive SR with the
coded finding and a Secondary Capture of the heatmap (needs the [pacs] extra), named
SR_<name>_<UID>.dcm and SC_<name>_<UID>.dcm: <name> is the input's file name without its suffix,
made filesystem-safe (accents dropped, other characters than letters, digits, - and . become _, at
most 40 characters), <UID> the object's SOP Instance UID; a DICOM input's patient and study are
copied, any other input gets a generated study marked "no source study".

Input gate: every image is checked first (is it a frontal chest radiograph the model can be trusted
on?). The "gate" column says accept, warn (classified, reasons shown) or refuse (not classified,
reported as an error line with the reasons). --allow-unsuitable classifies refused images anyway and
keeps the flags. JSON rows carry the full "suitability" object (status, reasons, scores).

Exit status: 0 every file classified, 1 some failed or were refused, 2 the model could not be loaded.
Decision support only, not a diagnosis.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import sys
import time
from pathlib import Path

from deephealth.cli._audit import close_for_cli, open_for_cli
from deephealth.inputs import (  # noqa: F401  (one input policy, shared with batch and adapt; names re-exported)
    SKIP_REASON,
    collect_inputs,
    skipped_in_folders,
    skipped_line,
)
from deephealth.labels import INTENDED_USE
from deephealth.readers.formats import FILE_SUFFIXES as FOLDER_SUFFIXES  # noqa: F401

# FOLDER_SUFFIXES: suffixes picked up inside folders (plus files without a suffix, which may be
# DICOM), from the readers' one format policy (see deephealth.inputs).
PROGRESS_MIN_FILES = 50
"""Show a progress bar (on an interactive stderr) from this many files on."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("paths", nargs="+", metavar="PATH",
                        help="image files, folders (recursive), glob patterns or CSV/Parquet manifests")
    parser.add_argument("--format", choices=("table", "json", "csv"), default="table", help="output format (default: table)")
    parser.add_argument("--heatmap-dir", metavar="DIR", default=None,
                        help="write a heatmap overlay PNG per image into DIR")
    parser.add_argument("--dicom-out", metavar="DIR", default=None,
                        help="write a DICOM SR and a Secondary Capture heatmap per image into DIR, as "
                             "SR_<name>_<UID>.dcm and SC_<name>_<UID>.dcm (<name>: the input's file name, "
                             "filesystem-safe; see above) (needs deephealth[pacs])")
    parser.add_argument("--model", metavar="DIR", default=None,
                        help="model folder (default: $DEEPHEALTH_MODEL_DIR or the bundled model)")
    parser.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per network run (default 32)")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="ONNX Runtime threads (default: all CPU cores)")
    parser.add_argument("--alpha", type=float, default=0.4, help="heatmap opacity in the overlays, 0-1 (default 0.4)")
    parser.add_argument("--no-progress", action="store_true", help="never show a progress bar")
    parser.add_argument("--audit", action="store_true",
                        help="record every prediction in the audit trail ($DEEPHEALTH_DATABASE_URL, needs deephealth[audit]); "
                        "only this option turns it on here: DEEPHEALTH_AUDIT is deephealth serve's setting")
    parser.add_argument("--allow-unsuitable", action="store_true",
                        help="classify images the input gate refuses anyway (the flags are kept in the output)")


def _heatmap_name(path: str, used: set[str]) -> str:
    stem = Path(path).stem or "image"
    name = f"{stem}_heatmap.png"
    k = 2
    while name in used:
        name = f"{stem}_{k}_heatmap.png"
        k += 1
    used.add(name)
    return name


def _gate(r: dict) -> tuple[str, list[str]]:
    """(status, reasons) of a result row's input-gate verdict; ("-", []) when there is none."""
    s = r.get("suitability")
    return (s["status"], list(s["reasons"])) if s else ("-", [])


TABLE_HEADERS = ["source", "label", "label_index", "p_normal", "p_bacterial", "p_viral", "pneumonia_probability",
                 "threshold", "gate", "review", "notes"]
CSV_HEADERS = ["source", "ok", "label", "label_index", "p_normal", "p_bacterial", "p_viral", "pneumonia_probability",
               "threshold", "target_sensitivity", "rule", "review", "review_reason", "warnings", "gate", "gate_reasons",
               "error", "skipped", "model", "intended_use"]
WARNINGS_WIDTH = 72
"""The table's last column (notes: review reason, gate reasons, warnings, errors) wraps at this many characters,
one note a line."""


def summary_counts(rows: list[dict]) -> str:
    """The table's summary of what became of the inputs (skipped rows are not inputs), e.g.
    ``"6 input(s): 4 classified (1 with an input-gate warning), 2 not classified (1 refused by the
    input gate, 1 error)"``.

    Classified films are broken down by the input gate's verdict (``warn``, or ``refuse`` overridden
    by ``--allow-unsuitable``); films not classified into those the gate refused and errors (a file
    that cannot be read or found, an output that cannot be written). A breakdown is shown only
    when it has a non-zero count.
    """
    inputs = [r for r in rows if not r.get("skipped")]
    ok = [r for r in inputs if r["ok"]]
    n_bad = len(inputs) - len(ok)
    warned = sum(_gate(r)[0] == "warn" for r in ok)
    overridden = sum(_gate(r)[0] == "refuse" for r in ok)
    refused = sum(_gate(r)[0] == "refuse" for r in inputs if not r["ok"])
    errors = n_bad - refused
    good, bad = [], []
    if warned:
        good.append(f"{warned} with an input-gate warning")
    if overridden:
        good.append(f"{overridden} refused by the input gate, classified anyway: --allow-unsuitable")
    if refused:
        bad.append(f"{refused} refused by the input gate")
    if errors:
        bad.append(f"{errors} error" if errors == 1 else f"{errors} errors")
    return (f"{len(inputs)} input(s): {len(ok)} classified" + (f" ({', '.join(good)})" if good else "")
            + f", {n_bad} not classified" + (f" ({', '.join(bad)})" if bad else ""))


def _decision(r: dict) -> dict:
    """The row's ``decision`` object, or an empty dict (errors, skipped files)."""
    return r.get("decision") or {}


def _without_source(msg: str, source: str) -> str:
    """An error message without its leading ``"<source>: "`` (the table names the file already)."""
    prefix = f"{source}: "
    return msg[len(prefix):] if msg.startswith(prefix) else msg


def _wrap(items: list[str], width: int) -> list[str]:
    """Each item on its own line(s), wrapped at ``width`` characters; ``[""]`` for none."""
    import textwrap

    lines: list[str] = []
    for item in items:
        lines.extend(textwrap.wrap(item, width, break_long_words=False, break_on_hyphens=False) or [""])
    return lines or [""]


def display_width(text: str) -> int:
    """Columns ``text`` takes in a terminal: East Asian wide/fullwidth characters (W, F) count 2,
    combining marks 0, everything else 1 (``unicodedata``; no dependency on a wcwidth package).

    Args:
        text: any string.

    Returns:
        The width in terminal columns (an ``int`` >= 0). Never raises.
    """
    import unicodedata

    return sum(0 if unicodedata.combining(ch) else 2 if unicodedata.east_asian_width(ch) in "WF" else 1
               for ch in text)


def _pad(text: str, width: int, right: bool = False) -> str:
    """``text`` padded with spaces to ``width`` display columns (:func:`display_width`), right-aligned if ``right``."""
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def _fmt_table(rows: list[dict]) -> str:
    """The human-readable table: one row per input (skipped files only in the summary), the
    notes column (gate reasons and warnings, or the error) wrapped at :data:`WARNINGS_WIDTH`, one
    note a line. Columns are padded by display width (:func:`display_width`), so a file name with
    CJK (wide) characters keeps the columns aligned in a terminal."""
    body: list[tuple[list[str], list[str]]] = []  # (cells before notes, note lines)
    for r in rows:
        if r.get("skipped"):
            continue
        status, reasons = _gate(r)
        if r["ok"]:
            p = r["probabilities"]
            d = _decision(r)
            pp, tau = d.get("pneumonia_probability"), d.get("threshold")
            cells = [r["source"], r["label"], str(r["label_index"]), f"{p['normal']:.3f}", f"{p['bacterial']:.3f}",
                     f"{p['viral']:.3f}", "-" if pp is None else f"{pp:.3f}", "-" if tau is None else f"{tau:.3f}",
                     status, "yes" if d.get("review") else "no"]
            review = [d["review_reason"]] if d.get("review") and d.get("review_reason") else []
            notes = review + reasons + r["warnings"]
        else:
            cells = [r["source"], "REFUSED" if status == "refuse" else "ERROR", *["-"] * 6, status, "-"]
            notes = reasons if status == "refuse" else [_without_source(r["error"], r["source"])]
        body.append((cells, _wrap(notes, WARNINGS_WIDTH)))
    n = len(TABLE_HEADERS) - 1
    width = display_width
    widths = [max(width(TABLE_HEADERS[i]), *(width(c[i]) for c, _ in body)) if body else width(TABLE_HEADERS[i])
              for i in range(n)]
    widths.append(min(WARNINGS_WIDTH, max(width(TABLE_HEADERS[n]), *(width(x) for _, w in body for x in w))
                      if body else width(TABLE_HEADERS[n])))
    right = {2, 3, 4, 5, 6, 7}

    def line(cells: list[str]) -> str:
        out = [_pad(c, w, i in right) for i, (c, w) in enumerate(zip(cells, widths))]
        return "  ".join(out).rstrip()

    lines = [line(TABLE_HEADERS), "  ".join("-" * w for w in widths)]
    for cells, notes in body:
        lines.append(line([*cells, notes[0]]))
        lines.extend(line([""] * n + [more]) for more in notes[1:])
    return "\n".join(lines)


def _fmt_csv(rows: list[dict], model: str) -> str:
    """CSV with :data:`CSV_HEADERS`: one row per input, skipped files included (``skipped`` says why).

    The last column, ``intended_use``, holds :data:`deephealth.labels.INTENDED_USE` in every row (as
    each JSON record's key of that name does), so a saved or re-exported table still says the
    results are decision support, not a diagnosis; it is last so earlier columns keep their positions.

    Args:
        rows: the result rows of :func:`run` (``ok``, ``source``, ``probabilities``... or ``error`` /
            ``skipped``).
        model: ``"<name> <version>"`` of the model, the ``model`` column.

    Returns:
        The CSV text (header line first, ``\n`` line ends, RFC 4180 quoting by :mod:`csv`).
    """
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CSV_HEADERS)

    def num(x: float | None) -> str:
        return "" if x is None else f"{x:.6f}"

    for r in rows:
        status, reasons = _gate(r)
        status = "" if status == "-" else status
        if r["ok"]:
            p = r["probabilities"]
            d = _decision(r)
            w.writerow([r["source"], "true", r["label"], r["label_index"], num(p["normal"]), num(p["bacterial"]),
                        num(p["viral"]), num(d.get("pneumonia_probability")), num(d.get("threshold")),
                        num(d.get("target_sensitivity")), d.get("rule", ""), "true" if d.get("review") else "false",
                        d.get("review_reason") or "", "; ".join(r["warnings"]), status, "; ".join(reasons), "", "",
                        model, INTENDED_USE])
        else:
            w.writerow([r["source"], "false", *[""] * 12, status, "; ".join(reasons), r.get("error", ""),
                        r.get("skipped", ""), model, INTENDED_USE])
    return buf.getvalue()


def _audit(audit, results, artifact, latency_ms: float) -> None:
    """Queue one audit record per result (interface ``cli``; the file's bytes are hashed, never stored;
    a DICOM file's Study and SOP Instance UIDs are read from them; a failed file's error is the reason,
    without its path)."""
    from deephealth.audit import gate_outcome, review_outcome

    for res in results:
        try:
            data = Path(res.source).read_bytes()
        except OSError:
            data = None
        info = getattr(res, "info", None)
        review, review_reason = review_outcome(getattr(res, "decision", None), res.ok)
        audit.record(
            interface="cli", client="local", input_data=data, input_name=res.source,
            input_format=getattr(info, "format", None),
            model_name=artifact.name, model_version=artifact.version, model_sha256=artifact.sha256,
            label=res.label if res.ok else None,
            probabilities=dict(res.probabilities) if res.ok else None,
            gate=gate_outcome(res), review=review, review_reason=review_reason,
            latency_ms=latency_ms, status_code=200 if res.ok else 422,
            reason=None if res.ok else getattr(res, "error", None),
        )


def _write_dicom(res, row: dict, artifact, out_dir: Path, alpha: float) -> dict:
    """Write the SR and Secondary Capture of one prediction; the row gains ``dicom_files`` or becomes an error."""
    from deephealth.dicom_output import build_dicom_result, output_stem, read_source_header

    try:
        result = build_dicom_result(
            res, artifact.name, artifact.version, artifact.sha256, read_source_header(res.source), alpha=alpha
        )
        sr_path, sc_path = result.save(out_dir, output_stem(res.source))
    except OSError as exc:
        return {"source": res.source, "ok": False,
                "error": f"{res.source}: cannot write DICOM output to {out_dir} ({exc.strerror or exc})"}
    except (ValueError, AttributeError, TypeError) as exc:  # highdicom rejects the source's attributes
        return {"source": res.source, "ok": False, "error": f"{res.source}: cannot make the DICOM SR ({exc})"}
    row["dicom_files"] = [str(sr_path), str(sc_path)]
    if not result.has_source:
        row["warnings"] = [*row["warnings"], "no source study: the DICOM output is in a generated study"]
    return row


def run(args: argparse.Namespace) -> int:
    """Classify the inputs and print the results. Exit 0 all ok, 1 some failed, 2 model/usage error."""
    from deephealth.artifact import ModelArtifactError
    from deephealth.inference import PredictionError, Predictor
    from deephealth.rendering import prediction_overlay_png
    from deephealth.results import result_record

    if args.batch_size < 1:
        print(f"--batch-size must be >= 1, got {args.batch_size}", file=sys.stderr)
        return 2
    if not 0.0 <= args.alpha <= 1.0:
        print(f"--alpha must be between 0 and 1, got {args.alpha}", file=sys.stderr)
        return 2
    try:
        predictor = Predictor(args.model, num_threads=args.threads)
    except ModelArtifactError as exc:
        print(f"cannot load the model: {exc}", file=sys.stderr)
        return 2

    dicom_dir = Path(args.dicom_out) if args.dicom_out else None
    if dicom_dir is not None:
        try:
            import highdicom  # noqa: F401
        except ImportError:
            print("--dicom-out needs highdicom: pip install 'deephealth[pacs]'", file=sys.stderr)
            return 2
    audit, ok = open_for_cli(args.audit)
    if not ok:
        return 2
    skipped: list[str] = []
    files, missing = collect_inputs(args.paths, skipped=skipped)
    heat_dir = Path(args.heatmap_dir) if args.heatmap_dir else None
    if heat_dir is not None:
        try:
            heat_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            print(f"cannot create heatmap folder {heat_dir}: {exc.strerror or exc}", file=sys.stderr)
            return 2

    bar = None
    if not args.no_progress and len(files) >= PROGRESS_MIN_FILES and sys.stderr.isatty():
        try:
            from tqdm import tqdm

            bar = tqdm(total=len(files), unit="img", desc="predict", file=sys.stderr, leave=False)
        except ImportError:
            bar = None

    rows: list[dict] = []
    used_names: set[str] = set()
    # Work in chunks so that, with heatmaps, decoded images are not all held in memory at once.
    chunk = max(args.batch_size, 1)
    try:
        for start in range(0, len(files), chunk):
            part = files[start : start + chunk]
            want_heat = heat_dir is not None or dicom_dir is not None
            t0 = time.perf_counter()
            results = predictor.predict_many(part, batch_size=args.batch_size, heatmap=want_heat,
                                             allow_unsuitable=args.allow_unsuitable)
            if audit is not None:  # latency: the chunk's time shared evenly by its images
                _audit(audit, results, predictor.artifact, (time.perf_counter() - t0) * 1000.0 / max(len(part), 1))
            for res in results:
                d = res.to_dict()
                if dicom_dir is not None and not isinstance(res, PredictionError):
                    d = _write_dicom(res, d, predictor.artifact, dicom_dir, args.alpha)
                if heat_dir is not None and not isinstance(res, PredictionError) and d["ok"]:
                    out = heat_dir / _heatmap_name(res.source, used_names)
                    try:
                        out.write_bytes(prediction_overlay_png(res, alpha=args.alpha))
                        d["heatmap_file"] = str(out)
                    except OSError as exc:
                        d = {"source": res.source, "ok": False,
                             "error": f"{res.source}: cannot write heatmap {out} ({exc.strerror or exc})"}
                if not isinstance(res, PredictionError):
                    res.image = res.heatmap = None  # free memory
                rows.append(d)
            if bar is not None:
                bar.update(len(part))
    finally:
        if bar is not None:
            bar.close()
        if audit is not None:
            close_for_cli(audit)
    for arg, reason in missing:
        rows.append({"source": arg, "ok": False, "error": f"{arg}: {reason}"})
    # Files a folder held but whose suffix is not an image's: not read, not a failure, but said.
    rows.extend({"source": f, "ok": False, "skipped": SKIP_REASON} for f in skipped)

    n_skipped = len(skipped)
    n_bad = sum(not r["ok"] for r in rows) - n_skipped
    n_review = sum(bool(_decision(r).get("review")) for r in rows if r["ok"])
    art = predictor.artifact
    model_id = f"{art.name} {art.version}"
    notice = f"Model {model_id}. {INTENDED_USE}"
    if args.format == "json":
        # Every result names the model that produced it (saved results stay traceable) and, as the
        # REST API's response does, says what it is for (a saved file keeps the notice).
        records = [{**result_record(r, art), "intended_use": INTENDED_USE} for r in rows]
        sys.stdout.write(json.dumps(records, indent=2) + "\n")
        print(notice, file=sys.stderr)
    elif args.format == "csv":
        sys.stdout.write(_fmt_csv(rows, model_id))
        print(notice, file=sys.stderr)
    else:
        n_in = len(rows) - n_skipped
        if n_in:
            print(_fmt_table(rows))
            rules = {_decision(r).get("rule") for r in rows if r["ok"]} - {None}
            for rule in sorted(rules):
                print(f"rule: {rule}")
            print()
        skip_note = f"; {n_skipped} other file(s) in the folders skipped (not image suffixes)" if n_skipped else ""
        review_note = f"; {n_review} borderline, flagged for review (see notes)" if n_review else ""
        print(summary_counts(rows) + review_note + skip_note
              + (f"; heatmaps in {heat_dir}" if heat_dir is not None and len(rows) > n_bad else "")
              + (f"; DICOM SR and Secondary Capture in {dicom_dir}" if dicom_dir is not None and len(rows) > n_bad else ""))
        if not predictor.gate.available:
            print("input gate: image checks only (this model has no fitted feature-space gate)")
        print(notice)
    if n_skipped:
        print(skipped_line(skipped), file=sys.stderr)
    for r in rows:
        if not r["ok"] and not r.get("skipped"):
            print(f"error: {r['error']}", file=sys.stderr)
    return 1 if n_bad or len(rows) == n_skipped else 0
