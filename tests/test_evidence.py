"""Tests of the evidence map (deephealth.training.evidence, serving in deephealth.inference) and of the
faithfulness measures (deephealth.evaluation.faithfulness: deletion curves, randomisation check)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from deephealth.evaluation.faithfulness import curve_auc, deletion_curves, deletion_order, spearman, summarise
from deephealth.paths import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME

# ---------------------------------------------------------------------------- deletion curves (numpy only)


def _quadrant_score(batch: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """A toy 'model' whose class score is the mean of the top-left 4x4 quadrant of an 8x8 input."""
    assert batch.shape[1:] == (1, 8, 8) and len(classes) == len(batch)
    return batch[:, 0, :4, :4].mean(axis=(1, 2))


def test_deletion_curve_of_a_perfect_map_on_a_toy_model_has_the_known_area():
    x = np.ones((1, 1, 8, 8), np.float32)
    sal = np.zeros((1, 8, 8), np.float32)
    sal[0, :4, :4] = 1.0  # exactly the pixels the toy model reads
    fr, sc = deletion_curves(_quadrant_score, x, np.array([0]), sal, steps=4)
    np.testing.assert_allclose(fr, [0, 0.25, 0.5, 0.75, 1.0])
    np.testing.assert_allclose(sc[0], [1, 0, 0, 0, 0])  # the first quarter deleted is the whole quadrant
    assert curve_auc(fr, sc)[0] == pytest.approx(0.125)
    # the reverse map deletes the 48 other pixels first and the quadrant in the last quarter
    fr2, sc2 = deletion_curves(_quadrant_score, x, np.array([0]), 1.0 - sal, steps=4)
    np.testing.assert_allclose(sc2[0], [1, 1, 1, 1, 0])
    assert curve_auc(fr2, sc2)[0] == pytest.approx(0.875)


def test_random_order_deletion_follows_the_expected_linear_fall():
    x = np.ones((200, 1, 8, 8), np.float32)
    fr, sc = deletion_curves(_quadrant_score, x, np.zeros(200, int), None, steps=4, seed=1)
    # random deletion removes on average the same fraction of the quadrant: E[score] = 1 - fraction
    np.testing.assert_allclose(sc.mean(axis=0), 1.0 - fr, atol=0.03)
    assert curve_auc(fr, sc).mean() == pytest.approx(0.5, abs=0.02)
    assert sc[:, 0].min() == 1.0 and sc[:, -1].max() == 0.0


def test_deletion_fills_with_the_given_value_and_checks_shapes():
    x = np.full((1, 1, 8, 8), 3.0, np.float32)
    _, sc = deletion_curves(_quadrant_score, x, np.array([0]), None, steps=2, fill=-1.0)
    assert sc[0, 0] == 3.0 and sc[0, -1] == -1.0
    with pytest.raises(ValueError, match="saliency must be"):
        deletion_curves(_quadrant_score, x, np.array([0]), np.zeros((1, 4, 4)), steps=2)
    with pytest.raises(ValueError, match="x must be"):
        deletion_curves(_quadrant_score, x[0], np.array([0]), None)
    with pytest.raises(ValueError, match="steps"):
        deletion_curves(_quadrant_score, x, np.array([0]), None, steps=0)


def test_deletion_order_is_most_salient_first_with_random_tie_break():
    sal = np.array([[0.0, 0.5], [1.0, 0.0]])
    o1 = deletion_order(sal, np.random.default_rng(0))
    assert list(o1[:2]) == [2, 1] and set(o1[2:]) == {0, 3}
    orders = {tuple(deletion_order(np.zeros((2, 2)), np.random.default_rng(s))) for s in range(20)}
    assert len(orders) > 3  # ties really are broken at random
    with pytest.raises(ValueError, match="NaN"):
        deletion_order(np.array([[np.nan, 0.0]]), np.random.default_rng(0))


def test_spearman_and_summary():
    assert spearman([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert spearman([1, 2, 3, 4], [1, 9, 4, 16]) == pytest.approx(0.8)
    assert spearman([1, 1, 2, 3], [1, 1, 2, 3]) == pytest.approx(1.0)  # ties get average ranks
    assert np.isnan(spearman([1, 1, 1], [1, 2, 3]))
    s = summarise([0.2, 0.4, float("nan")])
    assert s["mean"] == pytest.approx(0.3) and s["n"] == 2 and 0.2 <= s["ci95"][0] <= s["ci95"][1] <= 0.4


# ----------------------------------------------------------------------------------- the evidence map

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def evidence_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """timm test_resnet at 96 px exported with model_args (so weights.pt and the evidence map ship)."""
    from deephealth.preprocessing import PreprocessConfig
    from deephealth.training.export import export_model
    from deephealth.training.model import build_model

    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("evidence_model")
    return export_model(build_model("test_resnet"), PreprocessConfig(input_size=96), out, name="tiny-evidence",
                        version="0.0.0-test", temperature=1.5,
                        model_args={"arch": "test_resnet", "num_classes": 3, "in_chans": 1})


def test_export_adds_an_evidence_map_twice_as_fine_computed_only_on_request(evidence_model_dir: Path):
    import onnxruntime as ort

    from deephealth.inference import Predictor

    meta = json.loads((evidence_model_dir / "metadata.json").read_text())
    ev = meta["evidence"]
    assert meta["onnx"]["evidence"] == "evidence" and meta["onnx"]["evidence_flag"] == "evidence_on"
    assert ev["cam_shape"] == ["N", 3, 3, 3] and ev["shape"] == ["N", 3, 6, 6]
    assert ev["check"]["shipped_outputs_bit_identical"] is True
    assert ev["check"]["torch_vs_onnxruntime_max_abs_diff"] <= ev["check"]["atol"]
    assert ev["merge"]["initializers_added"] == 0  # every weight shared with the shipped graph
    sess = ort.InferenceSession(str(evidence_model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((2, 1, 96, 96)).astype(np.float32)
    off = sess.run(["evidence"], {"image": x})[0]
    on = sess.run(["evidence"], {"image": x, "evidence_on": np.array(True)})[0]
    assert off.shape == (0, 3, 1, 1) and on.shape == (2, 3, 6, 6)
    p = Predictor(evidence_model_dir)
    assert p.heatmap_source == "evidence"
    logits, maps = p.infer(x, cam=True)
    _, cams = p.infer(x, cam=True, source="cam")
    assert maps.shape == (2, 3, 6, 6) and cams.shape == (2, 3, 3, 3)
    np.testing.assert_array_equal(maps, on)
    np.testing.assert_allclose(cams.mean(axis=(2, 3)), logits, atol=1e-4)  # the CAM contract is untouched


def test_evidence_only_rebuild_keeps_the_shipped_outputs_and_one_branch(evidence_model_dir: Path, tmp_path: Path):
    import onnxruntime as ort

    from deephealth.artifact import ModelArtifact
    from deephealth.cli import main

    d = tmp_path / "m"
    shutil.copytree(evidence_model_dir, d)
    x = np.random.default_rng(1).standard_normal((3, 1, 96, 96)).astype(np.float32)
    before = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits", "cam", "features", "evidence"], {"image": x, "evidence_on": np.array(True)})
    assert main(["export", "--evidence-only", "--out", str(d)]) == 0
    ModelArtifact.load(d)  # the new SHA-256 is recorded
    m = onnx.load(str(d / "model.onnx"))
    assert [n.op_type for n in m.graph.node].count("If") == 1
    after = ort.InferenceSession(str(d / "model.onnx"), providers=["CPUExecutionProvider"]).run(
        ["logits", "cam", "features", "evidence"], {"image": x, "evidence_on": np.array(True)})
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)


def test_evidence_only_errors_are_one_line(tmp_path: Path, tiny_model_dir: Path, capsys):
    from deephealth.cli import main

    assert main(["export", "--evidence-only", "--out", str(tmp_path / "none")]) == 2
    assert "no metadata.json" in capsys.readouterr().err
    d = tmp_path / "noweights"
    shutil.copytree(tiny_model_dir, d)
    assert main(["export", "--evidence-only", "--out", str(d)]) == 2
    err = capsys.readouterr().err
    assert "no weights.pt" in err and len(err.strip().splitlines()) == 1


def test_randomising_the_classifier_decorrelates_the_map(evidence_model_dir: Path):
    from deephealth.evaluation.faithfulness import randomisation_check

    ck = torch.load(evidence_model_dir / "weights.pt", weights_only=True)
    x = np.random.default_rng(2).standard_normal((6, 1, 96, 96)).astype(np.float32)
    r = randomisation_check(ck["model_args"], ck["model_state"], x, cascade=("fc",))
    for kind, shape in (("cam", [3, 3]), ("evidence", [6, 6])):
        assert r[kind]["map_shape"] == shape and r[kind]["stages"] == ["fc"]
        assert r[kind]["spearman"]["fc"]["mean"] < 0.9  # the trained map would give exactly 1
    assert torch.is_grad_enabled()  # no global side effect on callers that train afterwards


def test_bundled_model_evidence_map_is_at_least_12x12_confined_to_the_box_and_keeps_the_labels(
        tmp_path: Path, dataset_root: Path):
    from deephealth.inference import Predictor
    from deephealth.readers import read_image
    from deephealth.training.evidence import add_evidence_to_dir

    src = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
    if not (src / "weights.pt").is_file():
        pytest.skip("bundled model has no weights.pt")
    d = tmp_path / "bundled"
    shutil.copytree(src, d)
    ev = add_evidence_to_dir(d)
    s = json.loads((d / "metadata.json").read_text())["preprocessing"]["input_size"]
    assert ev["shape"][2:] == [s // 16, s // 16] and s // 16 >= 12
    old, new = Predictor(src), Predictor(d)
    film = read_image(sorted((dataset_root / "test" / "PNEUMONIA").glob("*.jpeg"))[0]).image
    h, w = film.shape
    canvas = np.zeros((h + 60, w + 40), np.float32)  # a uniform border the contract removes
    canvas[30 : 30 + h, 20 : 20 + w] = film
    a, b = old.predict(canvas, heatmap=True, allow_unsuitable=True), new.predict(canvas, heatmap=True, allow_unsuitable=True)
    np.testing.assert_array_equal(a.logits, b.logits)  # the shipped outputs are bit-identical
    assert a.probabilities == b.probabilities and a.label == b.label
    assert b.border_crop == (30, 30 + h, 20, 20 + w)
    assert b.heatmap.shape == canvas.shape and b.heatmap[:30].max() == 0.0 and b.heatmap[:, :20].max() == 0.0
    assert b.heatmap[30 + h :].max() == 0.0 and b.heatmap[:, 20 + w :].max() == 0.0
    assert 0.9 < b.heatmap.max() <= 1.0  # the peak cell, bilinearly resampled (pixel centres)
    from deephealth.inference import cam_heatmap

    x = new._prepare(canvas)[1][None]
    _, maps = new.infer(x, cam=True)
    _, cams = new.infer(x, cam=True, source="cam")
    assert maps.shape[2:] == (s // 16, s // 16) and cams.shape[2:] == (s // 32, s // 32)
    # finer than the 6 x 6 CAM, but the same evidence: strongly correlated with it, not equal
    coarse = cam_heatmap(cams[0, b.label_index], (h, w))
    r = np.corrcoef(coarse.ravel(), b.heatmap[30 : 30 + h, 20 : 20 + w].ravel())[0, 1]
    assert 0.6 < r < 0.9999


def test_blurred_keeps_constants_and_the_mean_and_deletion_uses_the_fill_array():
    from deephealth.evaluation.faithfulness import blurred

    x = np.full((2, 1, 16, 16), 0.3, np.float32)
    np.testing.assert_allclose(blurred(x, 2.0), 0.3, atol=1e-6)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((1, 1, 32, 32)).astype(np.float32)
    b = blurred(noise, 3.0)
    assert b.shape == noise.shape and b.std() < 0.3 * noise.std()
    x8 = np.ones((1, 1, 8, 8), np.float32)
    fill = np.full((1, 1, 8, 8), 0.25, np.float32)
    _, sc = deletion_curves(_quadrant_score, x8, np.array([0]), None, steps=2, fill=fill)
    np.testing.assert_allclose(sc[0, [0, -1]], [1.0, 0.25])


def test_randomisation_refuses_a_layer_that_does_not_exist(evidence_model_dir: Path):
    from deephealth.evaluation.faithfulness import randomisation_check

    ck = torch.load(evidence_model_dir / "weights.pt", weights_only=True)
    x = np.zeros((1, 1, 96, 96), np.float32)
    with pytest.raises(ValueError, match="no parameters named classifier"):
        randomisation_check(ck["model_args"], ck["model_state"], x, maps=("cam",), cascade=("classifier",))


def test_bench_evidence_writes_json_and_png(evidence_model_dir: Path, dataset_root: Path, tmp_path: Path):
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_evidence.py"), "--model", str(evidence_model_dir),
                        "--split", "val", "--limit", "3", "--steps", "4", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, env={**__import__("os").environ,
                                                                          "PYTHONPATH": str(root / "src")})
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads((out / "evidence.json").read_text())["results"][0]
    assert res["films"] == 3 and set(res["maps"]) == {"cam", "evidence", "random"}
    assert res["maps"]["evidence"]["map_shape"] == [6, 6] and len(res["maps"]["cam"]["mean_curve"]) == 5
    assert set(res["randomisation"]) == {"cam", "evidence"} and res["randomisation"]["cam"]["stages"][0] == "fc"
    assert (out / "deletion_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.needs_data
def test_evaluate_faithfulness_adds_deletion_curves_to_the_report(evidence_model_dir: Path, dataset_root: Path,
                                                                  tmp_path: Path, capsys):
    """``deephealth evaluate --faithfulness``: the report's deletion curves start at the probability of
    the class predicted on the intact film, end at the same fully-filled film for every order, and the
    paired difference is the difference of the areas."""
    import csv

    from deephealth.cli import main

    data = tmp_path / "ds"
    stems = {"NORMAL": ["IM-0001-0001", "IM-0003-0001"], "PNEUMONIA": ["person100_bacteria_475", "person10_virus_35"]}
    for folder, names in stems.items():
        (data / "test" / folder).mkdir(parents=True)
        for stem in names:
            (data / "test" / folder / f"{stem}.jpeg").symlink_to(dataset_root / "test" / folder / f"{stem}.jpeg")
    out = tmp_path / "report"
    rc = main(["evaluate", "--model", str(evidence_model_dir), "--data", str(data), "--out", str(out),
               "--no-progress", "--bootstrap", "50", "--faithfulness"])
    stdout = capsys.readouterr().out
    assert rc == 0
    fa = json.loads((out / "metrics.json").read_text())["faithfulness"]
    assert fa["films"] == 4 and fa["steps"] == 16 and fa["heatmap_source"] == "evidence"
    assert set(fa["maps"]) == {"cam", "evidence", "random"}
    assert fa["maps"]["evidence"]["map_shape"] == [6, 6] and fa["maps"]["cam"]["map_shape"] == [3, 3]
    assert sum(fa["predicted_class_counts"].values()) == 4
    with (out / "predictions.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    p_pred = [float(r[f"p_{r['predicted']}"]) for r in rows]
    for src, e in fa["maps"].items():
        assert len(e["mean_curve"]) == 17 and e["fractions"][0] == 0.0 and e["fractions"][-1] == 1.0
        assert e["mean_curve"][0] == pytest.approx(np.mean(p_pred), abs=2e-6), src  # nothing deleted yet
        assert e["mean_curve"][-1] == pytest.approx(fa["maps"]["random"]["mean_curve"][-1], abs=1e-6), src
        assert 0.0 <= e["auc"]["mean"] <= 1.0
    for src in ("cam", "evidence"):
        e = fa["maps"][src]
        diff = e["auc"]["mean"] - fa["maps"]["random"]["auc"]["mean"]
        assert e["auc_minus_random"]["mean"] == pytest.approx(diff, abs=2e-6)
        assert e["share_below_random"] in (0.0, 0.25, 0.5, 0.75, 1.0)
    md = (out / "report.md").read_text()
    assert "## Heatmap faithfulness: deletion curves (4 images)" in md and "![Deletion curves](deletion_curves.png)" in md
    # On 4 films a map whose paired interval includes zero is named as undecided, and only then.
    undecided = [src for src in ("cam", "evidence")
                 if fa["maps"][src]["auc_minus_random"]["ci95"][0] <= 0 <= fa["maps"][src]["auc_minus_random"]["ci95"][1]]
    assert ("**Too few films to tell:**" in md) == bool(undecided)
    for src in undecided:
        assert f"`{src}`" in md.split("**Too few films to tell:**")[1].split("\n")[0]
    assert (out / "deletion_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "heatmap deletion curves (4 images)" in stdout


def test_an_anti_aliased_network_exports_with_its_blur_and_an_evidence_map(tmp_path: Path):
    """aa_layer travels in model_args: the ONNX graph, weights.pt and the dilated evidence network all
    carry the blur, and ONNX Runtime gives PyTorch's logits."""
    import torch

    from deephealth.inference import Predictor
    from deephealth.preprocessing import PreprocessConfig
    from deephealth.training.evidence import dilated_model
    from deephealth.training.export import export_model
    from deephealth.training.model import build_model

    torch.manual_seed(0)
    net = build_model("test_efficientnet", aa_layer="blurpc").eval()
    args = {"arch": "test_efficientnet", "num_classes": 3, "in_chans": 1, "aa_layer": "blurpc"}
    out = export_model(net, PreprocessConfig(input_size=96), tmp_path / "m", name="tiny-aa", version="0.0.0-test",
                       temperature=1.0, model_args=args)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["evidence"]["check"]["shipped_outputs_bit_identical"] is True
    assert torch.load(out / "weights.pt", weights_only=True)["model_args"]["aa_layer"] == "blurpc"
    assert sum(type(m).__name__ == "BlurPool2d" for m in net.modules()) >= 2
    # The dilated last stage drops its stride (and so its blur); the earlier blurs stay.
    assert sum(type(m).__name__ == "BlurPool2d" for m in dilated_model(args, net.state_dict()).modules()) >= 1
    x = np.random.default_rng(2).standard_normal((2, 1, 96, 96)).astype(np.float32)
    with torch.no_grad():
        ref = net(torch.from_numpy(x)).numpy()
        plain = build_model("test_efficientnet")
        plain.load_state_dict(net.state_dict())
        without = plain.eval()(torch.from_numpy(x)).numpy()
    logits, _ = Predictor(out).infer(x)
    np.testing.assert_allclose(logits, ref, atol=1e-4)
    assert np.abs(without - ref).max() > 1e-3  # the blur is in the graph, not dropped on the way
