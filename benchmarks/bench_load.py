"""Load test of `deephealth serve` on loopback: concurrent clients, good, bad and oversized uploads.

Starts ``python -m deephealth serve`` on 127.0.0.1 (a free port; never another address), waits for
``/healthz``, then runs ``--clients`` asyncio clients (httpx), each sending ``--requests`` uploads
one after another to ``POST /api/v1/predictions``. Each upload is drawn (fixed seed) from:

* good (70 %): dataset JPEGs of the three classes, and the real CR DICOM (1024x1024, JPEG Baseline);
* bad (20 %): a truncated JPEG, a text file, a HEIC header, an all-black PNG, the CT DICOM;
* oversized (10 %): a JPEG-looking file 1 MiB over ``--max-upload-mb``.

Prints, with the CPU capability it ran on: latency p50/p99 overall and per kind, the count of each
status code (goal: no 5xx), dropped connections (transport errors), and the server's resident memory
(``VmRSS`` of the server process) after a warm-up and after the run, and with ``--rounds`` after each
round, to tell a plateau from a leak (goal: no growth beyond noise, at most 300 MB). Exit status 1 if any 5xx or dropped connection happened.

The issue's full run is 8 clients x 1,000 requests (``--requests 1000``, about 8,000 uploads); the
default, 8 x 100, is a quick check::

    nice -n 19 python benchmarks/bench_load.py [--clients 8] [--requests 1000] [--model DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import signal
import socket
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np

HOST = "127.0.0.1"  # loopback only
GOAL_RSS_MB = 300.0
MIX = (("good", 0.7), ("bad", 0.2), ("oversized", 0.1))


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def rss_mb(pid: int) -> float:
    """Resident memory (VmRSS) of process ``pid`` and its children, in MB (Linux /proc)."""
    total = 0.0
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        pids += [int(c) for c in children]
    except OSError:
        pass
    for p in pids:
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) / 1024
        except OSError:
            pass
    return total


def make_payloads(data_root: Path, max_upload_mb: float) -> dict[str, list[tuple[str, bytes]]]:
    """Upload bodies by kind: ``{"good": [(name, bytes)...], "bad": [...], "oversized": [...]}``."""
    from PIL import Image

    test = data_root / "chest_xray_224" / "test"
    good = [(p.name, p.read_bytes()) for p in (
        sorted((test / "NORMAL").glob("*.jpeg"))[:4]
        + sorted((test / "PNEUMONIA").glob("*_bacteria_*.jpeg"))[:4]
        + sorted((test / "PNEUMONIA").glob("*_virus_*.jpeg"))[:4]
    )]
    dicom = data_root / "dicom"
    if (dicom / "cr_chest_pa_rsna.dcm").is_file():
        good.append(("cr_chest_pa_rsna.dcm", (dicom / "cr_chest_pa_rsna.dcm").read_bytes()))
    buf = io.BytesIO()
    Image.fromarray(np.zeros((256, 256), np.uint8)).save(buf, "PNG")
    bad = [
        ("cut.jpeg", good[0][1][: len(good[0][1]) // 2]),
        ("notes.txt", b"cough for three days\n" * 50),
        ("IMG_0001.HEIC", b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(4000)),
        ("black.png", buf.getvalue()),
    ]
    if (dicom / "ct_small.dcm").is_file():
        bad.append(("ct_small.dcm", (dicom / "ct_small.dcm").read_bytes()))
    size = int((max_upload_mb + 1) * 2**20)
    oversized = [("huge.jpeg", b"\xff\xd8\xff\xe0" + os.urandom(size - 4))]
    return {"good": good, "bad": bad, "oversized": oversized}


async def _client(cid: int, base: str, n: int, payloads: dict[str, list[tuple[str, bytes]]], seed: int,
                  out: list[dict[str, Any]], stop: asyncio.Event | None = None) -> None:
    import httpx

    rng = random.Random(seed * 1000 + cid)
    kinds = [k for k, _ in MIX]
    weights = [w for _, w in MIX]
    timeout = httpx.Timeout(120.0)
    async with httpx.AsyncClient(base_url=base, timeout=timeout) as client:
        for _ in range(n):
            if stop is not None and stop.is_set():
                return
            kind = rng.choices(kinds, weights)[0]
            name, data = rng.choice(payloads[kind])
            t0 = time.perf_counter()
            try:
                r = await client.post("/api/v1/predictions", files={"file": (name, data, "application/octet-stream")})
                status: int | str = r.status_code
            except httpx.TransportError as exc:  # connection refused/reset/closed early: a drop
                status = f"dropped ({type(exc).__name__})"
            out.append({"kind": kind, "status": status, "seconds": time.perf_counter() - t0})


def _pct(values: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(values) * 1000, q)) if values else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    ap.add_argument("--requests", type=int, default=100, help="requests per client (the full run: 1000)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--data-root", default=None, help="folder with chest_xray_224/ and dicom/ (default: ../shared/data)")
    ap.add_argument("--max-upload-mb", type=float, default=4.0, help="the server's upload limit (default 4)")
    ap.add_argument("--workers", type=int, default=1, help="server worker processes (default 1)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rounds", type=int, default=1,
                    help="split each client's requests into this many rounds, printing the server's RSS after each")
    ap.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the server to start")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    from deephealth.cpu import describe
    from deephealth.paths import data_root

    root = Path(args.data_root) if args.data_root else data_root()
    payloads = make_payloads(root, args.max_upload_mb)
    port = _free_port()
    base = f"http://{HOST}:{port}"
    cmd = [sys.executable, "-m", "deephealth", "serve", "--host", HOST, "--port", str(port), "--log-level", "warning",
           "--max-upload-mb", str(args.max_upload_mb), "--workers", str(args.workers)]
    if args.model:
        cmd += ["--model", args.model]
    print(f"load test of deephealth serve - {describe()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}")
    print(f"server: {' '.join(cmd[1:])}")
    server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        return asyncio.run(_run(args, base, server, payloads, describe()))
    finally:
        server.terminate()
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()


async def _run(args: argparse.Namespace, base: str, server: subprocess.Popen, payloads: dict, cpu: str) -> int:
    import httpx

    deadline = time.monotonic() + args.ready_timeout
    async with httpx.AsyncClient(base_url=base, timeout=5.0) as c:
        while True:
            if server.poll() is not None:
                print(f"server exited: {server.stderr.read().decode(errors='replace')[-2000:]}", file=sys.stderr)
                return 2
            try:
                if (await c.get("/healthz")).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                print(f"server did not become ready in {args.ready_timeout:.0f} s", file=sys.stderr)
                return 2
            await asyncio.sleep(0.25)
    # warm-up at full concurrency, every payload once: ONNX Runtime's arenas and the decoders'
    # buffers are allocated here, so the "before" figure is the steady state and growth means a leak
    warm: list[dict[str, Any]] = []
    await asyncio.gather(*(_client(i, base, max(3, sum(map(len, payloads.values())) // args.clients + 1),
                                   payloads, args.seed + 1, warm) for i in range(args.clients)))
    rss_before = rss_mb(server.pid)

    results: list[dict[str, Any]] = []
    stop = asyncio.Event()  # SIGINT/SIGTERM: finish the requests in flight, then report what was done
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    t0 = time.perf_counter()
    rss_rounds: list[float] = []
    per_round = -(-args.requests // args.rounds)  # the requests split into rounds, RSS after each
    for r in range(args.rounds):
        n = min(per_round, args.requests - r * per_round)
        await asyncio.gather(*(_client(i, base, n, payloads, args.seed + 7 * r, results, stop)
                               for i in range(args.clients)))
        rss_rounds.append(rss_mb(server.pid))
        if stop.is_set():
            break
    wall = time.perf_counter() - t0
    if stop.is_set():
        print(f"\ninterrupted: {len(results)} of {args.clients * args.requests} requests done")
    await asyncio.sleep(1.0)
    rss_after = rss_mb(server.pid)
    alive = server.poll() is None

    statuses = Counter(str(r["status"]) for r in results)
    by_kind: dict[str, list[float]] = defaultdict(list)
    for r in results:
        by_kind[r["kind"]].append(r["seconds"])
    lat = [r["seconds"] for r in results]
    n5xx = sum(n for s, n in statuses.items() if s.startswith("5"))
    dropped = sum(n for s, n in statuses.items() if s.startswith("dropped"))
    kind_status = Counter((r["kind"], str(r["status"])) for r in results)

    print(f"\n{len(results)} requests from {args.clients} clients in {wall:.1f} s ({len(results) / wall:.1f} requests/s)")
    print(f"latency: p50 {_pct(lat, 50):.0f} ms, p99 {_pct(lat, 99):.0f} ms, max {max(lat) * 1000:.0f} ms")
    for kind, _ in MIX:
        v = by_kind.get(kind, [])
        codes = ", ".join(f"{s} x{n}" for (k, s), n in sorted(kind_status.items()) if k == kind)
        print(f"  {kind:<10} {len(v):>6} requests  p50 {_pct(v, 50):7.0f} ms  p99 {_pct(v, 99):7.0f} ms  ({codes})")
    print("status codes: " + ", ".join(f"{s} x{n}" for s, n in sorted(statuses.items())))
    print(f"5xx responses: {n5xx}; dropped connections: {dropped}; server still running: {alive}")
    growth = rss_after - rss_before
    if len(rss_rounds) > 1:
        print("server RSS after each round: " + ", ".join(f"{v:.0f}" for v in rss_rounds) + " MB")
    print(f"server RSS: {rss_before:.0f} MB after warm-up, {rss_after:.0f} MB after the run ({growth:+.0f} MB; "
          f"goal <= {GOAL_RSS_MB:.0f} MB: {'meets goal' if rss_after <= GOAL_RSS_MB else 'MISSES goal'})")
    try:
        print(f"load average: {os.getloadavg()[0]:.1f} (other processes share these cores: latencies are noisy)")
    except OSError:
        pass
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": cpu, "clients": args.clients, "requests_per_client": args.requests, "wall_s": wall,
            "p50_ms": _pct(lat, 50), "p99_ms": _pct(lat, 99),
            "per_kind": {k: {"n": len(v), "p50_ms": _pct(v, 50), "p99_ms": _pct(v, 99)} for k, v in by_kind.items()},
            "status_counts": dict(statuses), "n_5xx": n5xx, "dropped": dropped,
            "rss_mb": {"before": rss_before, "after": rss_after, "rounds": rss_rounds},
        }, indent=2) + "\n")
    return 0 if (n5xx == 0 and dropped == 0 and alive) else 1


if __name__ == "__main__":
    sys.exit(main())
