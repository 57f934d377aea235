"""Metrics, bootstrap, plots and report of deephealth.evaluation on hand-computed examples."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

from deephealth.evaluation.bootstrap import (
    HEADLINE_METRICS,
    bootstrap_ci,
    patient_resample_weights,
    weighted_auroc,
    weighted_metrics,
)
from deephealth.evaluation.metrics import calibration_metrics, compute_metrics, ece_bin_index
from deephealth.evaluation.report import (
    build_report,
    data_fingerprint,
    load_metrics,
    render_markdown,
    report_data_root,
    reproducible_part,
    write_report,
)
from deephealth.labels import INTENDED_USE
from deephealth.paths import portable_path

# Eight images, computed by hand below. Predictions (arg-max): 0, 0, 1, 1, 1, 2, 2, 0.
Y = np.array([0, 0, 0, 1, 1, 1, 2, 2])
P = np.array(
    [
        [0.70, 0.20, 0.10],  # normal, right, confidence .70 (bin 10)
        [0.50, 0.30, 0.20],  # normal, right, .50 (bin 7); 1 - P(normal) = 0.5 exactly: pneumonia at 0.5
        [0.25, 0.65, 0.10],  # normal -> bacterial, .65 (bin 9)
        [0.05, 0.85, 0.10],  # bacterial, right, .85 (bin 12)
        [0.30, 0.42, 0.28],  # bacterial, right, .42 (bin 6)
        [0.10, 0.25, 0.65],  # bacterial -> viral, .65 (bin 9)
        [0.15, 0.20, 0.65],  # viral, right, .65 (bin 9)
        [0.45, 0.35, 0.20],  # viral -> normal, .45 (bin 6)
    ]
)


def close(a, b, tol=1e-9):
    return a is not None and abs(a - b) <= tol


# --------------------------------------------------------------------------------------------
# compute_metrics


def test_three_class_metrics_by_hand():
    m = compute_metrics(Y, P)
    tc = m["three_class"]
    assert m["n"] == 8 and m["support"] == {"normal": 3, "bacterial": 3, "viral": 2}
    assert tc["confusion_matrix"] == [[2, 1, 0], [0, 2, 1], [1, 0, 1]]
    assert close(tc["accuracy"], 5 / 8)
    assert close(tc["balanced_accuracy"], (2 / 3 + 2 / 3 + 1 / 2) / 3)
    assert close(tc["macro_f1"], (2 / 3 + 2 / 3 + 1 / 2) / 3)
    pc = tc["per_class"]
    assert close(pc["normal"]["precision"], 2 / 3) and close(pc["normal"]["sensitivity"], 2 / 3)
    assert close(pc["normal"]["specificity"], 4 / 5) and close(pc["bacterial"]["specificity"], 4 / 5)
    assert close(pc["viral"]["precision"], 1 / 2) and close(pc["viral"]["specificity"], 5 / 6)
    assert close(pc["viral"]["f1"], 1 / 2)
    # One-vs-rest AUROC by counting pairs (ties count 1/2):
    assert close(pc["normal"]["auroc"], 13 / 15)
    assert close(pc["bacterial"]["auroc"], 11 / 15)
    assert close(pc["viral"]["auroc"], 9 / 12)
    assert close(tc["macro_auroc"], (13 / 15 + 11 / 15 + 9 / 12) / 3)
    # and scikit-learn agrees
    assert close(tc["balanced_accuracy"], balanced_accuracy_score(Y, P.argmax(1)))
    assert close(tc["macro_f1"], f1_score(Y, P.argmax(1), average="macro"))


def test_pneumonia_vs_normal_protocol_by_hand():
    b = compute_metrics(Y, P)["binary"]["pneumonia_vs_normal"]
    assert (b["positive"], b["negative"], b["threshold"]) == ("pneumonia", "normal", 0.5)
    # score 1 - P(normal) = .30 .50 .75 | .95 .70 .90 .85 .55 ; score >= 0.5 is pneumonia
    assert b["confusion"] == {"tn": 1, "fp": 2, "fn": 0, "tp": 5}
    assert close(b["accuracy"], 6 / 8) and close(b["sensitivity"], 1.0) and close(b["specificity"], 1 / 3)
    assert close(b["ppv"], 5 / 7) and close(b["npv"], 1.0)
    assert close(b["auroc"], 13 / 15)


def test_bacterial_vs_viral_protocol_by_hand():
    b = compute_metrics(Y, P)["binary"]["bacterial_vs_viral"]
    assert (b["positive"], b["negative"], b["n"]) == ("viral", "bacterial", 5)
    # score P(viral)/(P(bact)+P(viral)) on true bacterial/viral: .105 .400 .722 | .765 .364
    assert b["confusion"] == {"tn": 2, "fp": 1, "fn": 1, "tp": 1}
    assert close(b["accuracy"], 3 / 5) and close(b["sensitivity"], 1 / 2) and close(b["specificity"], 2 / 3)
    assert close(b["auroc"], 4 / 6)


def test_operating_point_from_metadata_is_reported_in_addition():
    m = compute_metrics(Y, P, {"pneumonia_vs_normal": {"threshold": 0.8}, "bacterial_vs_viral": 0.75, "other": 1})
    pn = m["binary"]["pneumonia_vs_normal"]
    assert pn["threshold"] == 0.5 and close(pn["sensitivity"], 1.0)  # default still there
    op = pn["operating_point"]
    # at 0.8: pneumonia = .95 .90 .85 -> tp 3, fn 2; normals all below -> tn 3
    assert op["threshold"] == 0.8 and op["confusion"] == {"tn": 3, "fp": 0, "fn": 2, "tp": 3}
    assert close(op["sensitivity"], 3 / 5) and close(op["specificity"], 1.0)
    bv = m["binary"]["bacterial_vs_viral"]["operating_point"]
    assert bv["confusion"] == {"tn": 3, "fp": 0, "fn": 1, "tp": 1}


def test_calibration_by_hand():
    c = calibration_metrics(Y, P)
    # bins (15, width 1/15): bin 6 {.42 right, .45 wrong}, bin 7 {.50 right}, bin 9 {.65 x3, 1 right},
    # bin 10 {.70 right}, bin 12 {.85 right}
    ece = (2 * abs(0.5 - 0.435) + abs(1 - 0.5) + 3 * abs(1 / 3 - 0.65) + abs(1 - 0.7) + abs(1 - 0.85)) / 8
    assert close(c["ece"], ece) and close(c["ece"], 0.25375)
    assert [b["count"] for b in c["bins"]] == [0, 0, 0, 0, 0, 0, 2, 1, 0, 3, 1, 0, 1, 0, 0]
    assert close(c["bins"][9]["accuracy"], 1 / 3) and close(c["bins"][9]["confidence"], 0.65)
    assert c["bins"][0]["accuracy"] is None
    per_image = [0.14, 0.38, 0.995, 0.035, 0.5048, 0.995, 0.185, 0.965]  # sum_k (p_k - onehot_k)^2
    assert close(c["brier"], sum(per_image) / 8)
    p_true = [0.70, 0.50, 0.25, 0.85, 0.42, 0.25, 0.65, 0.20]
    assert close(c["nll"], -sum(math.log(p) for p in p_true) / 8)


def test_ece_bins_are_right_closed():
    edges = np.array([0.0, 1 / 15, 0.5, 0.5000001, 1.0])
    assert ece_bin_index(edges).tolist() == [0, 0, 7, 7, 14]
    assert ece_bin_index(np.array([7.5 / 15])).tolist() == [7]


def test_perfect_and_uninformative_predictions():
    y = np.array([0, 1, 2, 2])
    m = compute_metrics(y, np.eye(3)[y])
    assert m["three_class"]["accuracy"] == 1.0 and m["calibration"]["ece"] == 0.0
    assert m["calibration"]["brier"] == 0.0 and m["calibration"]["nll"] == 0.0
    assert m["binary"]["bacterial_vs_viral"]["auroc"] == 1.0
    flat = compute_metrics(y, np.full((4, 3), 1 / 3))
    assert flat["three_class"]["per_class"]["viral"]["auroc"] == 0.5
    assert close(flat["calibration"]["nll"], math.log(3))


def test_auroc_is_none_when_one_class_is_missing():
    y = np.array([0, 0, 1])
    m = compute_metrics(y, np.array([[0.6, 0.3, 0.1], [0.5, 0.4, 0.1], [0.2, 0.7, 0.1]]))
    assert m["three_class"]["per_class"]["viral"]["auroc"] is None
    assert m["three_class"]["per_class"]["viral"]["sensitivity"] is None
    assert m["binary"]["bacterial_vs_viral"]["auroc"] is None  # only bacterial images


@pytest.mark.parametrize(
    "y, p, match",
    [
        (np.array([0, 1]), np.array([[0.5, 0.5, 0.0]]), "need y_true"),
        (np.array([0, 3]), np.full((2, 3), 1 / 3), "values must be in"),
        (np.array([0, 1]), np.array([[0.5, 0.5, 0.5], [0.2, 0.3, 0.5]]), "sum to 1"),
        (np.array([0, 1]), np.array([[np.nan, 0.5, 0.5], [0.2, 0.3, 0.5]]), "finite"),
        (np.array([], dtype=int), np.zeros((0, 3)), "no images"),
    ],
)
def test_bad_inputs_are_refused(y, p, match):
    with pytest.raises(ValueError, match=match):
        compute_metrics(y, p)


# --------------------------------------------------------------------------------------------
# bootstrap


def _random_set(n=240, seed=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    logits = rng.normal(size=(n, 3))
    logits[np.arange(n), y] += 1.2
    p = np.exp(logits)
    p = np.round(p / p.sum(1, keepdims=True), 2)  # rounding makes ties, as real scores have
    p[:, 2] = 1.0 - p[:, 0] - p[:, 1]
    p = np.clip(p, 0.0, 1.0)
    patients = [f"child{i // 3}" for i in range(n)]  # 3 images per child
    return y, p, patients


def test_weighted_auroc_equals_sklearn_on_repeated_data():
    rng = np.random.default_rng(0)
    truth = rng.random(60) < 0.4
    score = np.round(rng.random(60), 1)  # many ties
    weights = rng.integers(0, 4, size=(5, 60))
    got = weighted_auroc(truth, score, weights)
    for r in range(5):
        idx = np.repeat(np.arange(60), weights[r])
        assert got[r] == pytest.approx(roc_auc_score(truth[idx], score[idx]), abs=1e-12)
    only_pos = np.where(truth, 1, 0)[None, :]
    assert np.isnan(weighted_auroc(truth, score, only_pos))[0]


def test_weighted_metrics_equal_compute_metrics():
    y, p, _ = _random_set()
    rng = np.random.default_rng(1)
    weights = np.vstack([np.ones(len(y), dtype=int), rng.integers(0, 3, size=(2, len(y)))])
    got = weighted_metrics(y, p, weights)
    assert set(got) == set(HEADLINE_METRICS)
    for r in range(3):
        idx = np.repeat(np.arange(len(y)), weights[r])
        m = compute_metrics(y[idx], p[idx])
        tc, cal = m["three_class"], m["calibration"]
        expected = {
            "accuracy": tc["accuracy"],
            "balanced_accuracy": tc["balanced_accuracy"],
            "macro_f1": tc["macro_f1"],
            "ece": cal["ece"],
            "brier": cal["brier"],
            "nll": cal["nll"],
            **{f"auroc_{c}": tc["per_class"][c]["auroc"] for c in ("normal", "bacterial", "viral")},
            **{
                f"{proto}.{k}": m["binary"][proto][k]
                for proto in ("pneumonia_vs_normal", "bacterial_vs_viral")
                for k in ("accuracy", "sensitivity", "specificity", "auroc")
            },
        }
        for k, v in expected.items():
            assert got[k][r] == pytest.approx(v, abs=1e-10), (r, k)


def test_resample_weights_follow_patients():
    ids = ["a", "a", "b", "c", "c", "c", "d"]
    w = patient_resample_weights(ids, n_resamples=200, seed=5)
    assert w.shape == (200, 7) and w.dtype == np.int64
    # images of one patient always share their weight
    assert np.all(w[:, 0] == w[:, 1]) and np.all(w[:, 3] == w[:, 4]) and np.all(w[:, 4] == w[:, 5])
    # each resample draws 4 patients: per-patient counts (one image per patient) sum to 4
    assert np.all(w[:, [0, 2, 3, 6]].sum(axis=1) == 4)
    assert (w[:, 0] >= 2).any()  # a patient can be drawn twice and then counts twice
    assert np.array_equal(w, patient_resample_weights(ids, n_resamples=200, seed=5))
    assert not np.array_equal(w, patient_resample_weights(ids, n_resamples=200, seed=6))


def test_bootstrap_resamples_patients_not_images():
    # Patient A: three normal images, all right; patient B: one normal image, wrong.
    # Drawing 2 patients gives accuracy 1 (AA), 3/4 (AB) or 0 (BB); image resampling would give others.
    y = np.array([0, 0, 0, 0])
    p = np.array([[0.9, 0.05, 0.05]] * 3 + [[0.1, 0.8, 0.1]])
    w = patient_resample_weights(["A", "A", "A", "B"], n_resamples=1000, seed=0)
    acc = weighted_metrics(y, p, w)["accuracy"]
    assert set(np.round(acc, 12).tolist()) == {0.0, 0.75, 1.0}
    frac_ab = np.mean(acc == 0.75)
    assert 0.45 < frac_ab < 0.55  # P(AB) = 1/2
    ci = bootstrap_ci(y, p, ["A", "A", "A", "B"], n_resamples=1000, seed=0)
    assert ci["accuracy"] == (0.0, 1.0)
    assert ci.n_patients == 2 and ci.n_images == 4


def test_bootstrap_skips_and_counts_undefined_resamples():
    # Patient A has the normal images, patient B the viral one: a resample of AA or BB has one class.
    y = np.array([0, 0, 2])
    p = np.array([[0.8, 0.1, 0.1], [0.6, 0.2, 0.2], [0.3, 0.1, 0.6]])
    ids = ["A", "A", "B"]
    ci = bootstrap_ci(y, p, ids, n_resamples=400, seed=2)
    w = patient_resample_weights(ids, n_resamples=400, seed=2)
    one_class = int(np.sum((w[:, 0] == 0) | (w[:, 2] == 0)))
    assert 0 < one_class < 400
    assert ci.skipped["auroc_normal"] == one_class
    assert ci.skipped["pneumonia_vs_normal.auroc"] == one_class
    assert ci.skipped["auroc_bacterial"] == 400  # never any bacterial image
    assert all(math.isnan(v) for v in ci["auroc_bacterial"])
    assert ci["auroc_normal"] == (1.0, 1.0)
    d = ci.describe()
    assert d["skipped"]["auroc_normal"] == one_class and d["n_resamples"] == 400


def test_bootstrap_is_reproducible_and_brackets_the_estimate():
    y, p, patients = _random_set()
    a = bootstrap_ci(y, p, patients, n_resamples=1000, seed=0)
    b = bootstrap_ci(y, p, patients, n_resamples=1000, seed=0)
    c = bootstrap_ci(y, p, patients, n_resamples=1000, seed=1)
    assert dict(a) == dict(b)
    assert dict(a) != dict(c)
    assert set(a) == set(HEADLINE_METRICS)
    m = compute_metrics(y, p)
    lo, hi = a["accuracy"]
    assert lo < m["three_class"]["accuracy"] < hi
    lo, hi = a["pneumonia_vs_normal.auroc"]
    assert lo < m["binary"]["pneumonia_vs_normal"]["auroc"] < hi
    assert 0.0 < hi - lo < 0.2


def test_bootstrap_is_fast_on_a_test_split_sized_set():
    y, p, patients = _random_set(n=624, seed=4)
    t0 = time.perf_counter()
    bootstrap_ci(y, p, patients, n_resamples=1000, seed=0)
    assert time.perf_counter() - t0 < 10.0


def test_bootstrap_refuses_mismatched_patients():
    with pytest.raises(ValueError, match="one patient id per image"):
        bootstrap_ci(Y, P, ["a"] * 3)


# --------------------------------------------------------------------------------------------
# report


def _rows(tmp_path):
    names = ["normal", "bacterial", "viral"]
    rows = []
    for i, (y, p) in enumerate(zip(Y, P)):
        f = tmp_path / "data" / "test" / f"img{i}.jpeg"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
        rows.append({"path": str(f), "label": names[y], "label_index": int(y), "patient_id": f"p{i // 2}",
                     "predicted": names[int(np.argmax(p))], "probs": [float(v) for v in p], "error": None})
    bad = tmp_path / "data" / "test" / "broken.jpeg"
    bad.write_bytes(b"not an image")
    rows.append({"path": str(bad), "label": "normal", "label_index": 0, "patient_id": "p9", "predicted": None,
                 "probs": None, "error": f"{bad}: not a JPEG file"})
    return rows


def _report(tmp_path, date="2026-01-01T00:00:00+00:00"):
    return build_report(
        y_true=Y, probs=P, rows=_rows(tmp_path),
        model={"name": "toy", "version": "1.0", "sha256": "ab" * 32, "temperature": 1.25},
        data={"dataset": "data", "kind": "kermany-folder", "split": "test", "root": str(tmp_path / "data")},
        run={"command": "deephealth evaluate --data data", "date_utc": date},
        n_resamples=1000, seed=0,
    )


def test_report_files_and_contents(tmp_path):
    report = _report(tmp_path)
    out = tmp_path / "report"
    written = write_report(report, Y, P, _rows(tmp_path), out, data_root=tmp_path / "data")
    for name in ("metrics.json", "report.md", "predictions.csv", "misclassified.csv", "confusion_matrix.png",
                 "roc_one_vs_rest.png", "roc_binary.png", "reliability.png"):
        assert (out / name).is_file(), name
    for key in ("confusion_matrix", "roc_one_vs_rest", "roc_binary", "reliability"):
        with Image.open(written[key]) as im:
            assert im.format == "PNG" and im.size[0] > 300 and im.size[1] > 300
            assert np.asarray(im.convert("L")).std() > 10  # not blank

    data = json.loads((out / "metrics.json").read_text())
    assert data["metrics"]["three_class"]["accuracy"] == 0.625
    assert data["metrics"]["calibration"]["ece"] == 0.25375
    assert data["data"]["n_failed"] == 1 and data["data"]["n_scored"] == 8 and data["data"]["n_patients"] == 4
    # the reader's message names the file as the rest of the report does, without the data folder
    assert data["failures"] == [{"file": "test/broken.jpeg", "error": "test/broken.jpeg: not a JPEG file"}]
    # the data folder is recorded portably (relative to the current directory or "<...>/<last two parts>")
    assert data["run"]["data_root"] == portable_path(tmp_path / "data") and data["run"]["data_root"][0] != "/"
    assert str(tmp_path) not in (out / "metrics.json").read_text()
    lo, hi = data["confidence_intervals"]["intervals"]["accuracy"]
    assert 0.0 <= lo <= 0.625 <= hi <= 1.0
    head = data["headline"]
    assert head["n_images"] == 8 and head["n_patients"] == 4 and head["ci_level"] == 0.95
    assert head["metrics"]["three_class.accuracy"] == {"value": 0.625, "ci_low": lo, "ci_high": hi}
    assert head["metrics"]["three_class.auroc_bacterial"]["value"] == round(11 / 15, 6)
    assert head["metrics"]["bacterial_vs_viral.sensitivity"]["value"] == 0.5
    assert head["metrics"]["calibration.ece"]["value"] == 0.25375
    assert len(head["metrics"]) == 17
    mis = data["misclassified"]
    assert [m["file"] for m in mis] == ["test/img2.jpeg", "test/img5.jpeg", "test/img7.jpeg"]  # .65, .65, .45
    assert mis[0] == {"file": "test/img2.jpeg", "patient_id": "p1", "true": "normal", "predicted": "bacterial",
                      "p_normal": 0.25, "p_bacterial": 0.65, "p_viral": 0.1}

    csv_lines = (out / "misclassified.csv").read_text().splitlines()
    assert csv_lines[0] == "file,patient_id,true,predicted,p_normal,p_bacterial,p_viral"
    assert csv_lines[1] == "test/img2.jpeg,p1,normal,bacterial,0.250000,0.650000,0.100000"
    pred_lines = (out / "predictions.csv").read_text().splitlines()
    assert len(pred_lines) == 10 and pred_lines[-1].endswith("not a JPEG file")

    md = (out / "report.md").read_text()
    assert "`deephealth evaluate --data data`" in md
    assert "2026-01-01T00:00:00+00:00" in md
    assert "ab" * 32 in md and INTENDED_USE in md
    assert "| 3-class accuracy | 62.5 % (" in md
    assert "Kermany et al. 2018 | pneumonia vs normal | sensitivity | 93.2 % | 100.0 % (" in md
    assert "![Reliability diagram](reliability.png)" in md
    assert "`test/img2.jpeg` | p1 | normal | bacterial | 0.250 | 0.650 | 0.100 |" in md
    assert "test/broken.jpeg" in md and "could not be read (1)" in md


def test_write_report_resolves_the_portable_data_root_or_says_where_it_looked(tmp_path, monkeypatch):
    # run from a folder two levels below: the data folder is then recorded as "<...>/<tmp name>/data"
    (tmp_path / "deep" / "er").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "deep" / "er")
    report = _report(tmp_path)
    assert report["run"]["data_root"] == f"<...>/{tmp_path.name}/data"
    rows = _rows(tmp_path)
    # The recorded folder "<...>/<tmp name>/data" is nowhere under an unrelated data root (one that
    # has a folder called "data" of its own: a folder of that name without the images does not count).
    (tmp_path / "elsewhere" / "data").mkdir(parents=True)
    monkeypatch.setenv("DEEPHEALTH_DATA_ROOT", str(tmp_path / "elsewhere" / "data"))
    with pytest.raises(FileNotFoundError) as err:
        write_report(report, Y, P, rows, tmp_path / "lost")
    msg = str(err.value)
    assert f"recorded as '<...>/{tmp_path.name}/data'" in msg and "DEEPHEALTH_DATA_ROOT" in msg
    assert str(tmp_path / "elsewhere" / "data") in msg and not (tmp_path / "lost").exists()

    # With the data root configured, the recorded folder is found under it, and file names are relative.
    monkeypatch.setenv("DEEPHEALTH_DATA_ROOT", str(tmp_path))
    out = tmp_path / "found"
    write_report(report, Y, P, rows, out)
    pred_lines = (out / "predictions.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in pred_lines[1:]] == [f"test/img{i}.jpeg" for i in range(8)] + [
        "test/broken.jpeg"]
    # Read back from metrics.json alone: the folder holding the files it lists.
    back = load_metrics(out / "metrics.json")
    assert report_data_root(back) == (tmp_path / "data").resolve()
    assert report_data_root(back, data_root="/given/as/is") == Path("/given/as/is")
    # Re-rendering report.md from metrics.json gives the same file.
    assert render_markdown(back) == (out / "report.md").read_text()
    (tmp_path / "data" / "test" / "img2.jpeg").unlink()  # a listed (misclassified) file is gone
    with pytest.raises(FileNotFoundError, match="do not hold the report's files"):
        report_data_root(back)


def test_report_is_reproducible_apart_from_the_run_section(tmp_path):
    a = _report(tmp_path, date="2026-01-01T00:00:00+00:00")
    b = _report(tmp_path, date="2027-06-30T12:00:00+00:00")
    assert a["run"] != b["run"]
    assert json.dumps(reproducible_part(a), sort_keys=True) == json.dumps(reproducible_part(b), sort_keys=True)
    # the data fingerprint follows the file contents, not where the dataset lies
    rows = _rows(tmp_path)
    assert data_fingerprint(rows, tmp_path / "data") == a["data"]["files_sha256"]
    (tmp_path / "data" / "test" / "img0.jpeg").write_bytes(b"changed")
    assert data_fingerprint(rows, tmp_path / "data") != a["data"]["files_sha256"]


def test_metrics_and_bootstrap_follow_the_shipped_operating_point():
    """Two normals with pneumonia scores 0.55 and 0.3 and two pneumonias with 0.9 and 0.6: at arg-max the
    first normal (P = 0.45, 0.35, 0.2) is normal; at threshold 0.5 it is called bacterial."""
    from deephealth.evaluation.bootstrap import weighted_metrics
    from deephealth.evaluation.metrics import compute_metrics

    y = np.array([0, 0, 1, 2])
    p = np.array([[0.45, 0.35, 0.2], [0.7, 0.2, 0.1], [0.1, 0.8, 0.1], [0.4, 0.1, 0.5]])
    plain = compute_metrics(y, p)
    assert plain["three_class"]["accuracy"] == 1.0
    op = {"threshold": 0.5}
    at_op = compute_metrics(y, p, decision=op)
    assert at_op["three_class"]["confusion_matrix"][0] == [1, 1, 0]
    assert at_op["three_class"]["accuracy"] == 0.75
    pvn = at_op["binary"]["pneumonia_vs_normal"]
    assert pvn["threshold"] == 0.5 and pvn["specificity"] == 0.5 and pvn["sensitivity"] == 1.0
    w = weighted_metrics(y, p, np.ones((1, 4)), op)
    assert w["accuracy"][0] == 0.75 and w["pneumonia_vs_normal.specificity"][0] == 0.5


def test_resolve_portable_path_tries_as_recorded_then_under_the_configured_root(tmp_path):
    from deephealth.paths import resolve_portable_path

    root = tmp_path / "shared" / "data"
    (root / "chest_xray_224").mkdir(parents=True)
    (tmp_path / "main").mkdir()
    ds = (root / "chest_xray_224").resolve()
    # relative, as written from a checkout beside the data: against base first
    assert resolve_portable_path("../shared/data/chest_xray_224", base=tmp_path / "main",
                                 configured_root=tmp_path / "nowhere") == ds
    # the same from anywhere else, and the shortened and the old absolute forms: under the configured root
    for recorded in ("../shared/data/chest_xray_224", "<...>/data/chest_xray_224", "/old/machine/data/chest_xray_224"):
        assert resolve_portable_path(recorded, base=tmp_path / "nowhere", configured_root=root) == ds
    assert resolve_portable_path(str(ds), configured_root=tmp_path / "nowhere") == ds  # absolute and present
    assert resolve_portable_path("../shared/data", base=tmp_path / "nowhere", configured_root=root) == root.resolve()
    # a folder of the right name that fails the check is skipped
    with pytest.raises(FileNotFoundError, match="do not hold the report's files") as err:
        resolve_portable_path("<...>/data/chest_xray_224", configured_root=root, accept=lambda p: False)
    assert str(ds) in str(err.value)
    with pytest.raises(FileNotFoundError, match="no data folder was recorded"):
        resolve_portable_path("")
