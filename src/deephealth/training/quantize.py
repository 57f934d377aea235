"""Int8 quantisation of a checked float32 export (ONNX Runtime static quantization) and its check.

About 3x less CPU time per image on CPUs with AVX-512 VNNI; the int8 graph is compared with the
float32 network (calibrated probabilities within :data:`QUANT_PROB_ATOL`). One job of the export
(:mod:`deephealth.training.export`, ``deephealth export --quantize``).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from deephealth.paths import dataset_dir
from deephealth.preprocessing import PreprocessConfig, preprocess
from deephealth.training.model import CamModel
from deephealth.training.onnx_graph import CAM_NAME, INPUT_NAME, LOGITS_NAME, ExportError

_logger = logging.getLogger(__name__)


QUANT_PROB_ATOL = 0.1
"""Largest accepted difference of calibrated probabilities between an int8 ONNX model and the
float32 PyTorch network on the check images (a gross-error guard; the shipped artifact must still
be scored with ``deephealth evaluate``)."""


QUANT_CALIBRATION_IMAGES = 64
"""Training images used to calibrate int8 activation ranges."""


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


def quantize_int8(fp32_path: Path, out_path: Path, calibration: np.ndarray,
                  reduce_range: bool = True) -> dict[str, Any]:
    """Static int8 quantization with ONNX Runtime (QDQ format, per-channel int8 weights, uint8 activations).

    Activation ranges are calibrated with ONNX Runtime's MinMax method on ``calibration``
    (``(m, 1, S, S)`` float32 preprocessed training images); see the ONNX Runtime documentation,
    "Quantize ONNX models" (onnxruntime.ai/docs/performance/model-optimizations/quantization.html).
    ``reduce_range`` (default ``True``): 7-bit weights, which avoids the u8 x s8 16-bit saturation
    of ONNX Runtime's kernels on x86 CPUs without VNNI (AVX2), at the cost of one bit of weight
    precision. It is the default so that an int8 model gives the same answers on AVX2 and on
    AVX-512 VNNI machines: with 8-bit weights, 0.3.0's int8 graph changed 51 of 502 validation
    labels against float32 on an AVX2 CPU, with 7-bit weights 22 (docs/model-development.md §12).

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
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8, reduce_range=reduce_range,
            )
    except Exception as exc:  # onnxruntime.quantization raises assorted types
        raise ExportError(f"int8 quantization failed: {type(exc).__name__}: {exc}") from exc
    finally:
        prep.unlink(missing_ok=True)
    return {
        "type": "int8 static, QDQ, per-channel int8 weights, uint8 activations",
        "tool": "onnxruntime.quantization.quantize_static",
        "calibration": f"MinMax over {len(calibration)} training images",
        **({"reduce_range": True} if reduce_range else {}),
    }


def check_quantized(cam_model: CamModel, onnx_path: Path, inputs: np.ndarray, temperature: float, *,
                    reference: str = "PyTorch float32 network", atol: float = QUANT_PROB_ATOL,
                    hint: str = "; export without quantization") -> dict[str, Any]:
    """Compare an int8 ONNX model with a PyTorch network on real inputs.

    Used for post-training int8 (against the float32 network) and, by
    :func:`deephealth.training.qat.check_qdq`, for a QAT export (against the fake-quantised network).

    Args:
        cam_model: the reference network (:class:`~deephealth.training.model.CamModel`, eval mode).
        onnx_path: the int8 ONNX graph.
        inputs: ``(n, 1, S, S)`` float32 real inputs (n >= 1).
        temperature: calibration temperature (> 0) for the probability comparison.
        reference: what ``cam_model`` is, for the report and the error message.
        atol: largest accepted difference of calibrated probabilities.
        hint: appended to the error message.

    Returns:
        Report: ``reference``, ``images``, ``prob_atol``, largest calibrated-probability and logit
        differences, top-1 agreement, ``logits`` vs ``mean_hw(cam)`` difference, ``passed``.

    Raises:
        ExportError: if the checker fails, there are no inputs, or probabilities differ by more
            than ``atol``.
    """
    import onnx
    import onnxruntime as ort

    from deephealth.artifact import session_options
    from deephealth.calibration import softmax

    try:
        onnx.checker.check_model(str(onnx_path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{onnx_path}: ONNX checker failed on the int8 model: {exc}") from exc
    if len(inputs) == 0:
        raise ExportError("no real inputs to check the int8 model against")
    inputs = np.ascontiguousarray(inputs, np.float32)
    with torch.no_grad():
        t_logits = cam_model(torch.from_numpy(inputs))[0].numpy()
    sess = ort.InferenceSession(str(onnx_path), session_options(graph_optimization=False),
                                providers=["CPUExecutionProvider"])
    o_logits, o_cam = sess.run([LOGITS_NAME, CAM_NAME], {INPUT_NAME: inputs})
    report = {
        "reference": reference,
        "images": int(len(inputs)),
        "prob_atol": atol,
        "prob_max_abs_diff": float(np.abs(softmax(o_logits, temperature) - softmax(t_logits, temperature)).max()),
        "logits_max_abs_diff": float(np.abs(o_logits - t_logits).max()),
        "top1_agreement": float(np.mean(o_logits.argmax(1) == t_logits.argmax(1))),
        "cam_mean_vs_logits_max_abs_diff": float(np.abs(o_cam.mean(axis=(2, 3)) - o_logits).max()),
    }
    report["passed"] = report["prob_max_abs_diff"] <= atol
    if not report["passed"]:
        raise ExportError(f"{onnx_path}: the int8 model's probabilities differ from the {reference} by up to "
                          f"{report['prob_max_abs_diff']:.3f} (> {atol}){hint}")
    return report
