"""Cost of the input gate per image (goal: at most 2 ms on the project's 2-core CPU).

The gate's feature-space scores read the ``features`` output of the same ONNX run that gives the
logits, so its cost is: the image checks on the 8-bit network input (percentile range, Laplacian
detail, colour facts from the reader) plus the Mahalanobis distance and the logistic regression on
one feature vector. Measured here on real films, with the network run excluded, plus the network
run with and without fetching the features output (the extra output itself is a global average
pool, already computed for the logits).

    PYTHONPATH=src python benchmarks/bench_gate.py [--model DIR] [--images 64] [--repeats 200]

Prints the CPU capability (deephealth.cpu) and the median and 95th percentile per image, in ms.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np


def _times(fn, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        out.append((time.perf_counter() - t) * 1000.0)
    return out


def main() -> int:
    from deephealth.cpu import describe as cpu_describe
    from deephealth.inference import Predictor
    from deephealth.paths import dataset_dir
    from deephealth.readers import read_image

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--images", type=int, default=64, help="dataset films to cycle through")
    ap.add_argument("--repeats", type=int, default=200, help="timed gate calls")
    ap.add_argument("--threads", type=int, default=1, help="ONNX Runtime threads for the network timing")
    args = ap.parse_args()

    p = Predictor(args.model, num_threads=args.threads)
    files = sorted((Path(dataset_dir()) / "val").glob("*/*.jpeg"))
    files += sorted((Path(dataset_dir()) / "test").glob("*/*.jpeg"))[: max(0, args.images - len(files))]
    items = []
    for f in files[: args.images]:
        r = read_image(f)
        q, x, box = p._prepare(r.image)
        logits, _, feats = p._run(x[None], cam=False)
        items.append((r.info, q, box, None if feats is None else feats[0], logits[0]))
    print(f"CPU: {cpu_describe()}")
    print(f"model: {p.artifact.name} {p.artifact.version} (input {p.input_size} px); feature-space gate: "
          f"{'fitted' if p.gate.available else 'not fitted (image checks only)'}")
    k = [0]

    def one() -> None:
        info, q, box, f, lo = items[k[0] % len(items)]
        k[0] += 1
        p._assess(info, q, box, f, lo)

    _times(one, 20)  # warm-up
    t = _times(one, args.repeats)
    print(f"gate per image (image checks + feature scores): median {statistics.median(t):.3f} ms, "
          f"p95 {np.percentile(t, 95):.3f} ms over {args.repeats} calls (goal <= 2 ms)")

    x = np.stack([p._prepare(read_image(f).image)[1] for f in files[:1]])
    names_with = [p.logits_name] + ([p.features_name] if p.features_name else [])
    for label, names in (("logits only", [p.logits_name]), ("logits + features", names_with)):
        p.session.run(names, {p.input_name: x})
        tt = _times(lambda names=names: p.session.run(names, {p.input_name: x}), 30)
        print(f"network, batch 1, {label}: median {statistics.median(tt):.2f} ms ({args.threads} thread(s))")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
