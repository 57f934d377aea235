"""Int8 of 0.3.0 on the validation films: float32 vs post-training int8 (PTQ) vs quantisation-aware training (QAT).

Issue 16 (serving speed). Every graph runs in ONNX Runtime with the Predictor's session settings
(all graph optimisations, ``--threads`` intra-op threads, sequential, 50 us spin). On the 502
films of training's patient-grouped validation split (``val_fraction`` 0.1, ``split_seed`` 0;
never the test split), each graph gets its own temperature (Guo et al., 2017) and operating point
(95 % validation sensitivity, as the release), then:

- accuracy at the operating point, P(pneumonia) AUROC, NLL after temperature;
- decided labels equal to float32 0.3.0's, largest |delta p| of the calibrated class probabilities
  against float32 (each graph at its own temperature), and at float32's temperature;
- the share of films whose decided label changes under a subset of the benign-perturbation family
  (:mod:`deephealth.evaluation.stability`; ``--perturbations``);
- network time for one preprocessed film (batch 1), graphs interleaved in rounds in one process
  (the machine may be shared: the load average is printed);
- which kernels ONNX Runtime actually runs (node types of the optimised graph: ``QLinearConv`` etc.).

Graphs: ``float32`` (0.3.0's weights.pt exported as the CamModel graph, no evidence branch), ``ptq``
(``deephealth export --quantize``'s method: MinMax over 64 training films, 8-bit weights), ``ptq-rr``
(the same with ONNX Runtime's ``reduce_range``: 7-bit weights), and ``qat`` (``--qat DIR``: a model
folder exported from a ``qat: true`` run).

    PYTHONPATH=src python benchmarks/bench_qat.py --qat runs/lite0-qat/model --out runs/bench-qat
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_PERTURBATIONS = "rotate_+3,rotate_-3,shift_right,shift_down,crop_95,gamma_0.9,jpeg_q90"


def session(path: Path, threads: int, optimized_out: Path | None = None) -> Any:
    """An ONNX Runtime session with :class:`deephealth.inference.Predictor`'s settings."""
    import onnxruntime as ort

    from deephealth.inference import DEFAULT_SPIN_US

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1")
    opts.add_session_config_entry("session.intra_op.spin_duration_us", str(DEFAULT_SPIN_US))
    if optimized_out is not None:
        opts.optimized_model_filepath = str(optimized_out)
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def kernel_counts(optimized: Path) -> dict[str, int]:
    """Node types of an ONNX Runtime-optimised graph (the kernels it runs)."""
    import onnx

    ops = [n.op_type for n in onnx.load(str(optimized)).graph.node]
    keys = ("QLinearConv", "QLinearAdd", "Conv", "FusedConv", "QuantizeLinear", "DequantizeLinear",
            "QLinearGlobalAveragePool", "Add", "Clip")
    return {k: ops.count(k) for k in keys if ops.count(k)} | {"nodes": len(ops)}


def run_logits(sess: Any, x: np.ndarray, batch: int = 32) -> np.ndarray:
    """``(N, 3)`` logits of ``x`` ``(N, 1, S, S)`` float32."""
    out = [sess.run(["logits"], {"image": x[i : i + batch]})[0] for i in range(0, len(x), batch)]
    return np.concatenate(out).astype(np.float64)


def build_graphs(weights: Path, qat_dir: Path | None, tmp: Path, pre: Any) -> dict[str, Path]:
    """The float32 and PTQ graphs of ``weights`` (0.3.0's weights.pt), plus the QAT folder's graph."""
    import torch

    from deephealth.training.model import CamModel, build_model
    from deephealth.training.onnx_graph import OPSET, export_onnx
    from deephealth.training.quantize import calibration_inputs, quantize_int8

    state = torch.load(weights, map_location="cpu", weights_only=True)
    model = build_model(**state["model_args"])
    model.load_state_dict(state["model_state"])
    fp32 = tmp / "float32.onnx"
    export_onnx(CamModel(model.eval()).eval(), fp32, pre.input_size, OPSET)
    calib = calibration_inputs(pre)
    graphs = {"float32": fp32}
    graphs["ptq"] = tmp / "ptq.onnx"
    quantize_int8(fp32, graphs["ptq"], calib, reduce_range=False)
    graphs["ptq-rr"] = tmp / "ptq-rr.onnx"
    quantize_int8(fp32, graphs["ptq-rr"], calib, reduce_range=True)
    if qat_dir is not None:
        graphs["qat"] = qat_dir / "model.onnx"
    return graphs


def metrics(logits: np.ndarray, y: np.ndarray, target: float) -> dict[str, Any]:
    """Temperature, operating point and validation figures of one graph's logits."""
    from sklearn.metrics import roc_auc_score

    from deephealth.calibration import decide, fit_operating_point, fit_temperature, nll, softmax

    t = fit_temperature(logits, y)
    probs = softmax(logits, t)
    op = fit_operating_point(probs, y, target)
    pred = decide(probs, op)
    return {
        "temperature": float(t),
        "operating_point": op,
        "accuracy_at_operating_point": float(np.mean(pred == y)),
        "accuracy_argmax": float(np.mean(probs.argmax(1) == y)),
        "pneumonia_auroc": float(roc_auc_score(y > 0, 1.0 - probs[:, 0])),
        "nll": float(nll(logits, y, t)),
        "probs": probs,
        "labels": pred,
    }


def main(argv: list[str] | None = None) -> int:
    from deephealth.calibration import decide, softmax
    from deephealth.cpu import describe as cpu_describe
    from deephealth.evaluation import stability as st
    from deephealth.manifest import grouped_split, scan
    from deephealth.paths import dataset_dir, default_model_dir
    from deephealth.preprocessing import PreprocessConfig, preprocess
    from deephealth.readers import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, metavar="DIR", help="float32 model folder (default: the bundled 0.3.0)")
    ap.add_argument("--qat", default=None, metavar="DIR", help="model folder exported from a qat run")
    ap.add_argument("--out", default="runs/bench-qat", metavar="DIR")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--perturbations", default=DEFAULT_PERTURBATIONS, help="comma-separated ('' = none)")
    ap.add_argument("--rounds", type=int, default=7, help="timing rounds (graphs interleaved)")
    ap.add_argument("--runs", type=int, default=40, help="timed runs per graph per round")
    ap.add_argument("--e2e", type=int, default=0, metavar="N",
                    help="also time Predictor.predict on N validation JPEGs (file to label), the float32 folder "
                    "and --qat's folder interleaved (0: skip)")
    ap.add_argument("--limit", type=int, default=0, help="only about N validation films, every k-th (smoke tests)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)

    model_dir = Path(args.model) if args.model else default_model_dir()
    meta = json.loads((model_dir / "metadata.json").read_text())
    pre = PreprocessConfig.from_dict(meta["preprocessing"])
    cfg = meta["training"]["config"]
    target = float(cfg.get("target_sensitivity") or 0.95)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_describe()}; {os.cpu_count()} logical CPUs; load average {os.getloadavg()}")
    import onnxruntime as ort

    print(f"onnxruntime {ort.__version__}, {platform.platform()}")

    recs = grouped_split(scan(dataset_dir()).split("train"), float(cfg["val_fraction"]), int(cfg["split_seed"]))[1]
    if args.limit:
        recs = recs[:: max(1, len(recs) // args.limit)][: args.limit]
    y = np.array([r.label_index for r in recs])
    films = [st.to_uint8(read_image(r.path).image) for r in recs]
    x = np.stack([preprocess(f.astype(np.float32) / np.float32(255.0), pre) for f in films]).astype(np.float32)
    print(f"validation: {len(recs)} films (patient-grouped, val_fraction {cfg['val_fraction']}, "
          f"split_seed {cfg['split_seed']})")

    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        graphs = build_graphs(model_dir / "weights.pt", Path(args.qat) if args.qat else None, tmp, pre)
        sessions, kernels = {}, {}
        for name, path in graphs.items():
            sessions[name] = session(path, args.threads, tmp / f"{name}.opt.onnx")
            kernels[name] = kernel_counts(tmp / f"{name}.opt.onnx")
        sizes = {name: path.stat().st_size for name, path in graphs.items()}

    results: dict[str, Any] = {}
    for name, sess in sessions.items():
        results[name] = metrics(run_logits(sess, x), y, target)
    ref = results["float32"]
    for name, r in results.items():
        r["labels_equal_float32"] = float(np.mean(r["labels"] == ref["labels"]))
        r["labels_differ_n"] = int(np.sum(r["labels"] != ref["labels"]))
        r["max_abs_dp"] = float(np.abs(r["probs"] - ref["probs"]).max())
        logits = np.log(np.clip(r["probs"], 1e-300, None)) * r["temperature"]
        r["max_abs_dp_at_float32_T"] = float(np.abs(softmax(logits, ref["temperature"]) - ref["probs"]).max())

    perts = [st.perturbation(n.strip()) for n in args.perturbations.split(",") if n.strip()]
    for p in perts:
        xp = np.stack([preprocess(p(f).astype(np.float32) / np.float32(255.0), pre) for f in films]).astype(np.float32)
        for name, sess in sessions.items():
            r = results[name]
            lab = decide(softmax(run_logits(sess, xp), r["temperature"]), r["operating_point"])
            r.setdefault("flips", {})[p.name] = float(np.mean(lab != r["labels"]))
    for r in results.values():
        if r.get("flips"):
            r["flip_mean"] = float(np.mean(list(r["flips"].values())))
            r["flip_max"] = float(np.max(list(r["flips"].values())))

    # network time, batch 1, graphs interleaved (rotating order) so load changes hit all alike
    one = x[:1]
    for sess in sessions.values():
        for _ in range(10):
            sess.run(["logits"], {"image": one})
    times: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for rnd in range(args.rounds):
        for name in names[rnd % len(names):] + names[: rnd % len(names)]:
            sess = sessions[name]
            for _ in range(args.runs):
                t0 = time.perf_counter()
                sess.run(None, {"image": one})
                times[name].append((time.perf_counter() - t0) * 1e3)
    for name, ts in times.items():
        a = np.array(ts)
        per_round = a.reshape(args.rounds, args.runs).mean(1)
        results[name]["network_ms"] = {"p50": float(np.median(a)), "p90": float(np.percentile(a, 90)),
                                       "round_means_min": float(per_round.min()),
                                       "round_means_max": float(per_round.max()), "n": int(len(a))}
        results[name]["kernels"] = kernels[name]
        results[name]["onnx_bytes"] = sizes[name]
    print(f"load average after timing: {os.getloadavg()}")
    e2e: dict[str, Any] = {}
    if args.e2e and args.qat:  # what a user waits for: read + gate + preprocess + network, per JPEG
        from deephealth.inference import Predictor

        preds = {"float32 (bundled)": Predictor(model_dir, num_threads=args.threads),
                 "qat": Predictor(args.qat, num_threads=args.threads)}
        paths = [r.path for r in recs[:: max(1, len(recs) // args.e2e)][: args.e2e]]
        for p_ in preds.values():
            for path in paths[:5]:
                p_.predict(path, allow_unsuitable=True)
        e2e = {k: [] for k in preds}
        for rnd in range(3):
            for k, p_ in (list(preds.items()) if rnd % 2 == 0 else list(preds.items())[::-1]):
                for path in paths:
                    t0 = time.perf_counter()
                    p_.predict(path, allow_unsuitable=True)
                    e2e[k].append((time.perf_counter() - t0) * 1e3)
        for k, ts in e2e.items():
            print(f"end to end, {k}: p50 {np.median(ts):.2f} ms, p90 {np.percentile(ts, 90):.2f} ms "
                  f"({len(ts)} predictions of {len(paths)} JPEGs)")
        e2e = {k: {"p50": float(np.median(ts)), "p90": float(np.percentile(ts, 90)), "n": len(ts)}
               for k, ts in e2e.items()}

    head = ["graph", "T", "acc@op", "AUROC(pn)", "NLL", "= float32", "max|dp|", "max|dp|@T32",
            "flips mean/max", "net p50 ms", "MB"]
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for name, r in results.items():
        fl = f"{100 * r['flip_mean']:.1f} / {100 * r['flip_max']:.1f} %" if r.get("flips") else ""
        print(f"| {name} | {r['temperature']:.3f} | {100 * r['accuracy_at_operating_point']:.1f} % | "
              f"{r['pneumonia_auroc']:.4f} | {r['nll']:.3f} | {100 * r['labels_equal_float32']:.1f} % "
              f"({r['labels_differ_n']}) | {r['max_abs_dp']:.3f} | {r['max_abs_dp_at_float32_T']:.3f} | {fl} | "
              f"{r['network_ms']['p50']:.2f} | {r['onnx_bytes'] / 1e6:.1f} |")
    for name, r in results.items():
        print(f"{name}: flips {json.dumps({k: round(100 * v, 1) for k, v in (r.get('flips') or {}).items()})}; "
              f"network ms {json.dumps({k: round(v, 2) for k, v in r['network_ms'].items()})}; "
              f"kernels {r['kernels']}")
    dump = {name: {k: v for k, v in r.items() if k not in ("probs", "labels")} for name, r in results.items()}
    dump["_machine"] = {"cpu": cpu_describe(), "cpus": os.cpu_count(), "onnxruntime": ort.__version__,
                        "threads": args.threads, "films": len(recs), "perturbations": [p.name for p in perts],
                        "end_to_end_ms": e2e}
    (out / "bench_qat.json").write_text(json.dumps(dump, indent=2, default=float) + "\n")
    np.savez(out / "val_probs.npz", y=y, **{f"{n}_probs": r["probs"] for n, r in results.items()})
    print(f"written {out / 'bench_qat.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
