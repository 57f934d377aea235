"""Export a training run to a model folder: model.onnx + metadata.json + model_summary.txt.

The ONNX file has a dynamic batch axis, input "image" (N, 1, S, S) float32 and outputs "logits"
(N, 3) and "cam" (N, 3, h, w) class activation maps. The export is checked (ONNX checker, PyTorch
vs ONNX Runtime on real dataset images) before metadata.json is written. Needs the [train] extra
(except --review-band-only, below).

--quantize ships an int8 model instead (7-bit weights; up to 2x faster on CPU), compared with the
float32 network on the same images.

The input gate (docs/gate.md) is fitted after the checks on the run's own patient-grouped split
(gate.npz + metadata.json "gate"); --no-gate skips it. --gate-only refits just the gate of the
existing model folder --out (its ONNX file and weights stay as they are), with the split its
metadata.json records: deephealth export --gate-only --out src/deephealth/models/deephealth-cxr3

The evidence map (docs/evidence.md) is added to float32 exports: the same weights with the last
stage dilated, a 12 x 12 map at 192 px computed only when a heatmap is asked for (--no-evidence
skips it). --evidence-only adds or rebuilds it in the existing model folder --out from its
weights.pt (model.onnx's shipped outputs are checked bit-identical, metadata.json updated):
deephealth export --evidence-only --out src/deephealth/models/deephealth-cxr3

The review band (docs/stability.md) is fitted last, on the run's validation films and their benign
perturbations scored through the exported model: films this close to the operating point are
flagged "review" (operating_point.review_band in metadata.json); --no-review-band skips it, and
--review-band-only fits it for the existing model folder --out, and needs only the serving stack
(no [train] extra) and the dataset:
deephealth export --review-band-only --out src/deephealth/models/deephealth-cxr3

Example: deephealth export runs/resnet18 --out src/deephealth/models/deephealth-cxr3 --version 1.0.0
"""

from __future__ import annotations

import argparse
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the command's options."""
    parser.add_argument("run", metavar="RUN", nargs="?", default=None,
                        help="training run folder (runs/<name>/, uses best.pt) or a checkpoint file (not with --gate-only)")
    parser.add_argument("--out", required=True, metavar="DIR", help="model folder to write")
    parser.add_argument("--name", default=None, help="model name (default: deephealth-cxr3)")
    parser.add_argument("--version", dest="model_version", default=None, metavar="V",
                        help="model version (default: the package version + the run's name, e.g. 0.3.0+lite0.aa)")
    parser.add_argument("--checkpoint", default=None, metavar="FILE", help="checkpoint to use instead of RUN/best.pt")
    parser.add_argument("--quantize", action="store_true",
                        help="ship an int8 model (ONNX Runtime static quantization, calibrated on 64 training "
                        "images, 7-bit weights so it answers the same on CPUs with and without VNNI; up to 2x "
                        "faster on CPU); score it with deephealth evaluate before release")
    parser.add_argument("--no-gate", action="store_true",
                        help="do not fit the input gate (gate.npz); the model then runs image checks only")
    parser.add_argument("--gate-only", action="store_true",
                        help="refit only the input gate of the existing model folder --out, on the split its "
                        "metadata.json records (about 1-2 minutes)")
    parser.add_argument("--no-review-band", action="store_true",
                        help="do not fit the review band (borderline films flagged for review; docs/stability.md)")
    parser.add_argument("--review-band-only", action="store_true",
                        help="fit only the review band of the existing model folder --out, on the validation split "
                        "its metadata.json records (about 1-2 minutes)")
    parser.add_argument("--review-quantile", type=float, default=None, metavar="Q",
                        help="quantile of the benign-change score shifts that sets the review band's half-widths, "
                        "in (0, 1) (default 0.9, chosen on validation: docs/stability.md); with the export or "
                        "--review-band-only")
    parser.add_argument("--no-evidence", action="store_true",
                        help="do not add the evidence map (the finer heatmap, docs/evidence.md)")
    parser.add_argument("--evidence-only", action="store_true",
                        help="add or rebuild only the evidence map of the existing model folder --out, from its "
                        "weights.pt (seconds)")


def run(args: argparse.Namespace) -> int:
    """Export; prints the folder, checksum and parity figures. Exit 0 on success, 2 on failure.

    ``--review-band-only`` needs no PyTorch (the serving stack and the dataset); every other mode
    needs the ``[train]`` extra and says so when it is missing.
    """
    if sum(map(bool, (args.gate_only, args.evidence_only, args.review_band_only))) > 1:
        print("export failed: give only one of --gate-only, --evidence-only and --review-band-only", file=sys.stderr)
        return 2
    if args.review_quantile is not None and not 0.0 < args.review_quantile < 1.0:
        print(f"export failed: --review-quantile must be in (0, 1), got {args.review_quantile:g}", file=sys.stderr)
        return 2
    if args.review_quantile is not None and (args.no_review_band or args.gate_only or args.evidence_only):
        print("export failed: --review-quantile sets the review band: not with --no-review-band, --gate-only "
              "or --evidence-only", file=sys.stderr)
        return 2
    if args.review_band_only:
        return _refit_review_band(args)
    try:
        from deephealth.training.export import ExportError, export_run
    except ImportError as exc:
        print(f"deephealth export needs the [train] extra (PyTorch, timm, onnx): {exc}; only --review-band-only "
              "runs without it", file=sys.stderr)
        return 2
    import json

    from deephealth.artifact import METADATA_FILE

    if args.gate_only:
        return _refit_gate(args)
    if args.evidence_only:
        return _add_evidence(args)
    if args.run is None:
        print("export failed: give the training run folder or checkpoint (RUN)", file=sys.stderr)
        return 2
    try:
        out = export_run(args.run, args.out, name=args.name, version=args.model_version, checkpoint=args.checkpoint,
                         quantize=args.quantize, gate=not args.no_gate, evidence=not args.no_evidence,
                         review_band=not args.no_review_band, review_quantile=args.review_quantile)
    except (ExportError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    meta = json.loads((out / METADATA_FILE).read_text())
    check = meta["export_check"]
    onnx_meta = meta["onnx"]
    print(f"exported {meta['name']} {meta['version']} to {out}")
    print(f"  {onnx_meta['file']}: {onnx_meta['bytes'] / 1e6:.1f} MB, sha256 {onnx_meta['sha256']}")
    print(f"  parameters: {meta['summary']['parameters']:,}; input {meta['summary']['input_shape']}, "
          f"outputs {meta['summary']['output_shapes']}")
    print(f"  temperature: {meta['temperature']:.4g}")
    if "real_inputs" in check:  # a float32 graph checked against PyTorch (not for quantisation-aware training)
        print(f"  check: ONNX checker passed; PyTorch vs ONNX Runtime on {len(check['real_inputs'])} dataset images "
              f"+ {check['random_inputs']} random inputs: max |diff| logits {check['logits_max_abs_diff']:.2g} "
              f"(atol {check['logits_atol']:g}), cam {check['cam_max_abs_diff']:.2g} (atol {check['cam_atol']:g})")
    if meta.get("evidence"):
        _print_evidence(meta["evidence"])
    elif not args.no_evidence:
        print(_evidence_not_added(meta))
    band = (meta.get("operating_point") or {}).get("review_band")
    if band:
        _print_review_band(band)
    elif not args.no_review_band:
        print("  review band: not fitted (no dataset or no operating point); no film is flagged for review")
    gate = meta.get("gate")
    if gate:
        _print_gate(gate)
    elif not args.no_gate:
        print("  input gate: not fitted (no dataset found); the model runs image checks only")
    if "int8" in check:
        q = check["int8"]
        ref = "the fake-quantised PyTorch network (QAT)" if q.get("reference") else "float32 PyTorch"
        print(f"  int8: probabilities within {q['prob_max_abs_diff']:.3f} of {ref} on {q['images']} dataset "
              f"images (limit {q['prob_atol']:g}), top-1 agreement {q['top1_agreement']:.0%}; "
              "score it with deephealth evaluate before release")
    return 0


def _print_gate(gate: dict) -> None:
    t, v = gate["thresholds"], gate["validation"]
    residual = f", feature residual > {t['residual_warn']:.2f}" if "residual_warn" in t else ""
    print(f"  input gate: {gate['file']} (sha256 {gate['sha256'][:12]}...), fitted in {gate['fit_seconds']:.0f} s; "
          f"warn if feature distance > {t['mahalanobis_warn']:.2f}{residual} or P(frontal) < {t['p_frontal_warn']:.3f}; "
          f"{100 * v['flagged_fraction']:.1f} % of {v['films']} validation films flagged")


def _refit_in_place(args: argparse.Namespace, option: str, conflicts: bool, fit: Any, what: str,
                    missing: str, show: Any) -> int:
    """``--gate-only`` / ``--review-band-only``: fit ``what`` of the model folder ``--out`` on its recorded split.

    ``fit(model_dir, training_config)`` returns the new metadata entry, or ``None`` when ``missing``
    (a reason) applies; ``show`` prints the entry. Exit 0 on success, 2 with one line on failure.
    """
    from deephealth.artifact import ExportError, ModelArtifact, ModelArtifactError

    if args.run is not None or conflicts:
        print(f"export failed: {option} takes only --out (the model folder)", file=sys.stderr)
        return 2
    try:
        art = ModelArtifact.load(args.out)
        print(f"{option}: fitting {what.split(' ', 1)[1]} of {art.name} {art.version} on the split its "
              "metadata.json records (1-3 minutes)...", file=sys.stderr, flush=True)
        entry = fit(args.out, (art.metadata.get("training") or {}).get("config") or {})
    except (ModelArtifactError, ExportError, ValueError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    if entry is None:
        print(f"export failed: {missing}", file=sys.stderr)
        return 2
    print(f"{what} of {art.name} {art.version} in {args.out}")
    show(entry)
    return 0


def _refit_gate(args: argparse.Namespace) -> int:
    """``--gate-only``: refit the gate of the model folder ``--out`` on the split its metadata records."""
    from deephealth.training.export import fit_run_gate

    return _refit_in_place(args, "--gate-only", bool(args.quantize or args.no_gate or args.checkpoint), fit_run_gate,
                           "refitted the input gate", "no dataset found to fit the input gate on", _print_gate)


def _print_review_band(band: dict) -> None:
    v = band.get("validation") or {}
    lo, hi = band["pneumonia_probability_range"]
    blo, bhi = band["bacterial_share_range"]
    print(f"  review band: P(pneumonia) {lo:.3f}-{hi:.3f}, bacterial share {blo:.3f}-{bhi:.3f} "
          f"(quantile {band['quantile']:g} of the benign-change shifts); "
          + (f"{100 * v['review_rate']:.1f} % of {v['films']} validation films flagged, contradicting flips at most "
             f"{100 * v['max_contradicting_rate']:.1f} % (label flips without the band: at most "
             f"{100 * v['max_label_flip_rate']:.1f} %)" if v else ""))


def _refit_review_band(args: argparse.Namespace) -> int:
    """``--review-band-only``: fit the review band of the model folder ``--out`` on its recorded split.

    Serving stack only (:mod:`deephealth.review_band_fit`): no PyTorch, no ``[train]`` extra.
    """
    from deephealth.review_band_fit import fit_run_review_band

    return _refit_in_place(args, "--review-band-only",
                           bool(args.quantize or args.no_gate or args.checkpoint or args.no_review_band),
                           lambda d, c: fit_run_review_band(d, c, quantile=args.review_quantile, progress=True), "fitted the review band",
                           "no dataset or no operating point to fit the review band on", _print_review_band)


def _evidence_not_added(meta: dict) -> str:
    """The summary line of an export made without the evidence map although it was asked for.

    Args:
        meta: the exported model's ``metadata.json`` (``onnx.precision``, and for an int8 graph
            ``onnx.quantization.tool``, which names ``deephealth.training.qat`` for a
            quantisation-aware trained run).

    Returns:
        The line, indented like the rest of the summary, without a newline: the reason for an int8
        graph (the evidence map shares float32 weights, which an int8 export has none of; the
        exporter only logs this at INFO), else a pointer to the warning the exporter logged.
    """
    onnx_meta = meta.get("onnx") or {}
    if onnx_meta.get("precision") == "int8":
        tool = str((onnx_meta.get("quantization") or {}).get("tool", ""))
        how = "a quantisation-aware trained run" if tool.startswith("deephealth.training.qat") else "--quantize"
        reason = f"{how} exports an int8 graph, which has no float32 weights for the evidence map to share"
    else:
        reason = "see the warning above"
    return f"  evidence map: not added ({reason}); heatmaps use the class activation map"


def _print_evidence(ev: dict) -> None:
    c = ev["check"]
    agree = c.get("dilated_vs_shipped_argmax_agreement_real")
    tail = "" if agree is None else (f"; dilated vs shipped logits on the dataset images: max |diff| "
                                     f"{c['dilated_vs_shipped_logits_max_abs_diff_real']:.3f}, label agreement {agree:.0%}")
    print(f"  evidence map: output {ev['output']} {ev['shape']} (CAM {ev['cam_shape']}), "
          f"{ev['merge']['nodes_in_branch']} nodes computed only on request, "
          f"{ev['merge']['initializers_added']} weights added; shipped outputs bit-identical{tail}")


def _add_evidence(args: argparse.Namespace) -> int:
    """``--evidence-only``: add or rebuild the evidence map of the model folder ``--out``."""
    from deephealth.artifact import ModelArtifactError
    from deephealth.training.evidence import EvidenceError, add_evidence_to_dir

    if args.run is not None or args.quantize or args.no_gate or args.checkpoint or args.no_evidence:
        print("export failed: --evidence-only takes only --out (the model folder)", file=sys.stderr)
        return 2
    try:
        ev = add_evidence_to_dir(args.out)
    except (ModelArtifactError, EvidenceError, ValueError, OSError) as exc:
        print(f"export failed: {exc}", file=sys.stderr)
        return 2
    print(f"added the evidence map to {args.out}")
    _print_evidence(ev)
    return 0
