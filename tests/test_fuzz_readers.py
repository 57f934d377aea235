"""Short fuzz run of the readers (about 1,000 Hypothesis-mutated real files): every input ends in a
result or ImageReadError, none takes more than 2 s of CPU. The full run (10^5 inputs) is
benchmarks/bench_fuzz.py; its figures are in the README's Reliability section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

pytest.importorskip("hypothesis")

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench_fuzz.py"
_spec = importlib.util.spec_from_file_location("bench_fuzz", _BENCH)
bench_fuzz = importlib.util.module_from_spec(_spec)
sys.modules.setdefault("bench_fuzz", bench_fuzz)  # dataclasses look their module up there
_spec.loader.exec_module(bench_fuzz)

pytestmark = pytest.mark.needs_data


def test_mutations_apply_as_drawn():
    data = bytes(range(10))
    assert bench_fuzz.mutate(data, [("flip", 12, 0xFF)]) == bytes([0, 1, 0xFD, 3, 4, 5, 6, 7, 8, 9])
    assert bench_fuzz.mutate(data, [("insert", 1, b"ab"), ("delete", 0, 1)]) == b"ab" + bytes(range(1, 10))
    assert bench_fuzz.mutate(data, [("truncate", 3, 0)]) == bytes(range(3))
    assert bench_fuzz.mutate(data, [("duplicate", 8, 5)]) == bytes(range(10)) + bytes([8, 9])
    assert bench_fuzz.mutate(data, [("interesting", 9, b"\xff\xff")]) == bytes(range(9)) + b"\xff\xff"


def test_short_fuzz_run_only_results_or_image_read_errors(data_root: Path, tmp_path: Path):
    seeds = bench_fuzz.make_seeds(data_root)
    assert {"normal.jpeg", "normal.png", "cr_chest_pa_rsna.dcm", "dx_bare"} <= set(seeds)
    stats = bench_fuzz.run_fuzz(seeds, 1000, seed=1, save_dir=tmp_path, leak_rounds=2, sample_size=300)
    assert stats.inputs == 1000
    assert stats.failures == [], stats.failures[:3]
    assert stats.slow == [], stats.slow[:3]
    # both outcomes happen: the run is not all refusals (or all successes)
    assert stats.results > 50 and stats.read_errors > 300, (stats.results, stats.read_errors)
    assert max(stats.rss_mb) - stats.rss_mb[0] < 500, stats.rss_mb
    # reading the same 300 inputs again does not grow the process (no leak in the readers). The
    # first round is a warm-up: after some orders of test files it still grew by ~13 MB (allocator
    # arenas, caches filled once), so growth is measured over the two rounds after it; a leak of
    # 5 MB or more per round of 300 inputs still fails.
    assert len(stats.sample) == 300
    rss = bench_fuzz.leak_check(stats.sample, 4)
    assert rss[-1] - rss[1] < 10, rss
