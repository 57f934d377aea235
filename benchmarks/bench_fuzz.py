"""Fuzz run of the readers: mutated real files must end in a result or ImageReadError, quickly.

Seeds are real files: three dataset JPEGs (one per class), PNG, TIFF, WebP, BMP and GIF copies of
one of them, 8- and 16-bit PNGs, the two real DICOM files of ``../shared/data/dicom`` (an adult CR in
JPEG Baseline, a CT slice), and an uncompressed DX DICOM plus its bare data set (no PS3.10 header)
made from a dataset image. Hypothesis draws each input: a seed, then 1-8 mutations (bit flips,
overwrites with "interesting" integers such as 0, 0xFFFF or 0x7FFFFFFF, inserted, deleted or
duplicated byte runs, truncation), with positions biased towards the headers where the structure
is. Every input goes through :func:`deephealth.readers.read_image` (half with ``target_size=224``).

Checked, and printed: every input ends in a result or :class:`~deephealth.readers.ImageReadError`
(any other exception is a failure, saved with ``--save-dir``); no input takes more than 2 s of CPU
time (wall time is printed too, but on a shared machine it mostly measures waiting); the
process's resident memory does not grow (sampled every 1,000 inputs). A watchdog ends the run with a
stack dump if one input hangs for ``--watchdog`` seconds. Exit status 1 when anything failed.

The short version (about 1,000 inputs) runs in ``make test`` (tests/test_fuzz_readers.py); the full
run (10^5 inputs) takes a few minutes::

    nice -n 19 python benchmarks/bench_fuzz.py --examples 100000 [--seed 0] [--save-dir DIR] [--json FILE]
"""

from __future__ import annotations

import argparse
import faulthandler
import io
import json
import os
import platform
import signal
import sys
import time
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

HANG_S = 2.0
"""Longest accepted time for one input, in seconds."""


# ----------------------------------------------------------------------------------------- seeds


def make_seeds(data_root: Path) -> dict[str, bytes]:
    """Seed files (name -> bytes) derived from the real files under ``data_root``.

    Raises:
        FileNotFoundError: if the dataset or the DICOM folder is missing.
    """
    from PIL import Image

    ds_root = data_root / "chest_xray_224" / "test"
    picks = {
        "normal.jpeg": sorted((ds_root / "NORMAL").glob("*.jpeg"))[0],
        "bacteria.jpeg": sorted((ds_root / "PNEUMONIA").glob("*_bacteria_*.jpeg"))[0],
        "virus.jpeg": sorted((ds_root / "PNEUMONIA").glob("*_virus_*.jpeg"))[0],
    }
    seeds = {name: path.read_bytes() for name, path in picks.items()}
    with Image.open(picks["normal.jpeg"]) as im:
        gray = im.convert("L")
    small = gray.resize((96, 96))  # small copies keep each run fast
    for name, fmt, img, kw in (
        ("normal.png", "PNG", gray, {}),
        ("normal16.png", "PNG", Image.fromarray(np.asarray(small, np.uint16) * 257), {}),
        ("normal.tiff", "TIFF", small, {"compression": "tiff_lzw"}),
        ("normal.webp", "WEBP", small, {"quality": 80}),
        ("normal.bmp", "BMP", small, {}),
        ("normal.gif", "GIF", small, {}),
        ("progressive.jpeg", "JPEG", small, {"progressive": True, "quality": 85}),
    ):
        buf = io.BytesIO()
        img.save(buf, fmt, **kw)
        seeds[name] = buf.getvalue()
    for path in sorted((data_root / "dicom").glob("*.dcm")):
        seeds[path.name] = path.read_bytes()
    full, bare = _dx_dicom(np.asarray(small))
    seeds["dx_native.dcm"], seeds["dx_bare"] = full, bare
    return seeds


def _dx_dicom(arr: np.ndarray) -> tuple[bytes, bytes]:
    """An uncompressed 8-bit DX DICOM of ``arr`` (with PS3.10 header) and its bare data set."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.1.1"
    ds.file_meta.MediaStorageSOPInstanceUID = generate_uid(entropy_srcs=["deephealth-fuzz"])
    ds.SOPClassUID = ds.file_meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    ds.PatientAge = "003Y"
    ds.ViewPosition = "AP"
    ds.WindowCenter, ds.WindowWidth = 128, 256
    ds.set_pixel_data(arr.astype(np.uint8), "MONOCHROME2", 8)
    full = io.BytesIO()
    ds.save_as(full, enforce_file_format=True)
    bare = io.BytesIO()
    Dataset(ds).save_as(bare, implicit_vr=True, little_endian=True, enforce_file_format=False)
    return full.getvalue(), bare.getvalue()


# ----------------------------------------------------------------------------------------- strategy

INTERESTING = (b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00", b"\xff\xff", b"\x7f\xff", b"\x80\x00",
               b"\x00\x00\x00\x00", b"\xff\xff\xff\xff", b"\x7f\xff\xff\xff", b"\xff\xff\xff\x7f",
               b"\x00\x00\x01\x00", b"\x00\x01\x00\x00", b"\xff\xd9", b"\xff\xda", b"IEND", b"DICM")


def mutation_strategy():
    """Hypothesis strategy of one mutation: a tuple ``(kind, position, argument)``."""
    from hypothesis import strategies as st

    pos = st.one_of(st.integers(0, 2048), st.integers(0, 2**31 - 1))  # half in the headers
    return st.one_of(
        st.tuples(st.just("flip"), pos, st.integers(1, 255)),
        st.tuples(st.just("overwrite"), pos, st.binary(min_size=1, max_size=8)),
        st.tuples(st.just("interesting"), pos, st.sampled_from(INTERESTING)),
        st.tuples(st.just("insert"), pos, st.binary(min_size=1, max_size=64)),
        st.tuples(st.just("delete"), pos, st.integers(1, 512)),
        st.tuples(st.just("duplicate"), pos, st.integers(1, 256)),
        st.tuples(st.just("truncate"), pos, st.just(0)),
    )


def mutate(data: bytes, mutations: list[tuple[str, int, Any]]) -> bytes:
    """Apply Hypothesis-drawn mutations to ``data`` (positions taken modulo the current length)."""
    buf = bytearray(data)
    for kind, pos, arg in mutations:
        if not buf:
            break
        i = pos % len(buf)
        if kind == "flip":
            buf[i] ^= arg
        elif kind in ("overwrite", "interesting"):
            buf[i : i + len(arg)] = arg
        elif kind == "insert":
            buf[i:i] = arg
        elif kind == "delete":
            del buf[i : i + arg]
        elif kind == "duplicate":
            buf[i:i] = buf[i : i + arg]
        elif kind == "truncate":
            del buf[max(i, 1) :]
    return bytes(buf)


# ----------------------------------------------------------------------------------------- runner


@dataclass
class FuzzStats:
    """What a fuzz run found."""

    inputs: int = 0
    results: int = 0
    read_errors: int = 0
    failures: list[dict[str, Any]] = field(default_factory=list)
    slow: list[dict[str, Any]] = field(default_factory=list)
    max_s: float = 0.0
    max_wall_s: float = 0.0
    total_s: float = 0.0
    per_seed: Counter = field(default_factory=Counter)
    error_kinds: Counter = field(default_factory=Counter)
    rss_mb: list[float] = field(default_factory=list)
    interrupted: bool = False
    sample: list[bytes] = field(default_factory=list)
    leak_rss_mb: list[float] = field(default_factory=list)

    def ok(self) -> bool:
        return not self.failures and not self.slow


def rss_mb() -> float:
    """Resident memory of this process now, in MB (Linux /proc; 0 elsewhere)."""
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        return 0.0


def _error_kind(message: str) -> str:
    """A short class of an ImageReadError message (for the summary): its words before any detail."""
    text = message.split(": ", 1)[-1]
    for sep in (" (", ":", ";"):
        text = text.split(sep, 1)[0]
    return " ".join(text.split()[:6])


def run_fuzz(seeds: dict[str, bytes], examples: int, *, seed: int = 0, save_dir: Path | None = None,
             progress: bool = False, before_each: Callable[[], None] | None = None,
             leak_rounds: int = 0, sample_size: int = 500) -> FuzzStats:
    """Run ``examples`` Hypothesis-generated inputs through the readers and collect statistics.

    Never raises for a reader failure: every unexpected exception, and every input slower than
    :data:`HANG_S`, is recorded in the returned stats (and written to ``save_dir`` if given).
    ``before_each`` is called before each input (the command line re-arms its watchdog there).

    Resident memory during the run also counts Hypothesis's own bookkeeping, which grows with the
    number of examples. So, with ``leak_rounds``, a sample of ``sample_size`` generated inputs is
    read again ``leak_rounds`` times after the run, without Hypothesis: a leak in the readers shows
    as RSS growing from round to round (``stats.leak_rss_mb``).
    """
    from hypothesis import HealthCheck, Phase, given, seed as hyp_seed, settings
    from hypothesis import strategies as st

    from deephealth.readers import ImageReadError, read_image

    names = sorted(seeds)
    stats = FuzzStats()
    if save_dir:
        save_dir.mkdir(parents=True, exist_ok=True)

    def record(kind: str, name: str, data: bytes, detail: str, elapsed: float) -> dict[str, Any]:
        item = {"kind": kind, "seed_file": name, "detail": detail, "seconds": round(elapsed, 3), "bytes": len(data)}
        if save_dir:
            path = save_dir / f"{kind}-{len(stats.failures) + len(stats.slow):04d}-{name}"
            path.write_bytes(data)
            item["saved"] = str(path)
        return item

    @hyp_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, phases=[Phase.generate],
              suppress_health_check=list(HealthCheck), derandomize=False)
    @given(st.integers(0, len(names) - 1), st.lists(mutation_strategy(), min_size=1, max_size=8),
           st.sampled_from([None, 224]))
    def one(index: int, mutations: list, target: int | None) -> None:
        name = names[index]
        data = mutate(seeds[name], mutations)
        if leak_rounds and stats.inputs % max(1, examples // sample_size) == 0 and len(stats.sample) < sample_size:
            stats.sample.append(data)
        if before_each:
            before_each()
        t0, c0 = time.perf_counter(), time.thread_time()
        try:
            read_image(data, name="fuzz", target_size=target)
            stats.results += 1
        except ImageReadError as exc:
            stats.read_errors += 1
            stats.error_kinds[_error_kind(str(exc))] += 1
        except Exception as exc:  # noqa: BLE001 - exactly what the fuzz run looks for
            stats.failures.append(record("exception", name, data, f"{type(exc).__name__}: {exc}"[:300],
                                         time.perf_counter() - t0))
        # CPU time of this thread: on a shared machine (training at a higher priority) the wall
        # time mostly measures waiting for a core; a hang burns CPU (or blocks, caught by the watchdog).
        elapsed = time.thread_time() - c0
        wall = time.perf_counter() - t0
        stats.inputs += 1
        stats.per_seed[name] += 1
        stats.total_s += elapsed
        stats.max_s = max(stats.max_s, elapsed)
        stats.max_wall_s = max(stats.max_wall_s, wall)
        if elapsed > HANG_S:
            stats.slow.append(record("slow", name, data, f"{elapsed:.2f} s CPU ({wall:.2f} s wall)", elapsed))
        if stats.inputs % 1000 == 0:
            stats.rss_mb.append(rss_mb())
            if progress:
                print(f"  {stats.inputs:>7} inputs, {stats.results} results, {stats.read_errors} ImageReadError, "
                      f"{len(stats.failures)} failures, RSS {stats.rss_mb[-1]:.0f} MB", file=sys.stderr, flush=True)

    stats.rss_mb.append(rss_mb())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow/pydicom warn about the corrupt files we feed them
        try:
            one()
        except KeyboardInterrupt:  # SIGINT, or SIGTERM from the command line: report what was done
            stats.interrupted = True
        stats.rss_mb.append(rss_mb())
        for _ in range(leak_rounds):
            for data in stats.sample:
                if before_each:
                    before_each()
                try:
                    read_image(data, name="fuzz")
                except ImageReadError:
                    pass
            stats.leak_rss_mb.append(rss_mb())
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--examples", type=int, default=10_000, help="inputs to generate (the full run: 100000)")
    ap.add_argument("--seed", type=int, default=0, help="Hypothesis random seed")
    ap.add_argument("--data-root", default=None, help="folder with chest_xray_224/ and dicom/ (default: ../shared/data)")
    ap.add_argument("--save-dir", default=None, help="write failing and slow inputs here")
    ap.add_argument("--watchdog", type=float, default=60.0, help="dump stacks and exit if one input hangs this long (s)")
    ap.add_argument("--leak-rounds", type=int, default=5,
                    help="afterwards, read a sample of 500 generated inputs this many times, watching RSS")
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    args = ap.parse_args(argv)

    import hypothesis
    import PIL
    import pydicom

    from deephealth.cpu import describe
    from deephealth.paths import data_root

    root = Path(args.data_root) if args.data_root else data_root()
    seeds = make_seeds(root)
    print(f"reader fuzz run - {describe()}, {os.cpu_count()} CPU(s), Python {platform.python_version()}, "
          f"Hypothesis {hypothesis.__version__}, Pillow {PIL.__version__}, pydicom {pydicom.__version__}")
    print(f"{len(seeds)} seed files: " + ", ".join(f"{k} ({len(v) // 1024} KiB)" for k, v in sorted(seeds.items())))
    signal.signal(signal.SIGTERM, signal.default_int_handler)  # stop early, still print the figures
    t0 = time.perf_counter()
    try:
        stats = run_fuzz(seeds, args.examples, seed=args.seed, save_dir=Path(args.save_dir) if args.save_dir else None,
                         progress=True, leak_rounds=args.leak_rounds,
                         before_each=lambda: faulthandler.dump_traceback_later(args.watchdog, exit=True))
    finally:
        faulthandler.cancel_dump_traceback_later()
    wall = time.perf_counter() - t0

    rss = stats.rss_mb
    if stats.interrupted:
        print(f"\ninterrupted after {stats.inputs} of {args.examples} inputs")
    print(f"\n{stats.inputs} inputs in {wall:.0f} s ({stats.inputs / wall:.0f}/s): {stats.results} read, "
          f"{stats.read_errors} ImageReadError, {len(stats.failures)} other exceptions, "
          f"{len(stats.slow)} slower than {HANG_S:.0f} s of CPU (slowest {stats.max_s * 1000:.0f} ms CPU, "
          f"{stats.max_wall_s * 1000:.0f} ms wall; mean {stats.total_s / max(stats.inputs, 1) * 1000:.1f} ms CPU)")
    try:
        print(f"load average at the end: {os.getloadavg()[0]:.1f} (other processes share these cores)")
    except OSError:
        pass
    print(f"resident memory: {rss[0]:.0f} MB at start, {max(rss):.0f} MB peak, {rss[-1]:.0f} MB at the end "
          "(includes Hypothesis's own bookkeeping, which grows with the examples)")
    if stats.leak_rss_mb:
        print(f"leak check: {len(stats.sample)} of the generated inputs read {len(stats.leak_rss_mb)} more times "
              f"without Hypothesis, RSS after each round: {', '.join(f'{v:.0f}' for v in stats.leak_rss_mb)} MB")
    print("inputs per seed: " + ", ".join(f"{k} {v}" for k, v in sorted(stats.per_seed.items())))
    print("most common refusals:")
    for kind, n in stats.error_kinds.most_common(12):
        print(f"  {n:>7}  {kind}")
    for item in stats.failures[:20] + stats.slow[:20]:
        print(f"FAIL {item}")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "cpu": describe(), "inputs": stats.inputs, "interrupted": stats.interrupted, "results": stats.results, "read_errors": stats.read_errors,
            "failures": stats.failures, "slow": stats.slow, "max_cpu_ms": stats.max_s * 1000,
            "max_wall_ms": stats.max_wall_s * 1000, "mean_cpu_ms": stats.total_s / max(stats.inputs, 1) * 1000,
            "wall_s": wall,
            "rss_mb": {"start": rss[0], "peak": max(rss), "end": rss[-1]}, "leak_check_rss_mb": stats.leak_rss_mb,
            "refusals": dict(stats.error_kinds.most_common()),
        }, indent=2) + "\n")
    return 0 if stats.ok() else 1


if __name__ == "__main__":
    sys.exit(main())
