"""ONNX Runtime thread spinning: single-film latency of ``Predictor.predict`` in each mode, interleaved.

Prints figures; asserts nothing. One process holds one :class:`deephealth.inference.Predictor` per
spinning mode (off, up to 50 us -- the default --, up to 200 us, ONNX Runtime's own) and scores the
official test JPEGs in blocks of 16, the modes in a shuffled order within each block, so every mode
sees the same films under the same machine conditions (this project's machines are shared VMs whose
speed drifts by 20 % within minutes; separate runs per mode mostly measure that drift).

``--busy`` first starts one busy-looping process (a stand-in for another job on the same cores), and
stops it by its PID at the end. Idle threads that spin take cycles from it, so the modes rank
differently there: run both ways before choosing ``DEEPHEALTH_ORT_SPINNING`` for a site.

Usage:
    python benchmarks/bench_spinning.py [--data-root DIR] [--model DIR] [--films 624] [--busy] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

MODES: tuple[bool | int, ...] = (False, 50, 200, True)
BLOCK = 16


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="folder with chest_xray_224/ (default: ../shared/data)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--films", type=int, default=624, help="test films to score per mode (default: all 624)")
    ap.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads (default: all cores)")
    ap.add_argument("--busy", action="store_true", help="run beside one busy-looping process")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args(argv)

    from deephealth import paths
    from deephealth.cpu import describe as cpu_describe
    from deephealth.inference import Predictor

    root = Path(args.data_root) if args.data_root else paths.data_root()
    files = sorted((root / "chest_xray_224" / "test").glob("*/*.jpeg"))[: args.films]
    if not files:
        print(f"no test films under {root / 'chest_xray_224' / 'test'}; pass --data-root", file=sys.stderr)
        return 2
    predictors = {m: Predictor(args.model, num_threads=args.threads, spinning=m) for m in MODES}
    any_p = next(iter(predictors.values()))
    print(f"deep health spinning benchmark - {cpu_describe()}, {os.cpu_count()} CPU(s); "
          f"{any_p.num_threads} ONNX Runtime thread(s); {len(files)} test JPEGs per mode"
          f"{'; beside one busy process' if args.busy else ''}")
    busy = None
    if args.busy:
        busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        for p in predictors.values():  # warm-up, not timed
            for f in files[:8]:
                p.predict(f, allow_unsuitable=True)
        times: dict[bool | int, list[float]] = {m: [] for m in MODES}
        rng = np.random.default_rng(0)
        for start in range(0, len(files), BLOCK):
            for i in rng.permutation(len(MODES)):
                mode = MODES[i]
                for f in files[start : start + BLOCK]:
                    t0 = time.perf_counter()
                    predictors[mode].predict(f, allow_unsuitable=True)
                    times[mode].append(time.perf_counter() - t0)
        load = os.getloadavg()[0]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()

    results: dict[str, object] = {"cpu": cpu_describe(), "busy": args.busy, "films": len(files), "loadavg_1min": load}
    print(f"\n{'spinning':<28} {'p25 ms':>7} {'p50 ms':>7} {'p75 ms':>7} {'mean ms':>8}")
    for mode in MODES:
        a = np.asarray(times[mode]) * 1000.0
        row = {"p25_ms": float(np.percentile(a, 25)), "p50_ms": float(np.median(a)),
               "p75_ms": float(np.percentile(a, 75)), "mean_ms": float(a.mean())}
        results[predictors[mode].spin_description] = row
        print(f"{predictors[mode].spin_description:<28} {row['p25_ms']:7.2f} {row['p50_ms']:7.2f} "
              f"{row['p75_ms']:7.2f} {row['mean_ms']:8.2f}")
    print(f"load average during run: {load:.1f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
