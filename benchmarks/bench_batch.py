"""Batch benchmark: ``deephealth batch`` (Ray Data, 1 and 2 workers) against ``deephealth predict``.

Prints figures and the done-criterion checks; asserts nothing. On the same files, in the same run:

1. ``deephealth predict FILES --format json`` (one process, all cores for ONNX Runtime).
2. ``deephealth batch FILES --out A --workers 1`` (1 worker x all cores' threads), fresh RESULTS.
3. ``deephealth batch FILES --out B --workers 2`` (2 workers x cores/2 threads), fresh RESULTS.
4. ``deephealth batch FILES --out B --workers 2`` again: must skip every input and write nothing.
5. With ``--running-ray``: ``deephealth batch FILES --out C --workers 2 --address HOST:PORT`` against
   a Ray head started before it (``ray start --head --block``, its own process group, a private
   temp dir and a free port; stopped by its process-group id afterwards): a hospital's standing
   cluster, where Ray's own start is not part of the job (one small untimed job warms it first, as
   a standing cluster has run jobs before). ``RAY_AUTH_MODE=token`` is set for it
   (Ray 2.59+ ``ray start`` clusters use token authentication, docs/scale.md).

Each command runs as a subprocess; wall time is the whole command (Python start, Ray start, model
load, scoring, writing); for ``batch`` the pipeline rate it reports (Ray start excluded) is shown
too. Peak memory is the largest sum of the resident memory (RSS) of the command's process tree
(the driver, Ray's GCS and raylet, and its workers), sampled every 0.1 s from ``/proc``.
Checks: each batch writes one row per input, and its label equals predict's on every file.

Default files: the 624 official test films (``chest_xray_224/test``) plus one broken file;
``--split train`` uses the 5,216 training films, long enough for the fixed costs (Ray's start,
workers loading the model) to matter less and the sustained rate to show.

Usage:
    nice -n 10 python benchmarks/bench_batch.py [--data-root DIR] [--model DIR] [--limit N] [--running-ray]
                                                [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


def _tree_rss_bytes(root: int) -> int:
    """Sum of VmRSS over ``root`` and all its descendants (Linux /proc)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as fh:
                stat = fh.read()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{d}/statm") as fh:
                rss[int(d)] = int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(d))
    total, stack = 0, [root]
    while stack:
        p = stack.pop()
        total += rss.get(p, 0)
        stack.extend(children.get(p, []))
    return total


def run_measured(cmd: list[str], env: dict[str, str]) -> tuple[float, float, str, int]:
    """Run ``cmd``; returns ``(wall seconds, peak tree RSS MiB, stdout, exit code)``."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = 0
    stop = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, _tree_rss_bytes(proc.pid))
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    stop.set()
    th.join()
    if proc.returncode not in (0, 1):
        print(err[-3000:], file=sys.stderr)
    return wall, peak / 2**20, out, proc.returncode


def start_ray_head(work: Path, cpus: int) -> tuple[subprocess.Popen, str]:
    """Start ``ray start --head --block`` in its own process group; returns (process, "127.0.0.1:PORT")."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ray_bin = Path(sys.executable).with_name("ray")
    log = open(work / "ray-head.log", "w")
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--port", str(port), "--num-cpus", str(cpus),
         "--include-dashboard", "false", "--disable-usage-stats", "--temp-dir", str(work / "ray")],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # up when its GCS port answers
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None:
                raise RuntimeError(f"ray start --head exited with {proc.returncode}; see {work / 'ray-head.log'}")
            time.sleep(0.5)
    time.sleep(3)  # the raylet registers after the GCS answers
    return proc, f"127.0.0.1:{port}"


def stop_ray_head(proc: subprocess.Popen) -> None:
    """Stop the head started by :func:`start_ray_head`: SIGTERM to its process group, SIGKILL after 60 s."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


def main() -> int:
    from deephealth.cpu import describe as cpu_describe
    from deephealth.paths import data_root

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data-root", default=None, help="shared data root (default: DEEPHEALTH_DATA_ROOT or ../shared/data)")
    ap.add_argument("--model", default=None, help="model folder (default: the bundled model)")
    ap.add_argument("--split", default="test", choices=("train", "val", "test"),
                    help="films of this official split (default test: 624; train: 5,216 for a steady-state rate)")
    ap.add_argument("--limit", type=int, default=None, help="use only the first N films")
    ap.add_argument("--running-ray", action="store_true",
                    help="also time 2 workers against a Ray head started before the command (a standing cluster)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()

    root = Path(args.data_root) if args.data_root else data_root()
    films = sorted(str(p) for p in (root / "chest_xray_224" / args.split).rglob("*.jpeg"))
    if args.limit:
        films = films[: args.limit]
    work = Path(tempfile.mkdtemp(prefix="bench_batch_"))
    broken = work / "broken.jpeg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 this is not a JPEG")
    manifest = work / "inputs.csv"
    manifest.write_text("path\n" + "\n".join([*films, str(broken)]) + "\n")
    n = len(films) + 1

    print(f"deep health batch benchmark - {cpu_describe()}, {os.cpu_count()} CPU(s), "
          f"Python {platform.python_version()}")
    print(f"  {n} inputs ({len(films)} {args.split} films + 1 broken file); load average before: {os.getloadavg()[0]:.1f}")
    env = {**os.environ}
    model = ["--model", args.model] if args.model else []
    cli = [sys.executable, "-m", "deephealth"]
    results: dict = {"cpu": cpu_describe(), "cpus": os.cpu_count(), "inputs": n}

    wall, peak, out, rc = run_measured([*cli, "predict", str(manifest), "--format", "json", "--no-progress", *model], env)
    rows = json.loads(out)
    pred = {os.path.abspath(r["source"]): r.get("label") for r in rows}
    results["predict"] = {"wall_s": wall, "images_per_s": n / wall, "peak_rss_mib": peak, "rows": len(rows)}
    print(f"  predict            : {n / wall:6.1f} images/s (wall {wall:5.1f} s), peak RSS {peak:6.0f} MiB, {len(rows)} rows")

    import pyarrow  # noqa: F401  (fail early without the [scale] extra)

    from deephealth.batch import load_results

    runs = [(1, "batch_1_worker", "out1"), (2, "batch_2_workers", "out2"), (2, "batch_2_workers_rerun", "out2")]
    if args.running_ray:
        runs.append((2, "batch_2_workers_running_ray", "out_running"))
    head = None
    for workers, key, out_name in runs:
        out_dir = work / out_name
        extra: list[str] = []
        run_env = env
        if key.endswith("running_ray"):
            head, address = start_ray_head(work, os.cpu_count() or 1)
            extra = ["--address", address]
            run_env = {**env, "RAY_AUTH_MODE": "token"}
            # A standing cluster has run jobs before: one small warm-up job (4 films, not timed).
            subprocess.run([*cli, "batch", *films[:4], "--out", str(work / "warmup"), "--workers", str(workers),
                            "--no-progress", *extra, *model], env=run_env, capture_output=True, check=False)
        try:
            wall, peak, out, rc = run_measured(
                [*cli, "batch", str(manifest), "--out", str(out_dir), "--workers", str(workers), "--no-progress",
                 *extra, *model], run_env)
        finally:
            if head is not None:
                stop_ray_head(head)
                head = None
        m = re.search(r"in ([\d.]+) s \(([\d.]+) images scored/s; Ray start ([\d.]+) s\); (\d+) part", out)
        skipped = re.search(r"(\d+) already in", out)
        table = load_results(str(out_dir))
        labels = dict(zip(table.column("source").to_pylist(), table.column("label").to_pylist()))
        disagree = [s for s in pred if labels.get(s, "<missing>") != pred[s]]
        res = {"wall_s": wall, "images_per_s_wall": n / wall, "peak_rss_mib": peak, "rows": table.num_rows,
               "label_disagreements": len(disagree), "exit_code": rc,
               "pipeline_s": float(m.group(1)) if m else None, "images_per_s_pipeline": float(m.group(2)) if m else None,
               "ray_start_s": float(m.group(3)) if m else None, "parts_written": int(m.group(4)) if m else None,
               "skipped": int(skipped.group(1)) if skipped else None}
        results[key] = res
        print(f"  batch {key[6:]:13s}: {n / wall:6.1f} images/s (wall {wall:5.1f} s; pipeline "
              f"{res['images_per_s_pipeline']} images/s, Ray start {res['ray_start_s']} s), peak RSS {peak:6.0f} MiB, "
              f"{table.num_rows} rows, {len(disagree)} label(s) differ from predict, "
              f"{res['skipped']} skipped, {res['parts_written']} part(s) written")
    b2 = results["batch_2_workers"]
    results["ratio_2_workers_vs_predict_wall"] = b2["images_per_s_wall"] / results["predict"]["images_per_s"]
    print(f"  2 workers vs predict (wall): {100 * results['ratio_2_workers_vs_predict_wall']:.0f} %")
    if args.running_ray:
        br = results["batch_2_workers_running_ray"]
        results["ratio_2_workers_running_ray_vs_predict_wall"] = br["images_per_s_wall"] / results["predict"]["images_per_s"]
        print(f"  2 workers on a running Ray vs predict (wall; the head's start not counted, its memory not in the "
              f"peak): {100 * results['ratio_2_workers_running_ray_vs_predict_wall']:.0f} %")
    load = os.getloadavg()
    results["loadavg_1min"] = load[0]
    print(f"  load average during run: {load[0]:.1f} (other processes share these cores: figures are noisy)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
