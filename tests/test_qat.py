"""Quantisation-aware training (deephealth.training.qat): BatchNorm folding, fake quantisers, QDQ export to ONNX Runtime."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

from torch import nn  # noqa: E402

from deephealth.training import qat  # noqa: E402
from deephealth.training.config import TrainConfig  # noqa: E402
from deephealth.training.model import CamModel, build_model  # noqa: E402
from deephealth.training.onnx_graph import ExportError  # noqa: E402

SIZE = 64


def _lite0(seed: int = 0) -> nn.Module:
    """EfficientNet-Lite0 with random weights and random (non-trivial) BatchNorm statistics, eval mode."""
    torch.manual_seed(seed)
    m = build_model("efficientnet_lite0", drop_rate=0.3)
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, nn.BatchNorm2d):
                mod.running_mean.uniform_(-0.2, 0.2)
                mod.running_var.uniform_(0.5, 2.0)
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.2, 0.2)
        nn.init.normal_(m.classifier.weight, std=0.05)
    return m.eval()


def _films(n: int, seed: int = 0) -> torch.Tensor:
    """Smooth film-like inputs in the model's normalised range [-1, 1], ``(n, 1, SIZE, SIZE)`` float32."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 1, 8, 8, generator=g)
    x = nn.functional.interpolate(low, size=(SIZE, SIZE), mode="bilinear", align_corners=False)
    return (x * 2 - 1).clamp(-1, 1)


@pytest.fixture(scope="module")
def prepared() -> tuple[nn.Module, nn.Module]:
    """(float model, calibrated 7-bit QAT model in eval mode)."""
    m = _lite0()
    q = qat.prepare_qat(m, weight_bits=7)
    qat.calibrate(q, [_films(16, s) for s in range(2)])
    qat.freeze_activation_observers(q)
    return m, q.eval()


def test_fold_batchnorm_preserves_logits() -> None:
    m = _lite0()
    folded = qat.fold_batchnorm(copy.deepcopy(m)).eval()
    assert not any(isinstance(x, nn.BatchNorm2d) for x in folded.modules())
    # timm's BatchNormAct2d carries the ReLU6: it must survive the folding
    assert sum(isinstance(x, nn.ReLU6) for x in folded.modules()) == sum(isinstance(x, nn.ReLU6) for x in m.modules())
    x = _films(4)
    with torch.no_grad():
        ref, out = m(x), folded(x)
    assert ref.abs().max() > 0.1  # a non-trivial check
    torch.testing.assert_close(out, ref, rtol=0, atol=1e-5)


def test_fold_batchnorm_refuses_a_batchnorm_without_its_convolution() -> None:
    with pytest.raises(ValueError, match="does not follow a Conv2d"):
        qat.fold_batchnorm(nn.Sequential(nn.ReLU(), nn.BatchNorm2d(4)))
    with pytest.raises(ValueError, match="of 4 channels"):
        qat.fold_batchnorm(nn.Sequential(nn.Conv2d(1, 3, 1), nn.BatchNorm2d(4)))


def test_prepare_qat_places_the_quantisers_and_leaves_the_original(prepared) -> None:
    m, q = prepared
    assert any(isinstance(x, nn.BatchNorm2d) for x in m.modules())  # original untouched
    s = qat.qat_summary(q)
    # Lite0: 49 convolutions; activations: input + 49 convolutions + 9 residual additions
    assert (s["weight_quantizers"], s["activation_quantizers"]) == (49, 59)
    assert s["weight_range"] == [-64, 63]
    assert qat.is_qat_model(q) and not qat.is_qat_model(m)
    with pytest.raises(ValueError, match="weight_bits"):
        qat.prepare_qat(m, weight_bits=6)
    with pytest.raises(ValueError, match="EfficientNet-family"):
        qat.prepare_qat(build_model("resnet18"))


def test_fake_quantised_model_is_close_to_float_and_rounds(prepared) -> None:
    m, q = prepared
    x = _films(8, seed=5)
    with torch.no_grad():
        ref, out = m(x), q(x)
    diff = (out - ref).abs().max().item()
    assert 0 < diff < 0.25 * ref.abs().max().item()  # rounding happened, and stayed small
    # every convolution's weights lie on their per-channel grid of the 7-bit range
    conv = q.conv_head
    w = conv.weight_fake_quant(conv.weight).detach()
    k = w / conv.weight_fake_quant.scale.reshape(-1, 1, 1, 1)
    torch.testing.assert_close(k, k.round(), rtol=0, atol=1e-4)
    assert k.round().min() >= -64 and k.round().max() <= 63


def test_evaluation_never_moves_the_ranges() -> None:
    q = qat.prepare_qat(_lite0(), weight_bits=8)
    qat.calibrate(q, [_films(8)])  # observers still on
    q.eval()
    before = {n: fq.scale.clone() for n, fq in qat.fake_quantizers(q)}
    with torch.no_grad():
        q(_films(4) * 50.0)  # far outside the calibrated range
    for n, fq in qat.fake_quantizers(q):
        torch.testing.assert_close(fq.scale, before[n], rtol=0, atol=0)
    q.train()
    with torch.no_grad():
        q(_films(4) * 50.0)
    assert not torch.equal(q.conv_stem[0].scale, before["conv_stem.0"])  # training mode observes


def test_qdq_export_runs_int8_in_onnxruntime_and_matches_the_fake_quantised_model(
        prepared, tmp_path: Path) -> None:
    _, q = prepared
    path = tmp_path / "qat.onnx"
    counts = qat.export_qdq_onnx(q, path, SIZE)
    g = onnx.load(str(path)).graph
    ops = [n.op_type for n in g.node]
    assert ops.count("DequantizeLinear") >= 49 + 59 and ops.count("QuantizeLinear") == 59
    assert counts["int8_weights"] == 49  # every weight stored as int8, not quantised at run time
    assert sum(t.data_type == onnx.TensorProto.INT8 for t in g.initializer) >= 49
    assert [o.name for o in g.output] == ["logits", "cam", "features"]

    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 49 and "Conv" not in fused  # integer kernels, no float convolution
    assert fused.count("QLinearAdd") == 9

    x = _films(6, seed=9).numpy()
    logits, cam, feats = sess.run(None, {"image": x})
    with torch.no_grad():
        t_logits, t_cam, t_feats = CamModel(q)(torch.from_numpy(x))
    # Integer requantisation rounds a few activations one step differently from the fake quantisers,
    # and a random network amplifies that more than the trained one (0.05 logits there): within 15 %
    # of the logits' scale here (8-bit weights, saturating on AVX2, were off by 0.57 on the trained one).
    scale = np.abs(t_logits.numpy()).max()
    assert np.abs(logits - t_logits.numpy()).max() < 0.15 * scale
    assert np.abs(feats - t_feats.numpy()).max() < 0.15 * np.abs(t_feats.numpy()).max()
    np.testing.assert_allclose(cam.mean(axis=(2, 3)), logits, atol=1e-4)
    report = qat.check_qdq(q, path, x, temperature=1.0)
    assert report["passed"] and report["images"] == 6 and report["top1_agreement"] >= 5 / 6
    assert report["reference"] == "PyTorch fake-quantised network (QAT)" and report["prob_atol"] == qat.QDQ_PROB_ATOL
    # against another network (different weights), at a sharp temperature, the check refuses the graph
    other = qat.prepare_qat(_lite0(seed=1), weight_bits=7)
    qat.calibrate(other, [_films(16, 5)])
    other.eval()
    with pytest.raises(ExportError, match=r"differ from the PyTorch fake-quantised network \(QAT\) by up to"):
        qat.check_qdq(other, path, x, temperature=0.01)


def test_qat_config_is_validated() -> None:
    assert TrainConfig(qat=True).qat_weight_bits == 7
    with pytest.raises(ValueError, match="qat_weight_bits"):
        TrainConfig(qat=True, qat_weight_bits=4)
    with pytest.raises(ValueError, match="qat needs mode"):
        TrainConfig(qat=True, mode="linear_probe")


def test_init_checkpoint_from_a_model_folder(tmp_path: Path) -> None:
    from deephealth.training.loop import load_init_checkpoint

    torch.manual_seed(0)
    src = build_model("resnet18")
    cfg = TrainConfig(arch="resnet18", val_fraction=0.1, split_seed=0)
    torch.save({"model_state": src.state_dict(), "model_args": {"arch": "resnet18", "num_classes": 3, "in_chans": 1},
                "preprocessing": cfg.preprocessing.to_dict()}, tmp_path / "weights.pt")
    (tmp_path / "metadata.json").write_text(json.dumps({
        "preprocessing": cfg.preprocessing.to_dict(),
        "training": {"epoch": 4, "config": {**cfg.to_dict(), "name": "rel"}},
        "data": {"n_val": 502, "val_counts": {"normal": 140, "bacterial": 234, "viral": 128}}}))
    torch.manual_seed(1)
    m = build_model("resnet18")
    info = load_init_checkpoint(m, cfg.replace(init_checkpoint=str(tmp_path)))
    torch.testing.assert_close(m.fc.weight, src.fc.weight, rtol=0, atol=0)
    assert (info["epoch"], info["name"], info["path"]) == (4, "rel", str(tmp_path / "weights.pt"))
    assert info["split"] == {"n_val": 502, "val_counts": {"normal": 140, "bacterial": 234, "viral": 128}}
    with pytest.raises(ValueError, match="split_seed is 0 there but 2"):
        load_init_checkpoint(m, cfg.replace(init_checkpoint=str(tmp_path), split_seed=2))
    (tmp_path / "metadata.json").unlink()
    with pytest.raises(FileNotFoundError, match="without metadata.json"):
        load_init_checkpoint(m, cfg.replace(init_checkpoint=str(tmp_path)))


@pytest.mark.slow
def test_qat_fine_tune_of_the_released_model_trains_checkpoints_and_exports_int8(
        tmp_path: Path, dataset_root: Path) -> None:
    # The training-loop path of configs/explore/lite0-qat.yaml (fine-tune 0.3.0 with fake quantisers),
    # shrunk to 16 training films (4 validation films) at 64 px for 2 epochs of 2 steps, then
    # `deephealth export` of the run. One thread: on a shared 2-core machine two threads oversubscribe
    # (about 6x slower per step). 30 s measured on 2 cores shared with other jobs (load 4).
    import csv
    import math

    from deephealth.paths import BUNDLED_MODELS_DIR, DEFAULT_MODEL_NAME
    from deephealth.training.config import load_config
    from deephealth.training.export import export_run
    from deephealth.training.loop import fit

    released = BUNDLED_MODELS_DIR / DEFAULT_MODEL_NAME
    config = load_config(Path(__file__).resolve().parents[1] / "configs" / "explore" / "lite0-qat.yaml",
                         data_dir=str(dataset_root), init_checkpoint=str(released), input_size=64,
                         max_train_images=16, batch_size=8, qat_calibration_images=8, out_dir=str(tmp_path),
                         name="qat-smoke", num_threads=1)
    assert (config.qat, config.qat_weight_bits, config.qat_observer_steps, config.epochs) == (True, 7, 0, 2)
    threads = torch.get_num_threads()
    try:
        run = fit(config, progress=False)
    finally:
        torch.set_num_threads(threads)  # fit sets it process-wide

    # the loss: finite every epoch, and it moved (different weights, different augmented batches)
    rows = list(csv.DictReader((run / "history.csv").read_text().splitlines()))
    losses = [float(r["train_loss"]) for r in rows]
    assert len(losses) == 2 and all(math.isfinite(v) and 0 < v < 20 for v in losses) and losses[0] != losses[1]

    # the checkpoint: BatchNorm folded away, 49 + 59 fake quantisers, activation ranges frozen after
    # calibration on 8 training films, and it loads strictly into a freshly prepared network
    ckpt = torch.load(run / "best.pt", map_location="cpu", weights_only=True)
    state = ckpt["model_state"]
    assert not any(k.endswith(("running_mean", "running_var")) for k in state)
    assert ckpt["summary"]["qat"]["calibration_images"] == 8 and ckpt["data"]["n_train"] == 16
    assert (ckpt["summary"]["qat"]["weight_quantizers"], ckpt["summary"]["qat"]["activation_quantizers"]) == (49, 59)
    q = qat.prepare_qat(build_model("efficientnet_lite0"), weight_bits=7)
    q.load_state_dict(state, strict=True)
    q.eval()
    assert qat.is_qat_model(q) and not any(isinstance(m, nn.BatchNorm2d) for m in q.modules())
    acts = [fq for n, fq in qat.fake_quantizers(q) if not n.endswith("weight_fake_quant")]
    weights = [fq for n, fq in qat.fake_quantizers(q) if n.endswith("weight_fake_quant")]
    assert len(acts) == 59 and all(int(fq.observer_enabled[0]) == 0 for fq in acts)  # frozen (observer_steps 0)
    assert len(weights) == 49 and all(int(fq.observer_enabled[0]) == 1 for fq in weights)  # follow the weights
    assert all(float(fq.scale.reshape(-1)[0]) > 0 for fq in acts)
    conv = q.conv_head
    k = conv.weight_fake_quant(conv.weight).detach() / conv.weight_fake_quant.scale.reshape(-1, 1, 1, 1)
    assert k.round().min() >= -64 and k.round().max() <= 63  # 7-bit grid

    # fine-tuned, not merely copied: the weights moved from 0.3.0's BatchNorm-folded ones, a little (lr 1e-4)
    start = build_model("efficientnet_lite0")
    start.load_state_dict(torch.load(released / "weights.pt", map_location="cpu", weights_only=True)["model_state"])
    folded = qat.fold_batchnorm(start.eval())
    stem = q.conv_stem[1]  # (input fake quantiser, convolution)
    assert isinstance(stem, torch.ao.nn.qat.Conv2d) and stem.weight.shape == folded.conv_stem.weight.shape
    moved = (stem.weight - folded.conv_stem.weight).abs().max().item()
    assert 0 < moved < 0.1 * folded.conv_stem.weight.abs().max().item()
    x = _films(4, seed=3)
    with torch.no_grad():
        logits = q(x)
    assert logits.shape == (4, 3) and bool(torch.isfinite(logits).all())

    # `deephealth export` of the run: a QDQ int8 graph that ONNX Runtime fuses into integer kernels
    out = export_run(run, tmp_path / "model", gate=False, evidence=False, review_band=False)
    meta = json.loads((out / "metadata.json").read_text())
    assert meta["onnx"]["precision"] == "int8"
    assert meta["onnx"]["quantization"]["tool"].startswith("deephealth.training.qat")
    assert meta["export_check"]["int8"]["reference"] and meta["export_check"]["int8"]["images"] > 0
    assert not (out / "weights.pt").exists()  # no float32 weights for an int8 model
    opts = ort.SessionOptions()
    opts.optimized_model_filepath = str(tmp_path / "opt.onnx")
    sess = ort.InferenceSession(str(out / "model.onnx"), opts, providers=["CPUExecutionProvider"])
    fused = [n.op_type for n in onnx.load(str(tmp_path / "opt.onnx")).graph.node]
    assert fused.count("QLinearConv") == 49 and "Conv" not in fused and fused.count("QLinearAdd") == 9
    onnx_logits = sess.run(["logits"], {"image": x.numpy()})[0]
    assert np.abs(onnx_logits - logits.numpy()).max() < 0.15 * np.abs(logits.numpy()).max() + 0.05
