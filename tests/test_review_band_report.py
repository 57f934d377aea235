"""The review band in the evaluation report and the stability figures, on sets counted by hand (issue 16).

The operating point below: threshold 0.5 (logit 0), pneumonia margin 1 logit (a film is pneumonia-vs-normal
borderline when 1 - P(normal) lies in (0.269, 0.731)) and type margin 0.5 (called pneumonia with
P(bacterial) / P(viral) in (0.607, 1.649)).
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from deephealth.evaluation import stability as st
from deephealth.evaluation.bootstrap import REVIEW_BAND_METRICS, review_band_ci
from deephealth.evaluation.metrics import review_band_metrics
from deephealth.evaluation.report import build_report, render_markdown, write_report


def _sig(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


BAND = {
    "rule": "review when ...",
    "quantile": 0.9,
    "pneumonia_logit_margin": 1.0,
    "type_logit_margin": 0.5,
    "pneumonia_probability_range": [_sig(-1.0), _sig(1.0)],
    "bacterial_share_range": [_sig(-0.5), _sig(0.5)],
    "n_films": 100,
    "n_views": 15,
}
OP = {"rule": "pneumonia when ...", "threshold": 0.5, "target_sensitivity": 0.95, "val_sensitivity": 0.95,
      "val_specificity": 0.9, "n_val": 100, "review_band": BAND}
OP_NO_BAND = {k: v for k, v in OP.items() if k != "review_band"}

# Eight films. Label at the operating point, review flag (P = pneumonia vs normal borderline, T = bacterial vs
# viral borderline), right or wrong:
Y = np.array([0, 0, 0, 1, 1, 2, 2, 2])
P = np.array(
    [
        [0.90, 0.05, 0.05],  # normal, -, right
        [0.60, 0.30, 0.10],  # normal (0.4 < 0.5), P, right
        [0.40, 0.50, 0.10],  # bacterial (0.6), P, wrong
        [0.10, 0.80, 0.10],  # bacterial, -, right
        [0.10, 0.45, 0.45],  # bacterial (tie goes to bacterial), T, right
        [0.10, 0.50, 0.40],  # bacterial (ln 1.25 = 0.22 < 0.5), T, wrong
        [0.05, 0.15, 0.80],  # viral, -, right
        [0.85, 0.05, 0.10],  # normal (0.15), -, wrong: a missed pneumonia the band does not catch
    ]
)


def test_review_band_metrics_counted_by_hand():
    rb = review_band_metrics(Y, P, OP)
    assert rb["n"] == 8 and rb["n_review"] == 4 and rb["review_rate"] == 0.5
    assert rb["by_reason"] == {"pneumonia_vs_normal": {"n": 2, "rate": 0.25},
                               "bacterial_vs_viral": {"n": 2, "rate": 0.25}}
    # flagged counted as errors: right and not flagged are films 0, 3, 6 -> 3 / 8; for pneumonia vs normal only
    # the P flags count (a T flag still says pneumonia): pneumonias 3..7 called pneumonia and not P-flagged:
    # 3, 4, 5, 6 -> 4 / 5; normals 0..2 called normal and not P-flagged: 0 -> 1 / 3
    assert rb["review_as_error"]["accuracy"] == 0.375
    assert rb["review_as_error"]["sensitivity"] == 0.8
    assert rb["review_as_error"]["specificity"] == pytest.approx(1 / 3)
    # not flagged: films 0, 3, 6, 7 (pneumonias 3, 6, 7; normal 0)
    assert rb["not_flagged"] == {"n": 4, "n_positive": 3, "n_negative": 1, "accuracy": 0.75,
                                 "sensitivity": pytest.approx(2 / 3), "specificity": 1.0}
    # labels of the flagged films 1, 2, 4, 5: right on 1 and 4; the band flags 2 of the 3 errors (2, 5, 7)
    assert rb["flagged"] == {"n": 4, "accuracy": 0.5, "n_errors": 2}
    assert rb["n_errors"] == 3
    assert rb["pneumonia_probability_range"] == BAND["pneumonia_probability_range"]
    assert review_band_metrics(Y, P, OP_NO_BAND) is None and review_band_metrics(Y, P, None) is None


def test_review_band_intervals_resample_patients():
    # one patient: every resample is the whole set, so each interval is the point value
    one = review_band_ci(Y, P, ["p"] * 8, OP, n_resamples=50, seed=0)
    rb = review_band_metrics(Y, P, OP)
    assert set(one["intervals"]) == set(REVIEW_BAND_METRICS) and one["skipped"] == {}
    for key, (lo, hi) in one["intervals"].items():
        group, _, name = key.partition(".")
        value = rb[group][name] if name else rb[group]
        assert lo == pytest.approx(value) and hi == pytest.approx(value), key
    # a patient per film: the only unflagged normal (film 0) is often not drawn -> skipped, counted
    many = review_band_ci(Y, P, [f"p{i}" for i in range(8)], OP, n_resamples=400, seed=1)
    assert 0 < many["skipped"]["not_flagged.specificity"] < 400
    lo, hi = many["intervals"]["review_rate"]
    assert 0.0 <= lo < 0.5 < hi <= 1.0
    assert review_band_ci(Y, P, ["p"] * 8, OP_NO_BAND) is None
    with pytest.raises(ValueError, match="one patient id per image"):
        review_band_ci(Y, P, ["p"] * 7, OP)


def _rows(tmp_path):
    names = ["normal", "bacterial", "viral"]
    rows = []
    for i, (y, p) in enumerate(zip(Y, P)):
        f = tmp_path / "data" / "val" / f"img{i}.jpeg"
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(bytes([i]) * 10)
        rows.append({"path": str(f), "label": names[y], "label_index": int(y), "patient_id": f"p{i // 2}",
                     "predicted": names[int(np.argmax(p))], "probs": [float(v) for v in p], "error": None})
    return rows


def _report(tmp_path, op, comparisons=None, stability=None):
    return build_report(
        y_true=Y, probs=P, rows=_rows(tmp_path),
        model={"name": "toy", "version": "1.0", "sha256": "ab" * 32, "temperature": 1.0,
               **({"operating_point": op} if op else {})},
        data={"dataset": "data", "kind": "csv", "split": "val", "root": str(tmp_path / "data")},
        run={"command": "deephealth evaluate --data val.csv", "date_utc": "2026-01-01T00:00:00+00:00"},
        n_resamples=200, seed=0, decision=op, comparisons=comparisons, stability=stability,
    )


def test_report_has_a_review_band_section_next_to_the_headline(tmp_path):
    older = _report(tmp_path, OP_NO_BAND)
    assert "review_band" not in older
    assert "## Review band" not in render_markdown(older)
    report = _report(tmp_path, OP, comparisons=[("older, no band", older, False)])
    out = tmp_path / "report"
    write_report(report, Y, P, _rows(tmp_path), out, data_root=tmp_path / "data")
    data = json.loads((out / "metrics.json").read_text())
    rb = data["review_band"]
    assert rb["n_review"] == 4 and rb["review_as_error"]["accuracy"] == 0.375
    assert rb["not_flagged"]["accuracy"] == 0.75
    assert set(rb["confidence_intervals"]["intervals"]) == set(REVIEW_BAND_METRICS)
    assert data["comparisons"][0]["review_band"] is None
    # the headline without the band, for the trade: 5 of 8 right; sensitivity 4 / 5, specificity 2 / 3
    assert data["metrics"]["three_class"]["accuracy"] == 0.625
    md = (out / "report.md").read_text()
    assert "## Review band: borderline films flagged for review (8 images)" in md
    assert md.index("## Review band") < md.index("## 3-class metrics")
    assert "0.269–0.731 around the threshold 0.5000" in md and "lies in 0.378–0.622" in md
    assert "the model has no reliable answer for it: a clinician reads it without relying on the label." in md
    assert "| | without the band: all 8 films | with the band, flagged counted as errors | " \
           "with the band: the 4 films not flagged |" in md
    assert "| films flagged for review | — | 50.0 % (" in md and "), 4 films | — |" in md
    assert "fitted on the model's 100 validation films: evaluated on those same films, these figures are " \
           "in-sample (optimistic)." in md
    # on the official test split the band's figures are held out, and the report says so instead
    held_out = render_markdown({**report, "data": {**report["data"], "split": "test"}})
    assert "fitted on the model's 100 validation films only; these test films played no part in it." in held_out
    assert "in-sample" not in held_out
    assert "| … pneumonia vs normal borderline | — | 25.0 % (2) | — |" in md
    assert "| … bacterial vs viral borderline | — | 25.0 % (2) | — |" in md
    assert "| 3-class accuracy | 62.5 % (" in md and "| 37.5 % (" in md and "| 75.0 % (" in md
    assert "| pneumonia vs normal: sensitivity | 80.0 % (" in md and "| 66.7 % (" in md and \
        "(n = 3 pneumonia) |" in md
    assert "| pneumonia vs normal: specificity | 66.7 % (" in md and "(n = 1 normal) |" in md
    assert "right on 50.0 % of the 4 flagged films; the band flags 2 of the 3 films the model gets wrong" in md
    assert "| **this model**: toy 1.0 | 50.0 % (4) | 37.5 % | 75.0 % (n = 4) |" in md
    assert "| older, no band | — | — | — |" in md
    # a compared report that has a band shows its figures
    again = _report(tmp_path, OP, comparisons=[("banded", report, False)])
    assert again["comparisons"][0]["review_band"] == {"review_rate": 0.5, "n_review": 4,
                                                      "review_as_error.accuracy": 0.375,
                                                      "not_flagged.accuracy": 0.75, "not_flagged.n": 4}
    assert "| banded | 50.0 % (4) | 37.5 % | 75.0 % (n = 4) |" in render_markdown(again)


# Stability: four films, two perturbations. Base: A normal, B bacterial, C normal but borderline (flagged), D viral.
BASE = np.array([[0.90, 0.05, 0.05], [0.10, 0.80, 0.10], [0.60, 0.30, 0.10], [0.10, 0.10, 0.80]])
PERT = np.array([
    # gamma_0.9: A -> bacterial, definite (contradicting); B -> bacterial but type-borderline (into review: an
    # outcome change, no label flip); C -> bacterial, still flagged (a label flip, no outcome change); D same
    [[0.20, 0.70, 0.10], [0.10, 0.45, 0.45], [0.40, 0.50, 0.10], [0.10, 0.10, 0.80]],
    # blur: A same; B -> viral (contradicting); C -> normal, definite (out of review: outcome change);
    # D -> normal, definite (contradicting)
    [[0.90, 0.05, 0.05], [0.10, 0.10, 0.80], [0.95, 0.03, 0.02], [0.85, 0.05, 0.10]],
])


def _scores():
    from deephealth.calibration import decide

    return st.StabilityScores(["gamma_0.9", "blur"], ["A", "B", "C", "D"], [0, 1, 2, 3], BASE, decide(BASE, OP),
                              PERT, decide(PERT, OP), [])


def test_review_band_figures_counted_by_hand():
    f = st.review_band_figures(BASE, PERT, OP)
    assert f["n_review"] == 1 and f["review_rate"] == 0.25
    assert f["n_contradicting"] == [1, 2] and f["contradicting_rate"] == [0.25, 0.5]
    assert f["outcome_change_rate"] == [0.5, 0.75]
    assert f["any_contradicting_rate"] == 0.75  # A, B, D
    assert st.review_band_figures(BASE, PERT, OP_NO_BAND) is None


def test_stability_summary_table_and_report_with_the_band(tmp_path):
    s = st.summarize_stability(_scores(), patient_ids=["a", "b", "c", "d"], n_resamples=100, operating_point=OP)
    g, b = s["perturbations"]["gamma_0.9"], s["perturbations"]["blur"]
    assert g["n_flips"] == 2 and b["n_flips"] == 2  # the plain label flips are unchanged: A, C and B, D
    assert (g["n_contradicting"], g["contradicting_rate"], g["n_outcome_changes"], g["outcome_change_rate"]) == \
        (1, 0.25, 2, 0.5)
    assert (b["n_contradicting"], b["contradicting_rate"], b["n_outcome_changes"], b["outcome_change_rate"]) == \
        (2, 0.5, 3, 0.75)
    assert s["review_band"] == {"review_rate": 0.25, "n_review": 1, "any_contradicting_rate": 0.75,
                                "max_contradicting_rate": 0.5, "worst_contradicting_perturbations": ["blur"],
                                "worst_contradicting": "blur"}
    table = st.format_table(s)
    assert table[0].endswith("| \\|ΔP\\| max | contradicting flips, with the review band | "
                             "outcome changes, with the review band |")
    assert table[1].count("|") == table[0].count("|") - table[0].count("\\|")  # escaped pipes are text
    assert table[2].startswith("| `gamma_0.9` | gamma 0.9 (brighter) | 50.0 % (2) |")
    assert table[2].endswith("| 25.0 % (1) | 50.0 % (2) |")
    assert table[3].endswith("| 50.0 % (2) | 75.0 % (3) |")
    # without the band: no band columns, no band entry
    plain = st.summarize_stability(_scores(), patient_ids=["a", "b", "c", "d"], n_resamples=100)
    assert "review_band" not in plain and "contradicting_rate" not in plain["perturbations"]["blur"]
    assert "contradicting" not in st.format_table(plain)[0]

    y, p = Y[:4], np.array(P[:4])
    rows = _rows(tmp_path)[:4]
    report = build_report(
        y_true=y, probs=p, rows=rows, model={"name": "toy", "version": "1.0", "operating_point": OP},
        data={"dataset": "data", "split": "val", "root": str(tmp_path / "data")}, run={}, n_resamples=50,
        decision=OP, stability=s,
    )
    md = render_markdown(report)
    assert "25.0 % (1) of the unchanged films are flagged for review" in md
    assert "With the review band: films contradicted by at least one perturbation: 75.0 %. Worst contradicting " \
           "rate: `blur`, 50.0 %, against the target ≤ 1.0 % for every perturbation: missed for `gamma_0.9`, " \
           "`blur`." in md
    assert "Films whose label changes under at least one perturbation: 100.0 %." in md  # the headline flips stay


def test_no_contradicting_flip_names_no_worst_perturbation():
    from deephealth.calibration import decide

    same = np.stack([BASE, BASE])
    scores = st.StabilityScores(["gamma_0.9", "blur"], ["A", "B", "C", "D"], [0, 1, 2, 3], BASE, decide(BASE, OP),
                                same, decide(same, OP), [])
    s = st.summarize_stability(scores, operating_point=OP)
    assert s["review_band"]["max_contradicting_rate"] == 0.0 and s["review_band"]["worst_contradicting"] is None
    assert s["review_band"]["worst_contradicting_perturbations"] == []
    assert (s["max_flip_rate"], s["worst_perturbations"], s["worst"]) == (0.0, [], None)  # all tie at 0: none named
    from deephealth.evaluation.report import _stability_markdown

    md = "\n".join(_stability_markdown(s))
    assert "Worst contradicting rate: 0.0 % (no perturbation contradicts any film), against the target ≤ 1.0 % " \
           "for every perturbation: met." in md
    assert "Worst: 0.0 % (no perturbation flips any film's label)." in md


def test_stability_plot_draws_contradicting_flips_beside_label_flips(tmp_path, monkeypatch):
    from matplotlib.container import BarContainer
    from PIL import Image

    from deephealth.evaluation import plots

    figs = []
    save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: (figs.append(fig), save(fig, path))[1])
    banded = st.summarize_stability(_scores(), patient_ids=["a", "b", "c", "d"], n_resamples=100, operating_point=OP)
    plain = st.summarize_stability(_scores(), patient_ids=["a", "b", "c", "d"], n_resamples=100)

    def bars(fig):
        ax = fig.axes[0]
        return ax, [c for c in ax.containers if isinstance(c, BarContainer)]

    # without the band: one bar per perturbation, labelled with the model, as before
    out = plots.plot_stability({"toy 1.0": plain}, tmp_path / "plain.png", title="flips")
    ax, cs = bars(figs[-1])
    assert len(cs) == 1 and [round(r.get_height(), 6) for r in cs[0]] == [50.0, 50.0]
    assert len(ax.patches) == 2 and not ax.texts
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["target ≤ 1 %", "toy 1.0"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 300
        plain_width = im.size[0]

    # with the band: a contradicting-flip bar beside each label-flip bar, its film count written above it
    out = plots.plot_stability({"toy 1.0": banded}, tmp_path / "banded.png", title="flips")
    ax, cs = bars(figs[-1])
    assert len(ax.patches) == 2 * 2 and len(cs) == 2
    assert [round(r.get_height(), 6) for r in cs[0]] == [50.0, 50.0]  # gamma_0.9, blur: label flips
    assert [round(r.get_height(), 6) for r in cs[1]] == [25.0, 50.0]  # contradicting flips
    assert all(r.get_hatch() for r in cs[1]) and not any(r.get_hatch() for r in cs[0])
    assert cs[0][0].get_x() + cs[0][0].get_width() == pytest.approx(cs[1][0].get_x())  # side by side
    assert [t.get_text() for t in ax.texts] == ["1", "2"]
    legend = ax.get_legend()
    assert [t.get_text() for t in legend.get_texts()] == [
        "target ≤ 1 %", "label flips", "contradicting flips (review band: 25.0 % of films flagged)"]
    assert legend.get_title().get_text() == "toy 1.0"
    target = [ln for ln in ax.lines if ln.get_label() == "target ≤ 1 %"]
    assert len(target) == 1 and target[0].get_linestyle() == "--" and list(target[0].get_ydata()) == [1.0, 1.0]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[1] > 300 and im.size[0] >= plain_width  # 7 in at least, both

    # a comparison: only the model with the band gets the second bar; legend entries name the model
    plots.plot_stability({"toy 1.0": banded, "older": plain}, tmp_path / "both.png")
    ax, cs = bars(figs[-1])
    assert len(cs) == 3 and len(ax.patches) == 6
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [
        "target ≤ 1 %", "toy 1.0: label flips",
        "toy 1.0: contradicting flips (review band: 25.0 % of films flagged)", "older"]


def test_tied_worst_perturbations_are_all_named_in_the_summary_and_the_report():
    """gamma_0.9 and blur both flip 2 of 4 labels; with the same perturbed films twice, both contradict
    2 of 4: the summary lists both (family order) and the report names both, not only the first."""
    from deephealth.calibration import decide
    from deephealth.evaluation.report import _stability_markdown

    s = st.summarize_stability(_scores(), operating_point=OP)
    assert s["perturbations"]["gamma_0.9"]["flip_rate"] == s["perturbations"]["blur"]["flip_rate"] == 0.5
    assert s["worst_perturbations"] == ["gamma_0.9", "blur"] and s["worst"] == "gamma_0.9"
    assert s["review_band"]["worst_contradicting_perturbations"] == ["blur"]  # 0.5 against 0.25: no tie
    md = "\n".join(_stability_markdown(s))
    assert "Worst: `gamma_0.9` and `blur` (tied), 50.0 % each." in md
    assert "Worst contradicting rate: `blur`, 50.0 %," in md

    twice = np.stack([PERT[1], PERT[1]])
    tied = st.summarize_stability(st.StabilityScores(["gamma_0.9", "blur"], ["A", "B", "C", "D"], [0, 1, 2, 3],
                                                     BASE, decide(BASE, OP), twice, decide(twice, OP), []),
                                  operating_point=OP)
    assert tied["review_band"]["max_contradicting_rate"] == 0.5
    assert tied["review_band"]["worst_contradicting_perturbations"] == ["gamma_0.9", "blur"]
    md = "\n".join(_stability_markdown(tied))
    assert "Worst contradicting rate: `gamma_0.9` and `blur` (tied), 50.0 % each, against the target" in md

    # A summary written before the tie lists existed (only "worst") still renders its one name.
    old = {k: v for k, v in s.items() if k != "worst_perturbations"}
    assert "Worst: `gamma_0.9`, 50.0 %." in "\n".join(_stability_markdown(old))
