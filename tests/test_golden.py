"""The golden-comparison rules of tests/_golden.py: last-digit noise between machines passes, a real
change fails. Uses the released model's committed predictions (no model run)."""

from __future__ import annotations

import csv
import json
import warnings

import numpy as np
import pytest

from deephealth.calibration import decide
from deephealth.evaluation.metrics import compute_metrics
from deephealth.paths import default_model_dir

from _golden import CLASSES, assert_close, compare_predictions

PREDICTIONS = default_model_dir() / "report" / "predictions.csv"
_META = default_model_dir() / "metadata.json"
OPERATING_POINT = json.loads(_META.read_text()).get("operating_point") if _META.is_file() else None
THRESHOLD = OPERATING_POINT["threshold"] if OPERATING_POINT else 0.5
pytestmark = pytest.mark.skipif(not PREDICTIONS.is_file(), reason=f"no committed predictions at {PREDICTIONS}")


def _rows() -> list[dict[str, str]]:
    with PREDICTIONS.open(newline="") as fh:
        return [r for r in csv.DictReader(fh) if not r["error"]]


def _with_probs(rows: list[dict[str, str]], probs: np.ndarray, op: dict | None = OPERATING_POINT) -> list[dict[str, str]]:
    out = []
    for r, p in zip(rows, probs):
        r = dict(r)
        r.update({f"p_{c}": f"{v:.6f}" for c, v in zip(CLASSES, p)})
        r["predicted"] = CLASSES[int(decide(p, op))]  # the model's decision rule (None: arg-max)
        out.append(r)
    return out


def _arrays(rows: list[dict[str, str]]) -> tuple[np.ndarray, np.ndarray]:
    y = np.array([CLASSES.index(r["true"]) for r in rows])
    p = np.array([[float(r[f"p_{c}"]) for c in CLASSES] for r in rows])
    return y, p


def _metrics(y: np.ndarray, p: np.ndarray) -> dict:
    return json.loads(json.dumps(compute_metrics(y, p, decision=OPERATING_POINT)))  # as written to metrics.json


def test_last_digit_noise_passes():
    rows = _rows()
    y, p = _arrays(rows)
    rng = np.random.default_rng(0)
    noisy = p + rng.choice([-2e-6, -1e-6, 0.0, 1e-6, 2e-6], size=p.shape)  # what AVX2 vs AVX-512 gives
    noisy /= noisy.sum(axis=1, keepdims=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        diff = compare_predictions(rows, _with_probs(rows, noisy), THRESHOLD)
    assert 1e-6 <= diff.max_dev < 1e-5
    assert diff.flips == []  # the released model's test split has no record that close to a boundary
    assert_close(_metrics(y, p), _metrics(y, noisy), ties=len(diff.near_ties))


def test_a_real_change_fails():
    rows = _rows()
    y, p = _arrays(rows)
    # one confident, non-tied record changes its answer: the counts must catch it
    i = int(np.argmax(p.max(axis=1)))
    changed = p.copy()
    changed[i] = np.roll(changed[i], 1)
    fresh = _with_probs(rows, changed)
    with pytest.raises(AssertionError, match="differ from golden"):
        compare_predictions(rows, fresh, THRESHOLD)
    with pytest.raises(AssertionError):
        assert_close(_metrics(y, p), _metrics(y, changed))
    # a small systematic drift (3e-4 on every probability) is not noise either
    drift = np.clip(p + np.where(np.arange(3) == 0, 3e-4, -1.5e-4), 0, 1)
    with pytest.raises(AssertionError, match="tolerance"):
        compare_predictions(rows, _with_probs(rows, drift), THRESHOLD)


def test_label_flip_at_a_tie_is_tolerated_and_reported():
    rows = _rows()[:3]
    tied = np.array([[0.4, 0.4000004, 0.1999996], [0.9, 0.05, 0.05], [0.1, 0.2, 0.7]])
    golden = _with_probs(rows, tied, None)  # an arg-max model: the top-2 tie is a decision boundary
    flipped = tied.copy()
    flipped[0] = [0.4000006, 0.3999998, 0.1999996]  # within 1e-6: the label goes from bacterial to normal
    with pytest.warns(UserWarning, match="1 label flip"):
        diff = compare_predictions(golden, _with_probs(rows, flipped, None))
    assert diff.flips == [rows[0]["file"]]
    # counts may move by one per near tie, no more
    assert_close({"tp": 10, "auroc": 0.9}, {"tp": 11, "auroc": 0.91}, ties=1)
    with pytest.raises(AssertionError, match="tp"):
        assert_close({"tp": 10}, {"tp": 12}, ties=1)
    with pytest.raises(AssertionError, match="tp"):
        assert_close({"tp": 10}, {"tp": 11})
