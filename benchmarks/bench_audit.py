"""Audit-trail benchmark: what recording a prediction adds to its latency. Prints figures; asserts nothing.

Goal (issue 12): writing the audit record adds at most 1 ms to a prediction at p50.

1. ``AuditLog.record`` alone, the only audit work on a request's path (the SHA-256 and the
   database write happen in the background writer thread): p50/p95/p99 in microseconds over
   ``--records`` calls, with a 224x224 dataset JPEG's bytes as the input, SQLite by default.
2. The background writer's throughput (records written per second) for the same calls.
3. ``POST /api/v1/predictions`` in-process (FastAPI TestClient, bundled model, the same JPEG),
   ``--requests`` requests with the audit trail on and off, interleaved: p50 latency of each and
   the difference (noisy on a loaded machine; figure 1 is the direct measure).

Usage:
    python benchmarks/bench_audit.py [--records 5000] [--requests 200] [--database-url URL]
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

GOAL_P50_MS = 1.0


def _cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    flags = set()
    for line in text.splitlines():
        if line.startswith("flags"):
            flags = set(line.split(":", 1)[1].split())
            break
    return ",".join(f for f in ("avx512f", "avx2", "sha_ni") if f in flags) or "none of avx2/avx512f/sha_ni"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=5000)
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--database-url", default=None, help="default: a SQLite file in a temporary folder")
    args = parser.parse_args()

    from deephealth.audit import AuditLog, redact_url
    from deephealth.inference import Predictor
    from deephealth.paths import dataset_dir

    files = sorted((dataset_dir() / "test" / "NORMAL").glob("*.jpeg"))
    if not files:
        print(f"no dataset under {dataset_dir()}; set DEEPHEALTH_DATA_ROOT", file=sys.stderr)
        return 2
    data = files[0].read_bytes()
    print(f"deep health audit benchmark - {platform.processor() or platform.machine()}, {os.cpu_count()} CPU(s), "
          f"CPU flags {_cpu_flags()}, Python {platform.python_version()}")

    with tempfile.TemporaryDirectory() as tmp:
        url = args.database_url or f"sqlite:///{Path(tmp) / 'bench.sqlite3'}"
        log = AuditLog(url)
        if log.error:
            print(f"cannot open {redact_url(url)}: {log.error}", file=sys.stderr)
            return 2
        fields = dict(interface="api", client="127.0.0.1", input_format="JPEG", model_name="bench",
                      model_version="0", model_sha256="0" * 64, label="normal",
                      probabilities={"normal": 0.9, "bacterial": 0.05, "viral": 0.05}, gate=None,
                      latency_ms=10.0, status_code=200)
        times = []
        t_all = time.perf_counter()
        for _ in range(args.records):
            t0 = time.perf_counter()
            log.record(input_data=data, **fields)
            times.append(time.perf_counter() - t0)
        log.flush(120.0)
        elapsed = time.perf_counter() - t_all
        us = np.asarray(times) * 1e6
        print(f"\n1. AuditLog.record() on the request path ({redact_url(url)}), {args.records} calls, "
              f"input {len(data)} bytes:")
        print(f"   p50 {np.percentile(us, 50):.1f} us   p95 {np.percentile(us, 95):.1f} us   "
              f"p99 {np.percentile(us, 99):.1f} us   (goal: p50 <= {GOAL_P50_MS * 1000:.0f} us) "
              f"{'MET' if np.percentile(us, 50) <= GOAL_P50_MS * 1000 else 'NOT MET'}")
        print(f"2. background writer: {log.written} written, {log.failures} failed, "
              f"{log.written / elapsed:.0f} records/s")
        log.close()

        try:
            from fastapi.testclient import TestClient

            from deephealth.web.app import create_app
            from deephealth.web.settings import Settings
        except ImportError:
            print("3. skipped: needs the [web] extra")
            return 0
        predictor = Predictor()
        url2 = f"sqlite:///{Path(tmp) / 'bench_web.sqlite3'}"
        with TestClient(create_app(Settings(database_url=url2), predictor=predictor)) as on, \
                TestClient(create_app(Settings(audit=False), predictor=predictor)) as off:
            for c in (on, off):  # warm-up
                for _ in range(5):
                    c.post("/api/v1/predictions", files={"file": (files[0].name, data)})
            lat = {"on": [], "off": []}
            for _ in range(args.requests):
                for name, c in (("on", on), ("off", off)):
                    t0 = time.perf_counter()
                    r = c.post("/api/v1/predictions", files={"file": (files[0].name, data)})
                    lat[name].append(time.perf_counter() - t0)
                    assert r.status_code == 200
        p50 = {k: float(np.percentile(np.asarray(v) * 1000, 50)) for k, v in lat.items()}
        print(f"3. POST /api/v1/predictions in-process, {args.requests} requests each, interleaved:")
        print(f"   p50 audit on {p50['on']:.2f} ms   audit off {p50['off']:.2f} ms   "
              f"difference {p50['on'] - p50['off']:+.2f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
