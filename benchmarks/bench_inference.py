"""Inference benchmark: latency, throughput and memory of the Predictor, against the 2020 prototype.

Prints figures; asserts nothing. Everything runs in this one process on the CPU:

1. Single-image latency, end to end (read file -> preprocess -> ONNX Runtime -> calibrated
   probabilities), p50/p95 over ``--repeats`` runs, without and with the heatmap, for:
   a 224x224 dataset JPEG, a 2,000x1,600 JPEG (made here by upscaling a dataset image, as full
   resolution originals are not available), and a real DICOM (``dicom/cr_chest_pa_rsna.dcm``).
   Plus a per-stage breakdown (read / preprocess / network) for each.
2. Batch throughput (images/s) of ``Predictor.predict_many`` over dataset JPEGs.
3. Peak resident memory of the process (``ru_maxrss``) after our measurements, before PyTorch is
   imported for the prototype.
4. The 2020 prototype's architecture, Inception V3 at 299x299 (torchvision, random weights: only
   speed matters), in PyTorch eager mode on the same files: single-image latency (read with Pillow,
   resize to 299, normalise, forward, softmax) and batch throughput; our speed as a ratio to it.

Goals (2-core CPU). Issue 16: p50 <= 8 ms per 224x224 JPEG in-process, and >= 20x the prototype in
the same run (the 224x224 JPEG and batches; the 2,000x1,600 ratio is printed for information). Earlier
goals, kept: p50 <= 25 ms per 2,000x1,600 JPEG, >= 150 images/s in batches.

Usage:
    python benchmarks/bench_inference.py [--model DIR] [--data-root DIR] [--repeats 100]
                                         [--batch-images 256] [--no-prototype] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

GOALS = {"p50_224_ms": 8.0, "p50_2000x1600_ms": 25.0, "speedup_vs_prototype": 20.0, "batch_images_per_s": 150.0}


def _percentiles(times_s: list[float]) -> dict[str, float]:
    a = np.asarray(times_s) * 1000.0
    return {"p50_ms": float(np.percentile(a, 50)), "p95_ms": float(np.percentile(a, 95)),
            "mean_ms": float(a.mean()), "n": int(a.size)}


def _time(fn: Callable[[], Any], repeats: int, warmup: int = 3) -> dict[str, float]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return _percentiles(times)


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _make_large_jpeg(src: Path, out: Path, size: tuple[int, int] = (2000, 1600)) -> Path:
    from PIL import Image

    with Image.open(src) as im:
        im.convert("L").resize(size, Image.Resampling.BICUBIC).save(out, format="JPEG", quality=92)
    return out


def _status(value: float, goal: float, higher_is_better: bool) -> str:
    ok = value >= goal if higher_is_better else value <= goal
    return "meets goal" if ok else "MISSES goal"


def bench_ours(args: argparse.Namespace, inputs: dict[str, Path], batch_files: list[Path]) -> dict[str, Any]:
    from deephealth.inference import Predictor
    from deephealth.preprocessing import preprocess
    from deephealth.readers import read_image

    t0 = time.perf_counter()
    p = Predictor(args.model, num_threads=args.threads)
    load_s = time.perf_counter() - t0
    pre = p.artifact.preprocessing
    print(f"model: {p.artifact.name} {p.artifact.version} ({p.artifact.directory}), input {pre.input_size}px, "
          f"{p.num_threads} ONNX Runtime thread(s), spinning {p.spin_description}; loaded in {load_s * 1000:.0f} ms")
    res: dict[str, Any] = {"model": f"{p.artifact.name} {p.artifact.version}", "input_size": pre.input_size,
                           "load_ms": load_s * 1000, "single": {}}

    print("\nsingle image, end to end (file -> probabilities)        p50 ms   p95 ms   "
          "| stages p50 ms: read  preprocess  network")
    for label, path in inputs.items():
        p.predict(path)  # fail early with a clear error if unreadable
        plain = _time(lambda: p.predict(path), args.repeats)
        heat = _time(lambda: p.predict(path, heatmap=True), max(args.repeats // 2, 5))
        holder: dict[str, Any] = {}

        def _read() -> None:
            holder["img"] = read_image(path, target_size=pre.input_size).image

        read_t = _time(_read, args.repeats)
        pre_t = _time(lambda: holder.__setitem__("x", preprocess(holder["img"], pre)[None]), args.repeats)
        net_t = _time(lambda: p.infer(holder["x"]), args.repeats)
        shape = "x".join(str(s) for s in holder["img"].shape[::-1])
        res["single"][label] = {"plain": plain, "heatmap": heat, "read": read_t, "preprocess": pre_t,
                                "network": net_t, "decoded": shape}
        print(f"  {label:<34} probabilities  {plain['p50_ms']:7.2f}  {plain['p95_ms']:7.2f}   "
              f"| {read_t['p50_ms']:12.2f}  {pre_t['p50_ms']:10.2f}  {net_t['p50_ms']:7.2f}  (decoded {shape})")
        print(f"  {'':<34} + heatmap       {heat['p50_ms']:7.2f}  {heat['p95_ms']:7.2f}")

    # batch throughput: end to end (files -> results) and network only
    n = len(batch_files)
    p.predict_many(batch_files[: args.batch_size], batch_size=args.batch_size)  # warm up
    t0 = time.perf_counter()
    out = p.predict_many(batch_files, batch_size=args.batch_size)
    e2e_s = time.perf_counter() - t0
    assert all(r.ok for r in out), [r for r in out if not r.ok][:3]
    x = np.stack([preprocess(read_image(f, target_size=pre.input_size).image, pre)
                  for f in batch_files[: args.batch_size]])
    net = _time(lambda: p.infer(x), max(3, args.repeats // 20), warmup=1)
    res["batch"] = {"images": n, "batch_size": args.batch_size, "end_to_end_images_per_s": n / e2e_s,
                    "network_only_images_per_s": args.batch_size / (net["p50_ms"] / 1000)}
    print(f"\nbatch throughput ({n} dataset JPEGs, batch {args.batch_size}): "
          f"{res['batch']['end_to_end_images_per_s']:.0f} images/s end to end, "
          f"{res['batch']['network_only_images_per_s']:.0f} images/s network only")
    res["peak_rss_mb"] = _peak_rss_mb()
    print(f"peak memory (RSS, whole process so far, torch not imported): {res['peak_rss_mb']:.0f} MB")
    return res


def bench_prototype(args: argparse.Namespace, inputs: dict[str, Path], batch_files: list[Path]) -> dict[str, Any]:
    import torch
    import torchvision
    from PIL import Image

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    torch.manual_seed(0)
    model = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=3).eval()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def load(path: Path) -> torch.Tensor:
        with Image.open(path) as im:
            im = im.convert("RGB").resize((299, 299), Image.Resampling.BILINEAR)
            a = np.asarray(im, dtype=np.float32) / 255.0  # (299, 299, 3)
        return torch.from_numpy(a).permute(2, 0, 1)[None]  # (1, 3, 299, 299)

    def predict(path: Path) -> np.ndarray:
        with torch.inference_mode():
            x = (load(path) - mean) / std
            return torch.softmax(model(x), dim=1).numpy()

    res: dict[str, Any] = {"single": {}}
    print(f"\n2020 prototype architecture: Inception V3, 299x299, PyTorch {torch.__version__} eager, "
          f"{torch.get_num_threads()} thread(s), random weights")
    reps = max(args.repeats // 5, 5)
    for label in ("224x224 dataset JPEG", "2000x1600 JPEG"):
        t = _time(lambda: predict(inputs[label]), reps, warmup=2)
        res["single"][label] = t
        print(f"  {label:<34} probabilities  {t['p50_ms']:7.2f}  {t['p95_ms']:7.2f}")
    files = batch_files[: args.proto_batch_images]
    bs = args.batch_size
    with torch.inference_mode():
        model(torch.zeros(2, 3, 299, 299))
        t0 = time.perf_counter()
        for i in range(0, len(files), bs):
            x = (torch.cat([load(f) for f in files[i : i + bs]]) - mean) / std
            torch.softmax(model(x), dim=1)
        dt = time.perf_counter() - t0
    res["batch"] = {"images": len(files), "batch_size": bs, "end_to_end_images_per_s": len(files) / dt}
    print(f"  batch throughput ({len(files)} images, batch {bs}): {res['batch']['end_to_end_images_per_s']:.1f} images/s")
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="model folder (default: DEEPHEALTH_MODEL_DIR or the bundled model)")
    ap.add_argument("--data-root", default=None, help="folder with chest_xray_224/ and dicom/ (default: ../shared/data)")
    ap.add_argument("--repeats", type=int, default=100, help="timed runs per single-image figure")
    ap.add_argument("--batch-images", type=int, default=256, help="dataset images for the throughput figure")
    ap.add_argument("--proto-batch-images", type=int, default=64, help="images for the prototype's throughput")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="threads for ONNX Runtime and PyTorch (default: all cores)")
    ap.add_argument("--no-prototype", action="store_true", help="skip the Inception V3 comparison")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from deephealth.paths import data_root

    root = Path(args.data_root) if args.data_root else data_root()
    ds = root / "chest_xray_224"
    test_files = sorted((ds / "test" / "NORMAL").glob("*.jpeg")) + sorted((ds / "test" / "PNEUMONIA").glob("*.jpeg"))
    if not test_files:
        print(f"no dataset under {root}; pass --data-root", file=sys.stderr)
        return 2
    batch_files = [test_files[i % len(test_files)] for i in range(args.batch_images)]
    from deephealth.cpu import describe as cpu_describe

    print(f"deep health inference benchmark - {cpu_describe()}, "
          f"{os.cpu_count()} CPU(s), Python {platform.python_version()}")

    with tempfile.TemporaryDirectory() as tmp:
        inputs = {
            "224x224 dataset JPEG": test_files[0],
            "2000x1600 JPEG": _make_large_jpeg(test_files[0], Path(tmp) / "large_2000x1600.jpeg"),
        }
        dcm = root / "dicom" / "cr_chest_pa_rsna.dcm"
        if dcm.is_file():
            inputs["1024x1024 DICOM (JPEG baseline)"] = dcm
        results: dict[str, Any] = {"cpu": cpu_describe(), "ours": bench_ours(args, inputs, batch_files)}
        if not args.no_prototype:
            results["prototype"] = bench_prototype(args, inputs, batch_files)

    ours, proto = results["ours"], results.get("prototype")
    s224 = ours["single"]["224x224 dataset JPEG"]["plain"]["p50_ms"]
    slarge = ours["single"]["2000x1600 JPEG"]["plain"]["p50_ms"]
    thr = ours["batch"]["end_to_end_images_per_s"]
    print("\nsummary vs goals")
    print(f"  p50 224x224 JPEG:       {s224:7.2f} ms  (goal <= {GOALS['p50_224_ms']:.0f} ms: "
          f"{_status(s224, GOALS['p50_224_ms'], False)})")
    print(f"  p50 2000x1600 JPEG:     {slarge:7.2f} ms  (goal <= {GOALS['p50_2000x1600_ms']:.0f} ms: "
          f"{_status(slarge, GOALS['p50_2000x1600_ms'], False)})")
    print(f"  batch throughput:       {thr:7.1f} images/s  (goal >= {GOALS['batch_images_per_s']:.0f}: "
          f"{_status(thr, GOALS['batch_images_per_s'], True)})")
    if proto:
        r_single = proto["single"]["224x224 dataset JPEG"]["p50_ms"] / s224
        r_large = proto["single"]["2000x1600 JPEG"]["p50_ms"] / slarge
        r_batch = thr / proto["batch"]["end_to_end_images_per_s"]
        results["speedup_vs_prototype"] = {"single_224": r_single, "single_2000x1600": r_large, "batch": r_batch}
        print(f"  speed vs prototype:     {r_single:5.1f}x (224 JPEG), {r_batch:5.1f}x (batch)  "
              f"(goal >= {GOALS['speedup_vs_prototype']:.0f}x: "
              f"{_status(min(r_single, r_batch), GOALS['speedup_vs_prototype'], True)}); "
              f"{r_large:.1f}x (2000x1600 JPEG, no goal)")
    print(f"  peak memory:            {ours['peak_rss_mb']:7.0f} MB (before PyTorch was imported)")
    try:
        load = os.getloadavg()
        print(f"  load average during run: {load[0]:.1f} (other processes share these cores: figures are noisy)")
        results["loadavg_1min"] = load[0]
    except OSError:
        pass
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
