"""Export a trained network to the model artifact: ``model.onnx`` + ``metadata.json`` + ``model_summary.txt``.

The ONNX graph is :class:`deephealth.training.model.CamModel` exported with PyTorch's TorchScript
ONNX exporter (``torch.onnx.export(..., dynamo=False)``, one self-contained file with the weights
embedded) and a dynamic batch axis:

- input ``image``: ``(N, 1, S, S)`` float32, the stacked output of
  :func:`deephealth.preprocessing.preprocess`;
- output ``logits``: ``(N, 3)`` float32 raw logits (calibrated probabilities are
  ``softmax(logits / temperature)``, temperature scaling, Guo et al., 2017);
- output ``cam``: ``(N, 3, h, w)`` float32 class activation maps in logit units (Zhou et al., 2016),
  ``logits == cam.mean(axis=(2, 3))``;
- output ``features``: ``(N, Cf)`` float32 globally pooled penultimate features (what the linear
  head reads), used by the input gate (:mod:`deephealth.gate`).

After the checks, the input gate is fitted on the exported graph's own outputs
(:func:`deephealth.training.gate_fit.fit_gate`, ``export_run`` only, when the dataset is present):
``gate.npz`` beside ``model.onnx``, thresholds and false-alarm rate under ``gate`` in
``metadata.json``.

Every export is checked before ``metadata.json`` is written (the folder is only complete when it
passes): ``onnx.checker.check_model(full_check=True)``, then PyTorch vs ONNX Runtime agreement on
real dataset images (plus random inputs) within :data:`LOGITS_ATOL` / :data:`CAM_ATOL` (absolute)
and :data:`RTOL` (relative), at batch size 1 and N, and the CAM contract
``logits == mean_hw(cam)``. The figures are recorded under ``export_check`` in ``metadata.json``.

Optionally (``quantize=True``, ``deephealth export --quantize``) the checked float32 graph is
quantized to int8 with ONNX Runtime's static quantization (about 3x less CPU time per image on
CPUs with AVX-512 VNNI); the int8 graph is then compared with the float32 network (calibrated
probabilities within :data:`QUANT_PROB_ATOL`) and recorded under ``export_check.int8``.
"""

from __future__ import annotations

import datetime as _dt
import logging
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deephealth import __version__
from deephealth.artifact import ONNX_FILE, sha256_file, write_metadata
from deephealth.gate import GATE_FILE
from deephealth.labels import CLASS_NAMES, INTENDED_USE
from deephealth.paths import DEFAULT_MODEL_NAME, dataset_dir, portable_path
from deephealth.preprocessing import PreprocessConfig, preprocess
from deephealth.training.model import CamModel, build_model

_logger = logging.getLogger(__name__)

INPUT_NAME = "image"
LOGITS_NAME = "logits"
CAM_NAME = "cam"
FEATURES_NAME = "features"
SUMMARY_FILE = "model_summary.txt"
OPSET = 17
LOGITS_ATOL = 1e-4
"""Absolute tolerance for PyTorch vs ONNX Runtime logits (logit units)."""
CAM_ATOL = 1e-3
"""Absolute tolerance for PyTorch vs ONNX Runtime class activation maps (logit units)."""
RTOL = 1e-4
"""Relative tolerance for both outputs (``|a - b| <= atol + rtol * |b|``, numpy ``allclose``)."""
QUANT_PROB_ATOL = 0.1
"""Largest accepted difference of calibrated probabilities between an int8 ONNX model and the
float32 PyTorch network on the check images (a gross-error guard; the shipped artifact must still
be scored with ``deephealth evaluate``)."""
QUANT_CALIBRATION_IMAGES = 64
"""Training images used to calibrate int8 activation ranges."""
WEIGHTS_FILE = "weights.pt"
"""PyTorch weights shipped beside the ONNX file (for ``deephealth adapt``)."""
MAX_ONNX_BYTES = 50 * 1024 * 1024
"""Size above which an export is logged as too large to ship in the package."""


class ExportError(RuntimeError):
    """A checkpoint that cannot be exported, or an export that fails its checks."""


# --------------------------------------------------------------------------------------------- summary


def _count_params(module: nn.Module) -> int:
    return int(sum(p.numel() for p in module.parameters()))


def model_summary(model: nn.Module, input_size: int) -> dict[str, Any]:
    """Describe a network layer by layer by running one ``(1, 1, S, S)`` input through it.

    Output shapes are recorded with forward hooks on every leaf module, as in Keras'
    ``model.summary()``.

    Args:
        model: a pool+linear classifier (the plain timm model, not the :class:`CamModel` wrapper).
        input_size: ``S``, side of the square input in pixels.

    Returns:
        ``{"parameters": int, "trainable_parameters": int, "layers": [...], "leaf_layers": [...],
        "feature_shape": [C, h, w]}``; ``layers`` lists the top-level children and ``leaf_layers``
        every leaf module, each as ``{"name", "type", "output_shape", "parameters"}`` with the batch
        axis shown as ``"N"``.
    """
    records: dict[str, list[Any]] = {}
    hooks = []

    def _hook(name: str):
        def fn(_mod: nn.Module, _inp: Any, out: Any) -> None:
            if isinstance(out, torch.Tensor):
                records[name] = ["N", *out.shape[1:]]
            elif isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
                records[name] = ["N", *out[0].shape[1:]]

        return fn

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    tops = list(model.named_children())
    for name, mod in {**dict(leaves), **dict(tops)}.items():
        hooks.append(mod.register_forward_hook(_hook(name)))
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            feats = model.forward_features(torch.zeros(1, 1, input_size, input_size))
            model.forward_head(feats)
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)

    def _row(name: str, mod: nn.Module) -> dict[str, Any]:
        shape = records.get(name)
        return {
            "name": name,
            "type": type(mod).__name__,
            "output_shape": [int(s) if not isinstance(s, str) else s for s in shape] if shape else None,
            "parameters": _count_params(mod),
        }

    return {
        "parameters": _count_params(model),
        "trainable_parameters": int(sum(p.numel() for p in model.parameters() if p.requires_grad)),
        "feature_shape": [int(s) for s in feats.shape[1:]],
        "layers": [_row(n, m) for n, m in tops],
        "leaf_layers": [_row(n, m) for n, m in leaves],
    }


def format_summary(summary: dict[str, Any], title: str, input_size: int, num_classes: int) -> str:
    """Render :func:`model_summary` as a fixed-width text table (the content of ``model_summary.txt``)."""
    h, w = summary["feature_shape"][1:]
    lines = [
        title,
        "",
        f"input  {INPUT_NAME}: (N, 1, {input_size}, {input_size}) float32 (preprocess() output)",
        f"output {LOGITS_NAME}: (N, {num_classes}) float32 raw logits",
        f"output {CAM_NAME}: (N, {num_classes}, {h}, {w}) float32 class activation maps (logit units)",
        f"output {FEATURES_NAME}: (N, {summary['feature_shape'][0]}) float32 pooled penultimate features",
        "",
    ]
    rows = summary["leaf_layers"]
    name_w = max([len("layer")] + [len(r["name"]) for r in rows])
    type_w = max([len("type")] + [len(r["type"]) for r in rows])
    shape_w = max([len("output shape")] + [len(_shape_str(r["output_shape"])) for r in rows])
    header = f"{'layer':<{name_w}}  {'type':<{type_w}}  {'output shape':<{shape_w}}  {'params':>12}"
    lines += [header, "-" * len(header)]
    for r in rows:
        lines.append(
            f"{r['name']:<{name_w}}  {r['type']:<{type_w}}  {_shape_str(r['output_shape']):<{shape_w}}  "
            f"{r['parameters']:>12,}"
        )
    lines += [
        "-" * len(header),
        f"{len(rows)} layers, {summary['parameters']:,} parameters "
        f"({summary['trainable_parameters']:,} trainable), "
        f"{summary['parameters'] * 4 / 1e6:.1f} MB as float32",
        "",
    ]
    return "\n".join(lines)


def _shape_str(shape: Sequence[Any] | None) -> str:
    return "?" if shape is None else "(" + ", ".join(str(s) for s in shape) + ")"


# --------------------------------------------------------------------------------------- parity inputs


def dataset_parity_inputs(preprocessing: PreprocessConfig, root: str | Path | None = None) -> tuple[np.ndarray, list[str]]:
    """Real radiographs for the PyTorch vs ONNX Runtime check, read and preprocessed as in inference.

    Takes the first 3 normal and 3 pneumonia images of the official ``val`` split and the first
    2 viral images of ``train`` (sorted by name), so all three classes are represented.

    Args:
        preprocessing: the model's preprocessing contract.
        root: Kermany-layout dataset folder; default :func:`deephealth.paths.dataset_dir`.

    Returns:
        ``(x, names)``: ``x`` of shape ``(n, 1, S, S)`` float32 (``n`` = 0 when no dataset is found)
        and the relative file names.
    """
    from deephealth.readers import ImageReadError, read_image

    root = Path(root) if root is not None else dataset_dir()
    files: list[Path] = []
    files += sorted((root / "val" / "NORMAL").glob("*.jpeg"))[:3]
    files += sorted((root / "val" / "PNEUMONIA").glob("*.jpeg"))[:3]
    files += sorted((root / "train" / "PNEUMONIA").glob("*virus*.jpeg"))[:2]
    arrays, names = [], []
    for f in files:
        try:
            arrays.append(preprocess(read_image(f).image, preprocessing))
        except (ImageReadError, ValueError, OSError) as exc:  # a bad file only shrinks the check set
            _logger.warning("parity check: skipping %s (%s)", f, exc)
            continue
        names.append(str(f.relative_to(root)))
    s = preprocessing.input_size
    x = np.stack(arrays) if arrays else np.zeros((0, 1, s, s), np.float32)
    return x.astype(np.float32), names


# ---------------------------------------------------------------------------------------------- export


def _export_onnx(cam_model: CamModel, path: Path, input_size: int, opset: int) -> None:
    dummy = torch.zeros(2, 1, input_size, input_size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's DeprecationWarning / TracerWarnings
        torch.onnx.export(
            cam_model,
            (dummy,),
            str(path),
            input_names=[INPUT_NAME],
            output_names=[LOGITS_NAME, CAM_NAME, FEATURES_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, LOGITS_NAME: {0: "batch"}, CAM_NAME: {0: "batch"},
                          FEATURES_NAME: {0: "batch"}},
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )


def check_export(
    cam_model: CamModel,
    onnx_path: Path,
    inputs: np.ndarray,
    input_names: Sequence[str] = (),
    n_random: int = 2,
    seed: int = 0,
) -> dict[str, Any]:
    """Check an exported file: ONNX checker, then PyTorch vs ONNX Runtime agreement.

    Args:
        cam_model: the wrapper that was exported, in eval mode.
        onnx_path: the exported file.
        inputs: ``(n, 1, S, S)`` float32 real inputs (``n`` may be 0).
        input_names: names of the real inputs, recorded in the report.
        n_random: standard-normal random inputs added to the real ones.
        seed: seed of the random inputs.

    Returns:
        The ``export_check`` report: tolerances, largest differences, inputs used, ``passed``.

    Raises:
        ExportError: if the checker fails or an output differs by more than the tolerances.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as exc:  # onnx raises ValidationError and friends
        raise ExportError(f"{onnx_path}: ONNX checker failed: {exc}") from exc

    if inputs.ndim != 4 or inputs.shape[1] != 1:
        raise ExportError(f"parity inputs must have shape (n, 1, S, S), got {inputs.shape}")
    s = inputs.shape[-1]
    rng = np.random.default_rng(seed)
    x = np.concatenate([inputs, rng.standard_normal((n_random, 1, s, s)).astype(np.float32)])
    if len(x) == 0:
        raise ExportError("no inputs for the parity check")

    with torch.no_grad():
        t_logits, t_cam, t_feat = (t.numpy() for t in cam_model(torch.from_numpy(x)))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    sess = ort.InferenceSession(str(onnx_path), opts, providers=["CPUExecutionProvider"])
    o_logits, o_cam, o_feat = sess.run([LOGITS_NAME, CAM_NAME, FEATURES_NAME], {INPUT_NAME: x})
    # batch size 1 must give the same rows as the full batch (dynamic batch axis)
    o1_logits, o1_cam = sess.run([LOGITS_NAME, CAM_NAME], {INPUT_NAME: x[:1]})

    report = {
        "onnx_checker": "passed (full_check=True)",
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "real_inputs": list(input_names),
        "random_inputs": int(n_random),
        "batch_sizes": [1, int(len(x))],
        "logits_atol": LOGITS_ATOL,
        "cam_atol": CAM_ATOL,
        "rtol": RTOL,
        "logits_max_abs_diff": float(np.max(np.abs(o_logits - t_logits))),
        "cam_max_abs_diff": float(np.max(np.abs(o_cam - t_cam))),
        "features_max_abs_diff": float(np.max(np.abs(o_feat - t_feat))),
        "batch1_logits_max_abs_diff": float(np.max(np.abs(o1_logits - o_logits[:1]))),
        "cam_mean_vs_logits_max_abs_diff": float(np.max(np.abs(o_cam.mean(axis=(2, 3)) - o_logits))),
        "predicted_class_agreement": float(np.mean(o_logits.argmax(1) == t_logits.argmax(1))),
    }
    failures = []
    if not np.allclose(o_logits, t_logits, atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"logits differ by up to {report['logits_max_abs_diff']:.3g}")
    if not np.allclose(o_cam, t_cam, atol=CAM_ATOL, rtol=RTOL):
        failures.append(f"cam differs by up to {report['cam_max_abs_diff']:.3g}")
    if not np.allclose(o_feat, t_feat, atol=CAM_ATOL, rtol=RTOL):
        failures.append(f"features differ by up to {report['features_max_abs_diff']:.3g}")
    if not np.allclose(o1_logits, o_logits[:1], atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"batch of 1 differs from the batch by {report['batch1_logits_max_abs_diff']:.3g}")
    if not np.allclose(o_cam.mean(axis=(2, 3)), o_logits, atol=LOGITS_ATOL, rtol=RTOL):
        failures.append(f"logits != mean(cam) by up to {report['cam_mean_vs_logits_max_abs_diff']:.3g}")
    report["passed"] = not failures
    if failures:
        raise ExportError(f"{onnx_path}: PyTorch vs ONNX Runtime check failed: " + "; ".join(failures))
    return report


def calibration_inputs(preprocessing: PreprocessConfig, n: int = QUANT_CALIBRATION_IMAGES,
                       root: str | Path | None = None) -> np.ndarray:
    """Training images for int8 calibration: every k-th file of ``train/`` (sorted), read and preprocessed.

    Returns:
        ``(m, 1, S, S)`` float32 with ``m <= n`` (``m = 0`` when no dataset is found).
    """
    from deephealth.readers import ImageReadError, read_image

    root = Path(root) if root is not None else dataset_dir()
    files = sorted((root / "train").glob("*/*.jpeg"))
    if files:
        files = files[:: max(1, len(files) // n)][:n]
    arrays = []
    for f in files:
        try:
            arrays.append(preprocess(read_image(f).image, preprocessing))
        except (ImageReadError, ValueError, OSError) as exc:
            _logger.warning("calibration: skipping %s (%s)", f, exc)
    s = preprocessing.input_size
    return np.stack(arrays).astype(np.float32) if arrays else np.zeros((0, 1, s, s), np.float32)


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray) -> dict[str, Any]:
    """Static int8 quantization with ONNX Runtime (QDQ format, per-channel int8 weights, uint8 activations).

    Activation ranges are calibrated with ONNX Runtime's MinMax method on ``calibration``
    (``(m, 1, S, S)`` float32 preprocessed training images); see the ONNX Runtime documentation,
    "Quantize ONNX models" (onnxruntime.ai/docs/performance/model-optimizations/quantization.html).

    Returns:
        The ``onnx.quantization`` metadata entry.

    Raises:
        ExportError: if there are no calibration images or quantization fails.
    """
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if len(calibration) == 0:
        raise ExportError("int8 quantization needs calibration images; no dataset found")

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration[i : i + 1] for i in range(len(calibration)))

        def get_next(self) -> dict[str, np.ndarray] | None:
            x = next(self._it, None)
            return None if x is None else {INPUT_NAME: x}

    prep = out_path.with_suffix(".prep.onnx")
    try:
        quant_pre_process(str(fp32_path), str(prep))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            quantize_static(
                str(prep), str(out_path), _Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
            )
    except Exception as exc:  # onnxruntime.quantization raises assorted types
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    finally:
        prep.unlink(missing_ok=True)
    return {
        "type": "int8 static, QDQ, per-channel int8 weights, uint8 activations",
        "tool": "onnxruntime.quantization.quantize_static",
        "calibration": f"MinMax over {len(calibration)} training images",
    }


def check_quantized(cam_model: CamModel, onnx_path: Path, inputs: np.ndarray, temperature: float) -> dict[str, Any]:
    """Compare an int8 ONNX model with the float32 PyTorch network on real inputs.

    Returns:
        Report: largest calibrated-probability and logit differences, top-1 agreement,
        ``logits`` vs ``mean_hw(cam)`` difference.

    Raises:
        ExportError: if the checker fails, there are no inputs, or probabilities differ by more
            than :data:`QUANT_PROB_ATOL`.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{onnx_path}: ONNX checker failed on the int8 model: {exc}") from exc
    if len(inputs) == 0:
        raise ExportError("no real inputs to check the int8 model against")
    with torch.no_grad():
        t_logits = cam_model(torch.from_numpy(inputs))[0].numpy()
    sess = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    o_logits, o_cam = sess.run([LOGITS_NAME, CAM_NAME], {INPUT_NAME: inputs})

    def probs(z: np.ndarray) -> np.ndarray:
        e = np.exp((z - z.max(1, keepdims=True)) / temperature)
        return e / e.sum(1, keepdims=True)

    report = {
        "images": int(len(inputs)),
        "prob_atol": QUANT_PROB_ATOL,
        "prob_max_abs_diff": float(np.abs(probs(o_logits) - probs(t_logits)).max()),
        "logits_max_abs_diff": float(np.abs(o_logits - t_logits).max()),
        "top1_agreement": float(np.mean(o_logits.argmax(1) == t_logits.argmax(1))),
        "cam_mean_vs_logits_max_abs_diff": float(np.abs(o_cam.mean(axis=(2, 3)) - o_logits).max()),
    }
    report["passed"] = report["prob_max_abs_diff"] <= QUANT_PROB_ATOL
    if not report["passed"]:
        raise ExportError(
            f"{onnx_path}: int8 model's probabilities differ from float32 by up to "
            f"{report['prob_max_abs_diff']:.3f} (> {QUANT_PROB_ATOL}); export without quantization"
        )
    return report


def export_model(
    model: nn.Module,
    preprocessing: PreprocessConfig,
    out_dir: str | Path,
    *,
    name: str = DEFAULT_MODEL_NAME,
    version: str = __version__,
    temperature: float = 1.0,
    class_names: Sequence[str] = CLASS_NAMES,
    metadata_extra: dict[str, Any] | None = None,
    parity_inputs: np.ndarray | None = None,
    parity_names: Sequence[str] | None = None,
    opset: int = OPSET,
    quantize: bool = False,
    calibration: np.ndarray | None = None,
    model_args: dict[str, Any] | None = None,
) -> Path:
    """Export a pool+linear classifier to a checked model folder.

    Writes ``model.onnx``, ``model_summary.txt`` and, once the checks pass, ``metadata.json``
    (keys documented in :mod:`deephealth.artifact`) into ``out_dir``; existing files of those
    names are replaced, other files are left alone. Nothing is written if the checks fail.

    Args:
        model: the plain classifier (timm pool+linear model, ``forward_features``/``forward_head``/
            ``get_classifier``), taking ``(N, 1, S, S)`` float32 and returning ``(N, C)`` logits.
        preprocessing: the preprocessing contract the model was trained with.
        out_dir: model folder to write (created if missing).
        name: model name.
        version: model version string.
        temperature: calibration temperature (> 0) fitted on validation.
        class_names: class names in output order; ``len`` must equal the number of logits.
        metadata_extra: extra ``metadata.json`` keys (``architecture``, ``training``, ``data``,
            ``validation_metrics``...); they cannot override the keys this function sets.
        parity_inputs: ``(n, 1, S, S)`` float32 real inputs for the PyTorch vs ONNX Runtime check;
            default :func:`dataset_parity_inputs` (8 dataset images, none if there is no dataset).
        parity_names: names of ``parity_inputs`` for the report.
        opset: ONNX opset version.
        quantize: ship an int8 model (:func:`quantize_int8`; about 3x faster on CPUs with
            AVX-512 VNNI, at a small cost in fidelity, checked by :func:`check_quantized` and
            recorded under ``onnx.quantization`` and ``export_check.int8``). The float32 export
            is still checked against PyTorch first.
        calibration: ``(m, 1, S, S)`` float32 inputs for int8 calibration; default
            :func:`calibration_inputs` (64 training images).
        model_args: ``build_model`` arguments (``arch``, ``num_classes``, ``in_chans``); when given,
            the PyTorch weights are shipped beside the ONNX file as :data:`WEIGHTS_FILE` (float32
            state dict), because ONNX Runtime folds BatchNorm into the convolutions and
            ``deephealth adapt`` needs the BatchNorm layers to re-estimate their statistics.

    Returns:
        ``out_dir`` as a :class:`~pathlib.Path`.

    Raises:
        ExportError: if the model has the wrong number of outputs, the temperature is not
            positive, or the ONNX checker or parity check fails.
        ValueError: if the model's classifier is not a single linear layer (from :class:`CamModel`).
    """
    if not temperature > 0:
        raise ExportError(f"temperature must be > 0, got {temperature!r}")
    out_dir = Path(out_dir)
    size = preprocessing.input_size
    model = model.eval()
    cam_model = CamModel(model).eval()
    with torch.no_grad():
        logits, cam, _ = cam_model(torch.zeros(1, 1, size, size))
    if logits.shape[1] != len(class_names):
        raise ExportError(f"model has {logits.shape[1]} outputs but {len(class_names)} class names")

    summary = model_summary(model, size)
    if parity_inputs is None:
        parity_inputs, parity_names = dataset_parity_inputs(preprocessing)
        if not len(parity_inputs):
            _logger.warning("no dataset found for the parity check; using random inputs only")
    parity_inputs = np.asarray(parity_inputs, dtype=np.float32)
    if parity_inputs.size == 0:
        parity_inputs = np.zeros((0, 1, size, size), np.float32)

    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".export-") as tmp:
        tmp_onnx = Path(tmp) / ONNX_FILE
        _export_onnx(cam_model, tmp_onnx, size, opset)
        check = check_export(cam_model, tmp_onnx, parity_inputs, parity_names or [])
        quant_meta = None
        if quantize:
            int8_onnx = Path(tmp) / "model.int8.onnx"
            calib = calibration if calibration is not None else calibration_inputs(preprocessing)
            quant_meta = quantize_int8(tmp_onnx, int8_onnx, np.asarray(calib, dtype=np.float32))
            # export_check describes the float32 graph vs PyTorch; export_check.int8 the shipped int8 graph
            check["int8"] = check_quantized(cam_model, int8_onnx, parity_inputs, temperature)
            int8_onnx.replace(tmp_onnx)
        n_bytes = tmp_onnx.stat().st_size
        if n_bytes > MAX_ONNX_BYTES:
            _logger.warning("%s is %.1f MB, more than the %.0f MB the package can ship",
                            ONNX_FILE, n_bytes / 1e6, MAX_ONNX_BYTES / 1e6)
        digest = sha256_file(tmp_onnx)
        shutil.move(str(tmp_onnx), out_dir / ONNX_FILE)
        (out_dir / GATE_FILE).unlink(missing_ok=True)  # a gate fitted for a previous model no longer applies

    weights_meta = None
    if model_args is not None:
        weights_path = out_dir / WEIGHTS_FILE
        torch.save({"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()},
                    "model_args": dict(model_args), "preprocessing": preprocessing.to_dict()}, weights_path)
        weights_meta = {"file": WEIGHTS_FILE, "sha256": sha256_file(weights_path),
                        "bytes": int(weights_path.stat().st_size),
                        "purpose": "PyTorch weights (float32 state dict) for deephealth adapt; inference uses the ONNX file"}

    c, h, w = int(cam.shape[1]), int(cam.shape[2]), int(cam.shape[3])
    summary_meta = {
        "parameters": summary["parameters"],
        "trainable_parameters": summary["trainable_parameters"],
        "input_shape": ["N", 1, size, size],
        "output_shapes": {LOGITS_NAME: ["N", c], CAM_NAME: ["N", c, h, w],
                          FEATURES_NAME: ["N", int(summary["feature_shape"][0])]},
        "feature_shape": ["N", *summary["feature_shape"]],
        "layers": summary["layers"],
        "num_leaf_layers": len(summary["leaf_layers"]),
        "summary_file": SUMMARY_FILE,
    }
    title = f"{name} {version}: {type(model).__name__}"
    (out_dir / SUMMARY_FILE).write_text(format_summary(summary, title, size, c))

    metadata: dict[str, Any] = {
        "name": name,
        "version": version,
        "created": _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat(),
        "deephealth_version": __version__,
        "class_names": list(class_names),
        "preprocessing": preprocessing.to_dict(),
        "temperature": float(temperature),
        "onnx": {
            "file": ONNX_FILE,
            "sha256": digest,
            "bytes": int(n_bytes),
            "input": INPUT_NAME,
            "logits": LOGITS_NAME,
            "cam": CAM_NAME,
            "features": FEATURES_NAME,
            "opset": int(opset),
            "dynamic_axes": {INPUT_NAME: {"0": "batch"}, LOGITS_NAME: {"0": "batch"}, CAM_NAME: {"0": "batch"},
                             FEATURES_NAME: {"0": "batch"}},
            "exporter": f"torch.onnx.export (TorchScript, dynamo=False), torch {torch.__version__}",
            "precision": "int8" if quantize else "float32",
        },
        "intended_use": INTENDED_USE,
    }
    for key, value in (metadata_extra or {}).items():
        if key in metadata:
            _logger.warning("metadata_extra key %r ignored: set by the exporter", key)
            continue
        metadata[key] = value
    if quant_meta is not None:
        metadata["onnx"]["quantization"] = quant_meta
    if weights_meta is not None:
        metadata["weights"] = weights_meta
    metadata["summary"] = summary_meta
    metadata["export_check"] = check
    write_metadata(out_dir, metadata)
    _logger.info("exported %s %s to %s (sha256 %s..., %.1f MB)", name, version, out_dir, digest[:12], n_bytes / 1e6)
    return out_dir


# ------------------------------------------------------------------------------------ from a checkpoint

_REQUIRED_KEYS = ("model_state", "model_args", "preprocessing", "temperature")


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load a training checkpoint (``best.pt``) written by the training loop.

    Tries ``torch.load(weights_only=True)`` first (plain dicts, lists, numbers and tensors) and
    falls back to a full unpickle, which is acceptable for the project's own checkpoints.

    Raises:
        ExportError: if the file is missing, unreadable, or lacks a required key
            (``model_state``, ``model_args``, ``preprocessing``, ``temperature``).
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"checkpoint not found: {path}")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle.UnpicklingError for non-plain objects
        _logger.info("%s: weights_only load failed (%s); loading with full unpickling", path, exc)
        try:
            ckpt = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:
            raise ExportError(f"{path}: cannot load checkpoint ({type(exc2).__name__}: {exc2})") from exc2
    if not isinstance(ckpt, dict):
        raise ExportError(f"{path}: not a training checkpoint (a {type(ckpt).__name__}, expected a dict)")
    missing = [k for k in _REQUIRED_KEYS if k not in ckpt]
    if missing:
        raise ExportError(f"{path}: not a training checkpoint, missing key(s) {', '.join(missing)}")
    return ckpt


def _jsonable(value: Any) -> Any:
    """Convert tensors / numpy values / paths in nested containers to plain JSON values."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return str(value)


def _portable_paths(data: Any) -> Any:
    """A copy of a ``data`` / ``split`` record with its ``dataset_dir`` and ``data_dir`` made portable."""
    if not isinstance(data, dict):
        return data
    return {k: portable_path(v) if k in ("dataset_dir", "data_dir") and isinstance(v, str) else v
            for k, v in data.items()}


def export_run(
    source: str | Path,
    out_dir: str | Path,
    name: str | None = None,
    version: str | None = None,
    checkpoint: str | Path | None = None,
    quantize: bool = False,
    gate: bool = True,
) -> Path:
    """Export a training run (or one checkpoint file) to a checked model folder, with its input gate.

    Args:
        source: a run folder ``runs/<name>/`` (its ``best.pt`` is used) or a checkpoint file.
        out_dir: model folder to write, e.g. ``src/deephealth/models/deephealth-cxr3``.
        name: model name (default :data:`deephealth.paths.DEFAULT_MODEL_NAME`).
        version: model version (default: the package version).
        checkpoint: checkpoint file to use instead of ``<source>/best.pt``.
        quantize: ship an int8 model (see :func:`export_model`).
        gate: fit the input gate on the exported graph (:func:`fit_run_gate`); skipped with a
            warning when the dataset is not found.

    Returns:
        ``out_dir``.

    Raises:
        ExportError: if the run or checkpoint is missing or malformed, the weights do not fit the
            architecture, or the export fails its checks.
    """
    import json

    source = Path(source)
    if checkpoint is not None:
        ckpt_path = Path(checkpoint)
    elif source.is_dir():
        ckpt_path = source / "best.pt"
    else:
        ckpt_path = source
    if not source.exists():
        raise ExportError(f"run folder or checkpoint not found: {source}")
    run_dir = source if source.is_dir() else ckpt_path.parent
    ckpt = load_checkpoint(ckpt_path)

    model_args = dict(ckpt["model_args"])
    arch = model_args.get("arch")
    if not arch:
        raise ExportError(f"{ckpt_path}: model_args has no 'arch'")
    allowed = {"arch", "num_classes", "in_chans", "drop_rate"}
    model = build_model(**{k: v for k, v in model_args.items() if k in allowed})
    try:
        model.load_state_dict(ckpt["model_state"], strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ExportError(f"{ckpt_path}: weights do not fit {arch}: {first}") from exc
    try:
        pre = PreprocessConfig.from_dict(ckpt["preprocessing"])
    except (TypeError, ValueError) as exc:
        raise ExportError(f"{ckpt_path}: bad preprocessing config ({exc})") from exc

    training: dict[str, Any] = {
        "run": run_dir.name,
        "checkpoint": ckpt_path.name,
        "epoch": ckpt.get("epoch"),
        "config": _portable_paths(ckpt.get("config")),
        "history": ckpt.get("history"),
        "summary": ckpt.get("summary"),
    }
    calib_file = run_dir / "calibration.json"
    extra: dict[str, Any] = {
        "architecture": {**model_args, "wrapper": "CamModel (logits + class activation maps)"},
        "training": training,
        "data": _portable_paths(ckpt.get("data")),  # no absolute path of this machine in the card
        "validation_metrics": ckpt.get("val_metrics"),
    }
    if ckpt.get("operating_point"):
        extra["operating_point"] = ckpt["operating_point"]
    config = ckpt.get("config") or {}
    if config.get("init") == "imagenet":
        from deephealth.training.imagenet import weights_source

        extra["initialisation"] = {"method": "ImageNet-1k weights", **weights_source(config["arch"]).to_dict()}
    else:
        extra["initialisation"] = {"method": "random (trained from scratch)" if not config.get("pretrained")
                                   else "ImageNet weights through timm"}
    if calib_file.is_file():
        try:
            extra["calibration"] = json.loads(calib_file.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            _logger.warning("%s: not included (%s)", calib_file, exc)
    out = export_model(
        model,
        pre,
        out_dir,
        name=name or DEFAULT_MODEL_NAME,
        version=version or __version__,
        temperature=float(ckpt["temperature"]),
        metadata_extra=_jsonable(extra),
        quantize=quantize,
        model_args={k: v for k, v in model_args.items() if k in ("arch", "num_classes", "in_chans")},
    )
    if gate:
        fit_run_gate(out, ckpt.get("config") or {})
    return out


def fit_run_gate(model_dir: str | Path, config: dict[str, Any], data_dir: str | Path | None = None) -> dict[str, Any] | None:
    """Fit the input gate of an exported model on the patient-grouped split its training run used.

    Re-creates the run's split exactly as training loaded it (:func:`deephealth.manifest.grouped_split`
    of the official ``train`` folder with the checkpoint config's ``val_fraction`` and ``split_seed``,
    then the same ``max_train_images`` subset, which is all of it for a release run), decodes the
    films at the model's input size and calls :func:`deephealth.training.gate_fit.fit_gate`
    (training films: statistics and classifier; validation films: thresholds). Smaller runs get
    proportionally fewer negatives.

    Args:
        model_dir: the exported model folder.
        config: the checkpoint's training config (``data_dir``, ``val_fraction``, ``split_seed``, ``seed``).
        data_dir: dataset folder overriding the config's (default: the config's, else
            :func:`deephealth.paths.dataset_dir`).

    Returns:
        The ``gate`` metadata entry, or ``None`` if no dataset was found (the model then ships
        without feature-space gate; a warning is logged).

    Raises:
        ExportError: if fitting fails.
    """
    from deephealth.artifact import ModelArtifact
    from deephealth.manifest import grouped_split, scan
    from deephealth.training.data import decode_records
    from deephealth.training.gate_fit import fit_gate

    root = Path(data_dir or config.get("data_dir") or dataset_dir())
    if not (root / "train").is_dir():
        _logger.warning("no dataset at %s: %s ships without the feature-space input gate", root, model_dir)
        return None
    val_fraction, split_seed = float(config.get("val_fraction", 0.1)), int(config.get("split_seed", 0))
    train_recs, val_recs = grouped_split(scan(root).split("train"), val_fraction, split_seed)
    n_max, seed = int(config.get("max_train_images", 0) or 0), int(config.get("seed", 0))
    if n_max:  # the same subsets the training loop used (smoke runs)
        from deephealth.training.loop import _subset

        train_recs, val_recs = _subset(train_recs, n_max, seed), _subset(val_recs, n_max // 4, seed)
    pre = ModelArtifact.load(model_dir, verify=False).preprocessing
    t0 = time.time()
    train_films, val_films = decode_records(train_recs, pre), decode_records(val_recs, pre)
    _logger.info("gate: decoded %d training + %d validation films in %.0f s", len(train_films), len(val_films),
                 time.time() - t0)
    split = {"dataset_dir": portable_path(root), "val_fraction": val_fraction, "split_seed": split_seed,
             "method": "patient-grouped, label-stratified (deephealth.manifest.grouped_split), as in training"}
    try:
        n = len(train_films)
        return fit_gate(model_dir, train_films, np.array([r.label_index for r in train_recs]), val_films,
                        n_lr_films=min(1500, n), n_transformed=min(400, max(20, n // 4)),
                        n_other=min(1200, max(60, n // 2)), seed=seed, split={**split, "max_train_images": n_max})
    except (ValueError, RuntimeError) as exc:
        raise ExportError(f"fitting the input gate failed: {exc}") from exc
