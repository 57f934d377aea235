"""Tests of deephealth.training.export and `deephealth export`: ONNX file, metadata.json, checks."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
import onnxruntime as ort  # noqa: E402

from deephealth.artifact import ModelArtifact  # noqa: E402
from deephealth.cli import main  # noqa: E402
from deephealth.labels import CLASS_NAMES, INTENDED_USE  # noqa: E402
from deephealth.preprocessing import PreprocessConfig, preprocess  # noqa: E402
from deephealth.readers import read_image  # noqa: E402
from deephealth.training.export import (  # noqa: E402
    CAM_ATOL,
    LOGITS_ATOL,
    ExportError,
    check_export,
    export_model,
    export_run,
)
from deephealth.paths import dataset_dir, portable_path  # noqa: E402
from deephealth.training.model import CamModel, build_model  # noqa: E402


def _tiny_model(seed: int = 0):
    torch.manual_seed(seed)
    return build_model("test_resnet").eval()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fake training run folder with a best.pt in the training loop's checkpoint format."""
    d = tmp_path_factory.mktemp("runs") / "tiny-run"
    d.mkdir()
    model = _tiny_model(seed=1)
    torch.save(
        {
            "model_state": model.state_dict(),
            "model_args": {"arch": "test_resnet", "num_classes": 3, "in_chans": 1},
            # max_train_images: the export fits the input gate on the same small subsets training used
            "config": {"arch": "test_resnet", "input_size": 64, "epochs": 2, "lr": 0.001, "max_train_images": 120,
                       "val_fraction": 0.1, "split_seed": 0, "seed": 0},
            "preprocessing": PreprocessConfig(input_size=64).to_dict(),
            "temperature": 1.25,
            "val_metrics": {"balanced_accuracy": 0.5, "auroc_macro": 0.6},
            "epoch": 2,
            # as the training loop records it: the resolved, absolute dataset folder of the training machine
            "data": {"dataset_dir": str(dataset_dir()), "split_seed": 0, "counts": {"train": 10, "val": 4}},
            "history": [{"epoch": 1, "loss": 1.1}, {"epoch": 2, "loss": 1.0}],
        },
        d / "best.pt",
    )
    (d / "calibration.json").write_text(json.dumps({"temperature": 1.25, "ece_before": 0.1, "ece_after": 0.05}))
    return d


def test_tiny_model_dir_is_a_valid_artifact(tiny_model_dir: Path):
    art = ModelArtifact.load(tiny_model_dir)  # verifies the sha256
    meta = art.metadata
    assert art.class_names == CLASS_NAMES and art.temperature == 1.5
    assert art.preprocessing == PreprocessConfig(input_size=96)
    assert meta["intended_use"] == INTENDED_USE
    assert meta["onnx"]["input"] == "image" and meta["onnx"]["logits"] == "logits" and meta["onnx"]["cam"] == "cam"
    assert meta["onnx"]["bytes"] == (tiny_model_dir / "model.onnx").stat().st_size
    n_params = sum(p.numel() for p in _tiny_model().parameters())
    assert meta["summary"]["parameters"] == n_params
    assert meta["summary"]["input_shape"] == ["N", 1, 96, 96]
    assert meta["summary"]["output_shapes"] == {"logits": ["N", 3], "cam": ["N", 3, 3, 3], "features": ["N", 96]}
    assert meta["onnx"]["features"] == "features" and "gate" not in meta  # export_model alone fits no gate
    assert [layer["name"] for layer in meta["summary"]["layers"]][-1] == "fc"
    check = meta["export_check"]
    assert check["passed"] and check["logits_max_abs_diff"] <= LOGITS_ATOL and check["cam_max_abs_diff"] <= CAM_ATOL
    assert len(check["real_inputs"]) == 8 and check["real_inputs"][0].startswith("val/NORMAL/")
    assert any("virus" in n for n in check["real_inputs"])
    text = (tiny_model_dir / "model_summary.txt").read_text()
    assert f"{n_params:,} parameters" in text and "layer4.0.conv1" in text and "(N, 3, 3, 3)" in text


def test_onnx_graph_has_dynamic_batch_and_embedded_weights(tiny_model_dir: Path):
    m = onnx.load(str(tiny_model_dir / "model.onnx"))
    onnx.checker.check_model(m, full_check=True)
    (inp,) = m.graph.input
    assert inp.name == "image"
    dims = inp.type.tensor_type.shape.dim
    assert dims[0].dim_param == "batch" and [d.dim_value for d in dims[1:]] == [1, 96, 96]
    assert [o.name for o in m.graph.output] == ["logits", "cam", "features"]
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in m.graph.initializer)
    assert sorted(p.name for p in tiny_model_dir.iterdir()) == ["metadata.json", "model.onnx", "model_summary.txt"]


def test_onnx_matches_pytorch_on_real_images(tiny_model_dir: Path, dataset_root: Path):
    """Independent of the exporter's own check: same seed-0 weights, dataset images, batch of 5."""
    files = sorted((dataset_root / "test" / "PNEUMONIA").glob("*virus*.jpeg"))[:5]
    pre = PreprocessConfig(input_size=96)
    x = np.stack([preprocess(read_image(f).image, pre) for f in files])
    with torch.no_grad():
        t_logits, t_cam, t_feat = (t.numpy() for t in CamModel(_tiny_model())(torch.from_numpy(x)))
    sess = ort.InferenceSession(str(tiny_model_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    o_logits, o_cam, o_feat = sess.run(["logits", "cam", "features"], {"image": x})
    assert o_logits.shape == (5, 3) and o_cam.shape == (5, 3, 3, 3) and o_feat.shape == (5, t_feat.shape[1])
    np.testing.assert_allclose(o_feat, t_feat, atol=CAM_ATOL, rtol=1e-4)
    np.testing.assert_allclose(o_logits, t_logits, atol=LOGITS_ATOL, rtol=1e-4)
    np.testing.assert_allclose(o_cam, t_cam, atol=CAM_ATOL, rtol=1e-4)
    # CAM contract: logits are the spatial mean of the class activation maps
    np.testing.assert_allclose(o_cam.mean(axis=(2, 3)), o_logits, atol=1e-5)


def test_check_export_detects_a_mismatch(tiny_model_dir: Path):
    model = _tiny_model()
    with torch.no_grad():
        model.fc.bias[1] += 0.01  # the exported file no longer matches this network
    x = np.zeros((2, 1, 96, 96), np.float32)
    with pytest.raises(ExportError, match="logits differ"):
        check_export(CamModel(model).eval(), tiny_model_dir / "model.onnx", x)
    report = check_export(CamModel(_tiny_model()).eval(), tiny_model_dir / "model.onnx", x, ["a", "b"])
    assert report["passed"] and report["real_inputs"] == ["a", "b"] and report["batch_sizes"] == [1, 4]


def test_export_model_rejects_bad_arguments(tmp_path):
    with pytest.raises(ExportError, match="temperature"):
        export_model(_tiny_model(), PreprocessConfig(input_size=64), tmp_path, temperature=0.0)
    with pytest.raises(ExportError, match="2 class names"):
        export_model(_tiny_model(), PreprocessConfig(input_size=64), tmp_path, class_names=["a", "b"])
    assert not (tmp_path / "metadata.json").exists()


def test_export_run_writes_training_metadata(run_dir: Path, tmp_path):
    out = export_run(run_dir, tmp_path / "model", name="cxr-test", version="9.9.9")
    art = ModelArtifact.load(out)
    meta = art.metadata
    assert (meta["name"], meta["version"], art.temperature) == ("cxr-test", "9.9.9", 1.25)
    assert art.preprocessing.input_size == 64
    assert meta["architecture"]["arch"] == "test_resnet"
    assert meta["training"]["epoch"] == 2 and meta["training"]["config"]["lr"] == 0.001
    assert meta["training"]["run"] == "tiny-run" and len(meta["training"]["history"]) == 2
    assert meta["data"]["counts"] == {"train": 10, "val": 4}
    # the model card carries no absolute path of the exporting machine (relative to where export ran)
    for recorded in (meta["data"]["dataset_dir"], meta["gate"]["data"]["split"]["dataset_dir"]):
        assert not Path(recorded).is_absolute() and recorded.endswith("chest_xray_224"), recorded
        assert recorded == portable_path(dataset_dir())
    assert meta["validation_metrics"] == {"balanced_accuracy": 0.5, "auroc_macro": 0.6}
    assert meta["calibration"]["ece_after"] == 0.05
    # the input gate, fitted on the run's own patient-grouped split (the smoke run's 120 + 30 films)
    gate = meta["gate"]
    assert gate["data"]["train_films"] == 120 and gate["validation"]["films"] == 30
    assert gate["data"]["split"]["split_seed"] == 0 and gate["data"]["split"]["max_train_images"] == 120
    assert gate["validation"]["flagged_fraction"] <= 0.01 and (out / "gate.npz").is_file()
    # the exported weights are the checkpoint's (seed 1), not a fresh model
    x = np.zeros((1, 1, 64, 64), np.float32)
    (logits,) = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"]).run(["logits"], {"image": x})
    with torch.no_grad():
        expected = _tiny_model(seed=1)(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(logits, expected, atol=LOGITS_ATOL)


@pytest.mark.parametrize(("path", "base", "expected"), [
    ("/work/shared/data/chest_xray_224", "/work/main", "../shared/data/chest_xray_224"),  # the default layout
    ("/work/main/data/x", "/work/main", "data/x"),
    ("/mnt/nas/hospital/films/chest_xray_224", "/work/main", "<...>/films/chest_xray_224"),
    ("../shared/data/chest_xray_224", "/anywhere", "../shared/data/chest_xray_224"),  # relative: as given
    ("", "/work/main", ""),
    (None, "/work/main", ""),
])
def test_portable_path(path, base, expected):
    assert portable_path(path, base) == expected


def test_export_run_errors(run_dir: Path, tmp_path):
    with pytest.raises(ExportError, match="not found"):
        export_run(tmp_path / "no-run", tmp_path / "out")
    bad = tmp_path / "bad.pt"
    torch.save({"model_state": {}, "model_args": {"arch": "test_resnet"}}, bad)
    with pytest.raises(ExportError, match="missing key.*preprocessing"):
        export_run(bad, tmp_path / "out")
    wrong = tmp_path / "wrong.pt"
    ckpt = torch.load(run_dir / "best.pt", weights_only=True)
    ckpt["model_args"]["arch"] = "resnet10t"
    torch.save(ckpt, wrong)
    with pytest.raises(ExportError, match="do not fit resnet10t"):
        export_run(wrong, tmp_path / "out")
    assert not (tmp_path / "out" / "metadata.json").exists()


def test_export_cli(run_dir: Path, tmp_path, capsys):
    rc = main(["export", str(run_dir), "--out", str(tmp_path / "m"), "--version", "2.0"])
    out = capsys.readouterr().out
    assert rc == 0
    meta = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert meta["version"] == "2.0" and meta["onnx"]["sha256"] in out
    assert "input gate: gate.npz" in out and "of 30 validation films flagged" in out
    # the review band needs an operating point: this fake run has none, so none was fitted
    assert "review band: not fitted" in out and "review_band" not in (meta.get("operating_point") or {})
    # --gate-only refits the gate of the folder (same split, same seed: the same gate), nothing else
    onnx_before = (tmp_path / "m" / "model.onnx").read_bytes()
    rc = main(["export", "--gate-only", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    assert rc == 0 and out.startswith("refitted the input gate of ") and "of 30 validation films flagged" in out
    again = json.loads((tmp_path / "m" / "metadata.json").read_text())
    assert again["gate"]["sha256"] == meta["gate"]["sha256"] and again["onnx"] == meta["onnx"]
    assert (tmp_path / "m" / "model.onnx").read_bytes() == onnx_before
    rc = main(["export", str(run_dir), "--gate-only", "--out", str(tmp_path / "m")])
    assert rc == 2 and "--gate-only takes only --out" in capsys.readouterr().err
    rc = main(["export", "--review-band-only", "--out", str(tmp_path / "m")])
    assert rc == 2 and "no dataset or no operating point" in capsys.readouterr().err
    # with an operating point (every film called pneumonia), --review-band-only fits it on the 30 films
    from deephealth.artifact import write_metadata

    write_metadata(tmp_path / "m", {**again, "operating_point": {"threshold": 0.01, "target_sensitivity": 0.95}})
    rc = main(["export", "--review-band-only", "--out", str(tmp_path / "m")])
    out = capsys.readouterr().out
    band = json.loads((tmp_path / "m" / "metadata.json").read_text())["operating_point"]["review_band"]
    assert rc == 0 and out.startswith("fitted the review band of ") and "% of 30 validation films flagged" in out
    assert (band["n_films"], band["n_views"], band["quantile"]) == (30, 15, 0.9)
    assert band["validation"]["films"] == 30 and len(band["validation"]["perturbations"]) == 15
    assert band["pneumonia_logit_margin"] > 0 and band["type_logit_margin"] > 0
    lo, hi = band["pneumonia_probability_range"]
    assert lo < 0.01 < hi
    assert (tmp_path / "m" / "model.onnx").read_bytes() == onnx_before
    rc = main(["export", "--review-band-only", "--out", str(tmp_path / "m")])  # deterministic: the same band
    capsys.readouterr()
    again_band = json.loads((tmp_path / "m" / "metadata.json").read_text())["operating_point"]["review_band"]
    assert rc == 0 and again_band["pneumonia_logit_margin"] == band["pneumonia_logit_margin"]
    # a wider quantile gives a wider band on the same films; it is recorded
    rc = main(["export", "--review-band-only", "--review-quantile", "0.99", "--out", str(tmp_path / "m")])
    assert rc == 0 and "(quantile 0.99 of the benign-change shifts)" in capsys.readouterr().out
    wide = json.loads((tmp_path / "m" / "metadata.json").read_text())["operating_point"]["review_band"]
    assert wide["quantile"] == 0.99 and wide["pneumonia_logit_margin"] > band["pneumonia_logit_margin"]
    for args in (["--review-band-only", "--review-quantile", "1.5"], ["--gate-only", "--review-quantile", "0.9"]):
        rc = main(["export", *args, "--out", str(tmp_path / "m")])
        assert rc == 2 and "--review-quantile" in capsys.readouterr().err
    rc = main(["export", str(run_dir), "--review-band-only", "--out", str(tmp_path / "m")])
    assert rc == 2 and "--review-band-only takes only --out" in capsys.readouterr().err
    rc = main(["export", "--gate-only", "--review-band-only", "--out", str(tmp_path / "m")])
    assert rc == 2 and "only one of" in capsys.readouterr().err
    rc = main(["export", str(tmp_path / "nothing"), "--out", str(tmp_path / "m2")])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("export failed:") and "nothing" in err and "Traceback" not in err


_NO_TRAIN_STACK = """
import importlib.abc, sys
BLOCKED = {"torch", "torchvision", "timm", "onnx", "onnxscript", "sklearn", "scipy", "matplotlib"}
class Block(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed (blocked by the test)")
sys.meta_path.insert(0, Block())
from deephealth.cli import main
"""


def test_review_band_only_needs_only_the_serving_stack(tiny_model_dir: Path, dataset_root: Path, tmp_path):
    # With PyTorch, timm, onnx, scikit-learn, SciPy and matplotlib made unimportable, as on a serving
    # install (numpy, Pillow, onnxruntime), --review-band-only still fits the band; other modes say
    # they need the [train] extra.
    import shutil
    import subprocess
    import sys

    from deephealth.artifact import write_metadata

    model = tmp_path / "m"
    shutil.copytree(tiny_model_dir, model)
    meta = json.loads((model / "metadata.json").read_text())
    meta["operating_point"] = {"threshold": 0.01, "target_sensitivity": 0.95}
    meta["training"] = {"config": {"data_dir": str(dataset_root), "max_train_images": 120, "val_fraction": 0.1,
                                   "split_seed": 0, "seed": 0}}
    write_metadata(model, meta)
    code = _NO_TRAIN_STACK + (
        "rc = main(['export', '--review-band-only', '--out', sys.argv[1]])\n"
        "loaded = sorted(m for m in sys.modules if m.split('.')[0] in BLOCKED)\n"
        "assert rc == 0 and not loaded, (rc, loaded)\n"
        "assert main(['export', '--gate-only', '--out', sys.argv[1]]) == 2\n"
    )
    res = subprocess.run([sys.executable, "-c", code, str(model)], capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("fitted the review band of tiny-test-model 0.0.0-test in ")
    assert "% of 30 validation films flagged" in res.stdout
    assert "deephealth export needs the [train] extra (PyTorch, timm, onnx)" in res.stderr
    assert "only --review-band-only runs without it" in res.stderr
    band = json.loads((model / "metadata.json").read_text())["operating_point"]["review_band"]
    assert (band["n_films"], band["n_views"], band["quantile"]) == (30, 15, 0.9)
    assert band["validation"]["split"]["max_train_images"] == 120
    lo, hi = band["pneumonia_probability_range"]
    assert lo < 0.01 < hi
    # the same fit as the exporter's own (imported through deephealth.training.export, with PyTorch loaded)
    from deephealth.training.export import fit_run_review_band

    again = fit_run_review_band(model, meta["training"]["config"])
    assert again["pneumonia_logit_margin"] == band["pneumonia_logit_margin"]
    assert again["type_logit_margin"] == band["type_logit_margin"]


@pytest.mark.parametrize(("onnx_meta", "reason"), [
    ({"precision": "int8", "quantization": {"tool": "deephealth.training.qat (torch.ao.quantization fake "
                                                     "quantisers, torch.onnx.export)"}},
     "a quantisation-aware trained run exports an int8 graph, which has no float32 weights for the evidence map "
     "to share"),
    ({"precision": "int8", "quantization": {"tool": "onnxruntime.quantization.quantize_static"}},
     "--quantize exports an int8 graph, which has no float32 weights for the evidence map to share"),
    ({"precision": "float32"}, "see the warning above"),
])
def test_export_summary_says_why_the_evidence_map_is_missing(onnx_meta, reason):
    from deephealth.cli.export import _evidence_not_added

    assert _evidence_not_added({"onnx": onnx_meta}) == (
        f"  evidence map: not added ({reason}); heatmaps use the class activation map")


def test_int8_export(run_dir: Path, tmp_path, capsys):
    """--quantize ships an int8 QDQ graph that agrees with the float32 network and loads in the Predictor."""
    from deephealth.inference import Predictor

    rc = main(["export", str(run_dir), "--out", str(tmp_path / "int8"), "--quantize", "--no-gate"])
    assert rc == 0, capsys.readouterr().err
    out = capsys.readouterr().out
    assert "int8: probabilities within" in out
    # The summary says why there is no evidence map (the reason is only logged at INFO).
    assert ("  evidence map: not added (--quantize exports an int8 graph, which has no float32 weights for the "
            "evidence map to share); heatmaps use the class activation map\n") in out
    meta = json.loads((tmp_path / "int8" / "metadata.json").read_text())
    assert meta["onnx"]["precision"] == "int8" and "MinMax over" in meta["onnx"]["quantization"]["calibration"]
    assert meta["onnx"]["quantization"]["reduce_range"] is True  # 7-bit weights: the same answers without VNNI
    q = meta["export_check"]["int8"]
    assert q["passed"] and q["images"] == 8 and q["prob_max_abs_diff"] <= q["prob_atol"]
    ops = {n.op_type for n in onnx.load(str(tmp_path / "int8" / "model.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    fp32 = export_run(run_dir, tmp_path / "fp32", gate=False)
    fp32_meta = json.loads((fp32 / "metadata.json").read_text())
    assert fp32_meta["onnx"]["precision"] == "float32"
    # Without --version an exported run is labelled with its run's name, never as a release.
    from deephealth import __version__
    from deephealth.training.export import run_version

    assert fp32_meta["version"] == meta["version"] == f"{__version__}+tiny.run"
    assert run_version("20261203-100853-efficientnet_lite0-192") == f"{__version__}+20261203.100853.efficientnet.lite0.192"
    assert run_version("--") == f"{__version__}+run"
    x = np.random.default_rng(0).random((64, 80)).astype(np.float32)
    a = Predictor(tmp_path / "int8").predict(x, allow_unsuitable=True)  # noise: the input gate refuses it
    b = Predictor(fp32).predict(x, allow_unsuitable=True)
    np.testing.assert_allclose(a.probs, b.probs, atol=q["prob_atol"])
    # check_quantized refuses an int8 graph that does not match the network
    model = _tiny_model(seed=1)
    with torch.no_grad():
        model.fc.bias[1] += 50.0
    with pytest.raises(ExportError, match="int8 model's probabilities differ"):
        from deephealth.training.export import check_quantized

        check_quantized(CamModel(model).eval(), tmp_path / "int8" / "model.onnx",
                        np.zeros((2, 1, 64, 64), np.float32), temperature=1.25)


def test_export_and_predict_print_no_onnx_runtime_warning(run_dir: Path, tmp_path, capfd):
    """The graph's evidence_on input has a default (an initializer), which ONNX Runtime warns about, with
    terminal colour codes, at each session's creation; the project's own sessions log only errors."""
    from deephealth.artifact import session_options

    out = tmp_path / "m"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    err = capfd.readouterr().err
    assert "evidence_on" not in err and "onnxruntime" not in err and "\x1b[" not in err, err
    onnx_path = out / ModelArtifact.load(out).metadata["onnx"]["file"]
    # The condition still holds (ONNX Runtime's default options warn), so the check above means something.
    ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    assert "Initializer evidence_on appears in graph inputs" in capfd.readouterr().err
    ort.InferenceSession(str(onnx_path), session_options(), providers=["CPUExecutionProvider"])
    assert capfd.readouterr().err == ""
    # Serving: predict with the evidence map (the If branch) on a dataset film.
    film = sorted((dataset_dir() / "train" / "NORMAL").iterdir())[0]
    rc = main(["predict", "--model", str(out), "--allow-unsuitable", "--heatmap-dir", str(tmp_path / "hm"),
               "--format", "json", str(film)])
    captured = capfd.readouterr()
    assert rc == 0 and json.loads(captured.out)
    assert "evidence_on" not in captured.err and "\x1b[" not in captured.err, captured.err
    assert list((tmp_path / "hm").iterdir())
