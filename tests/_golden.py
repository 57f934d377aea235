"""Comparing fresh results with golden values recorded on another machine.

ONNX Runtime (and numpy's reductions) pick AVX-512 or AVX2 kernels at run time, so a probability
written with six decimals may differ in its last digit between two machines of the same kind
(0.628005 vs 0.628006). The rules used by every golden comparison of the suite:

* probabilities: within :data:`PROB_ATOL` (1e-4) of the golden value;
* labels, counts, file lists, strings: exact -- except at a *near tie*: a record whose decision
  quantity (top-2 probability margin, a binary score against its 0.5 threshold, the top-class
  confidence against an ECE bin edge) lies within twice the deviation actually observed of its
  boundary. A label flip there is tolerated and reported (``warnings.warn``), and counts may then
  differ by at most the number of near ties;
* metrics derived from probabilities (AUROC, ECE, Brier, NLL, confidence intervals): within
  :data:`METRIC_ATOL` (1e-4), plus :data:`PER_TIE_SLACK` per near tie.

A real change of the model or of preprocessing moves probabilities by far more than 1e-4 and
changes counts, so these tolerances still catch it (see tests/test_golden.py).
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

PROB_ATOL = 1e-4
"""Largest accepted difference of a probability from its golden value (machines differ by ~1e-6)."""
METRIC_ATOL = 1e-4
"""Largest accepted difference of a float metric (AUROC, ECE, CI bound...) without near ties."""
PER_TIE_SLACK = 0.02
"""Extra float tolerance per near tie (one record changing class moves a rate by 1/support)."""
ROUNDING = 1e-6
"""Golden files store 6 decimals: half a unit of the last digit on each side."""

CLASSES = ("normal", "bacterial", "viral")
ECE_BINS = 15


@dataclass
class PredictionDiff:
    """What differs between two prediction tables (same files, same order not required)."""

    max_dev: float = 0.0
    near_ties: list[str] = field(default_factory=list)
    flips: list[str] = field(default_factory=list)


def _decision_distances(p: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """(N, 3) probabilities -> (N,) distance of each record to its nearest decision boundary.

    ``threshold``: the pneumonia threshold of the model's operating point (0.5 without one).
    """
    s = np.sort(p, axis=1)
    margin = (s[:, -1] - s[:, -2]) / 2  # a shift of this much in each of the top two flips the label
    pneu = np.minimum(np.abs((1 - p[:, 0]) - 0.5), np.abs((1 - p[:, 0]) - threshold))
    bv = np.abs(p[:, 2] / np.maximum(p[:, 1] + p[:, 2], 1e-12) - 0.5)
    conf = p.max(axis=1)
    edges = np.arange(ECE_BINS + 1) / ECE_BINS
    edge = np.abs(conf[:, None] - edges[None, :]).min(axis=1)
    return np.minimum.reduce([margin, pneu, bv, edge])


def compare_predictions(
    golden: list[dict[str, str]], fresh: list[dict[str, str]], threshold: float = 0.5
) -> PredictionDiff:
    """Compare two ``predictions.csv`` tables (rows as read by ``csv.DictReader``).

    ``threshold``: the model's pneumonia threshold (``metadata.json`` -> ``operating_point``), a
    decision boundary besides the arg-max ones.

    Asserts: the same files; every probability within :data:`PROB_ATOL`; the same predicted label
    except at a near tie (reported with ``warnings.warn``). Returns the deviation and near ties.
    """
    g = {r["file"]: r for r in golden}
    f = {r["file"]: r for r in fresh}
    assert sorted(g) == sorted(f), f"files differ: {sorted(set(g) ^ set(f))[:5]}"
    files = sorted(g)
    pg = np.array([[float(g[k][f"p_{c}"]) for c in CLASSES] for k in files])
    pf = np.array([[float(f[k][f"p_{c}"]) for c in CLASSES] for k in files])
    dev = np.abs(pg - pf).max(axis=1)
    worst = int(dev.argmax())
    assert dev[worst] <= PROB_ATOL, (
        f"{files[worst]}: probabilities {pf[worst].tolist()} differ from golden {pg[worst].tolist()} "
        f"by {dev[worst]:.2g} (tolerance {PROB_ATOL})"
    )
    diff = PredictionDiff(max_dev=float(dev.max()))
    tie = _decision_distances(pg, threshold) <= 2 * diff.max_dev + ROUNDING
    diff.near_ties = [k for k, t in zip(files, tie) if t]
    for k, t in zip(files, tie):
        same = g[k]["predicted"] == f[k]["predicted"] and g[k]["true"] == f[k]["true"]
        if not same:
            assert t, f"{k}: predicted {f[k]['predicted']}, golden {g[k]['predicted']} (not at a tie)"
            diff.flips.append(k)
    if diff.near_ties:
        warnings.warn(
            f"{len(diff.near_ties)} record(s) at a near tie (within {2 * diff.max_dev + ROUNDING:.1g} of a decision "
            f"boundary), {len(diff.flips)} label flip(s) tolerated: {diff.near_ties[:5]}",
            stacklevel=2,
        )
    return diff


def assert_close(golden: Any, fresh: Any, *, ties: int = 0, path: str = "") -> None:
    """Recursively compare JSON-like values with the module's rules.

    Args:
        golden, fresh: dicts/lists/str/int/float/bool/None as loaded from JSON.
        ties: number of near-tie records; counts may differ by this much, floats by
            :data:`METRIC_ATOL` + ``ties *`` :data:`PER_TIE_SLACK`. Lists of records (e.g. the
            misclassified images) are then compared by their common items only, their lengths
            within ``ties``.
        path: where in the structure we are (for messages).
    Raises:
        AssertionError naming the first differing path.
    """
    where = path or "<root>"
    if isinstance(golden, dict):
        assert isinstance(fresh, dict), f"{where}: {type(fresh).__name__} instead of an object"
        assert sorted(golden) == sorted(fresh), f"{where}: keys {sorted(set(golden) ^ set(fresh))} differ"
        for k in golden:
            assert_close(golden[k], fresh[k], ties=ties, path=f"{path}.{k}" if path else k)
    elif isinstance(golden, list):
        assert isinstance(fresh, list), f"{where}: {type(fresh).__name__} instead of a list"
        if ties and golden and all(isinstance(x, dict) and "file" in x for x in golden + fresh):
            assert abs(len(golden) - len(fresh)) <= ties, f"{where}: {len(fresh)} items, golden {len(golden)}"
            fg = {x["file"]: x for x in golden}
            for x in fresh:
                if x["file"] in fg:
                    assert_close(fg[x["file"]], x, ties=ties, path=f"{where}[{x['file']}]")
            return
        assert len(golden) == len(fresh), f"{where}: {len(fresh)} items, golden {len(golden)}"
        for i, (a, b) in enumerate(zip(golden, fresh)):
            assert_close(a, b, ties=ties, path=f"{where}[{i}]")
    elif isinstance(golden, bool) or golden is None or isinstance(golden, str):
        assert fresh == golden, f"{where}: {fresh!r}, golden {golden!r}"
    elif isinstance(golden, int) and isinstance(fresh, int):
        assert abs(fresh - golden) <= ties, f"{where}: {fresh}, golden {golden}"
    elif isinstance(golden, (int, float)):
        assert isinstance(fresh, (int, float)) and not isinstance(fresh, bool), f"{where}: {fresh!r}, golden {golden!r}"
        tol = METRIC_ATOL + ties * PER_TIE_SLACK
        ok = (math.isnan(golden) and math.isnan(fresh)) or abs(fresh - golden) <= tol
        assert ok, f"{where}: {fresh}, golden {golden} (tolerance {tol:g})"
    else:
        assert fresh == golden, f"{where}: {fresh!r}, golden {golden!r}"
